//! HTTP to the CA: the rustls configurations (pinned root, optional client identity), the
//! one request function that turns every answer into a value or a [`CaError`], and the
//! check of every certificate the CA hands back.

use super::{Signed, StepCa};
use crate::{AnswerError, CaError, KeyFormatError};
use phoenix_pki::tls::{self, TrustStore};
use phoenix_pki::x509::{self, CertInfo};
use reqwest::{Method, Url};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct ErrorAnswer {
    message: String,
}

/// The answer of sign, renew and rekey.
#[derive(Deserialize)]
pub(super) struct SignAnswer {
    crt: String,
    #[serde(default)]
    ca: String,
    #[serde(default, rename = "certChain")]
    cert_chain: Vec<String>,
}

/// A certificate chain handed in for `action`, with its leaf.
pub(super) fn held_chain(
    action: &'static str,
    chain_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, CertInfo), CaError> {
    let chain_err = |source| CaError::Chain { action, source };
    let chain = x509::parse_chain(chain_pem, "certificate chain").map_err(chain_err)?;
    let leaf = x509::inspect(&chain[0]).map_err(chain_err)?;
    Ok((chain, leaf))
}

/// The private key handed in with the certificate of `leaf`.
pub(super) fn held_key(
    action: &'static str,
    leaf: &CertInfo,
    key_pem: &str,
) -> Result<PrivateKeyDer<'static>, CaError> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CaError::Key {
        action,
        subject: leaf.common_name.clone(),
        source: KeyFormatError::Pem(e),
    })
}

pub(super) fn http_client(
    config: ClientConfig,
    purpose: &'static str,
) -> Result<reqwest::Client, CaError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|source| CaError::Client { purpose, source })
}

/// A TLS client trusting `roots`, presenting `identity` if given; h2 or HTTP/1.1.
pub(super) fn tls_config(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, CaError> {
    let purpose = if identity.is_some() {
        "step-ca with a client certificate"
    } else {
        "step-ca"
    };
    let tls_err = |source| CaError::Tls { purpose, source };
    let builder = ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(tls_err)?,
    };
    config.alpn_protocols = alpn();
    Ok(config)
}

pub(super) fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// One call to the CA: `method base/path` with an optional JSON body and bearer token.
pub(super) async fn call<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    base: &Url,
    action: &'static str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
    bearer: Option<&str>,
) -> Result<T, CaError> {
    let url = base.join(path).map_err(|source| CaError::Url {
        url: format!("{base}{path}"),
        source,
    })?;
    let mut req = client.request(method, url.clone());
    if let Some(body) = body {
        req = req.json(&body);
    }
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let unreachable = |source| CaError::Unreachable {
        action,
        url: url.to_string(),
        source,
    };
    let resp = req.send().await.map_err(unreachable)?;
    let status = resp.status();
    let text = resp.text().await.map_err(unreachable)?;
    if !status.is_success() {
        let message = serde_json::from_str::<ErrorAnswer>(&text)
            .map(|e| e.message)
            .unwrap_or_else(|_| text.trim().chars().take(300).collect());
        return Err(CaError::from_status(
            url.to_string(),
            action,
            status.as_u16(),
            message,
        ));
    }
    serde_json::from_str(&text).map_err(|source| CaError::BadAnswer {
        ca: url.to_string(),
        action,
        source: Box::new(AnswerError::Json {
            status: status.as_u16(),
            source,
        }),
    })
}

impl StepCa {
    /// A client presenting `chain_pem` for `action`. step-ca rejects an expired client
    /// certificate during the handshake, which under TLS 1.3 reaches the client only as a
    /// closed connection; refusing here names the real cause.
    pub(super) fn mtls_client(
        &self,
        action: &'static str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<reqwest::Client, CaError> {
        let (chain, leaf) = held_chain(action, chain_pem)?;
        let key = held_key(action, &leaf, key_pem)?;
        if leaf.not_after <= SystemTime::now() {
            return Err(CaError::Expired {
                action,
                subject: leaf.common_name,
                serial: leaf.serial_hex,
                not_after: time::OffsetDateTime::from(leaf.not_after).to_string(),
            });
        }
        http_client(
            tls_config(self.pinned.clone(), Some((chain, key)))?,
            "step-ca with a client certificate",
        )
    }

    /// Turns a sign/renew/rekey answer into a chain, verified against the CA's roots.
    pub(super) fn signed(
        &self,
        action: &'static str,
        answer: SignAnswer,
    ) -> Result<Signed, CaError> {
        let bad = |source: AnswerError| CaError::BadAnswer {
            ca: self.url().to_string(),
            action,
            source: Box::new(source),
        };
        let pems = if answer.cert_chain.is_empty() {
            vec![answer.crt, answer.ca]
        } else {
            answer.cert_chain
        };
        let mut chain_pem = String::new();
        for pem in pems.iter().filter(|p| !p.trim().is_empty()) {
            for der in x509::parse_chain(pem, "certificate").map_err(|e| bad(e.into()))? {
                chain_pem.push_str(&x509::to_pem(&der));
            }
        }
        let ders = x509::parse_chain(&chain_pem, "certificate chain").map_err(|e| bad(e.into()))?;
        let leaf = x509::inspect(&ders[0]).map_err(|e| bad(e.into()))?;
        TrustStore::from_pem(&self.cached_roots())
            .and_then(|trust| trust.verify_chain(&chain_pem))
            .map_err(|e| bad(AnswerError::Untrusted(e)))?;
        Ok(Signed { chain_pem, leaf })
    }
}
