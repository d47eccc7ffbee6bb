//! Trust in the CA: the root fetched once by fingerprint, then the CA's current roots and
//! its health over TLS verified against that root.

use super::StepCa;
use super::client::{alpn, call, http_client};
use crate::{AnswerError, CaError};
use phoenix_pki::tls;
use phoenix_pki::x509;
use reqwest::{Method, Url};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
struct RootAnswer {
    ca: String,
}

#[derive(Deserialize)]
struct RootsAnswer {
    crts: Vec<String>,
}

/// `GET /root/<fp>` without verifying the server: the answer authenticates itself by its
/// hash.
pub(super) async fn fetch_root(base: &Url, fingerprint: &str) -> Result<String, CaError> {
    let mut config = ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| CaError::Tls {
            purpose: "step-ca bootstrap",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(BootstrapVerifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn();
    let client = http_client(config, "step-ca bootstrap")?;
    let answer: RootAnswer = call(
        &client,
        base,
        "bootstrap",
        Method::GET,
        &format!("root/{fingerprint}"),
        None,
        None,
    )
    .await?;
    let bad = |source| CaError::BadAnswer {
        ca: base.to_string(),
        action: "bootstrap",
        source: Box::new(source),
    };
    let ders = x509::parse_chain(&answer.ca, "root").map_err(|e| bad(e.into()))?;
    match ders.as_slice() {
        [der] if x509::fingerprint(der) == fingerprint => Ok(x509::to_pem(der)),
        [der] => Err(bad(AnswerError::WrongRoot {
            got: x509::fingerprint(der),
            want: fingerprint.to_string(),
        })),
        _ => Err(bad(AnswerError::RootCount(ders.len()))),
    }
}

impl StepCa {
    /// `GET /roots`: the CA's current trust bundle (remembered for `Issued::roots_pem`).
    pub async fn roots(&self) -> Result<String, CaError> {
        let answer: RootsAnswer = call(
            &self.http,
            &self.base,
            "list roots",
            Method::GET,
            "roots",
            None,
            None,
        )
        .await?;
        let bad = |source| CaError::BadAnswer {
            ca: self.url().to_string(),
            action: "list roots",
            source: Box::new(source),
        };
        if answer.crts.is_empty() {
            return Err(bad(AnswerError::RootCount(0)));
        }
        let mut bundle = String::new();
        for pem in &answer.crts {
            for der in x509::parse_chain(pem, "root").map_err(|e| bad(e.into()))? {
                bundle.push_str(&x509::to_pem(&der));
            }
        }
        *self.roots_pem.write().unwrap_or_else(|p| p.into_inner()) = bundle.clone();
        Ok(bundle)
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<(), CaError> {
        let _: serde_json::Value = call(
            &self.http,
            &self.base,
            "health check",
            Method::GET,
            "health",
            None,
            None,
        )
        .await?;
        Ok(())
    }
}

/// Accepts the CA's certificate without a trust anchor, for the one bootstrap request
/// whose answer is checked by its hash. Handshake signatures are still verified.
#[derive(Debug)]
struct BootstrapVerifier;

impl ServerCertVerifier for BootstrapVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &tls::provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &tls::provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
