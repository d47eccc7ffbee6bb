//! Reading certificates: PEM chains, SANs, validity, fingerprints.

use crate::San;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, thiserror::Error)]
pub enum X509Error {
    #[error("parse PEM {what}: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("parse certificate: {0}")]
    Der(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("{what} contains no certificate")]
    Empty { what: &'static str },
}

/// What Phoenix needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: String,
    pub sans: Vec<San>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial_hex: String,
    pub fingerprint: String,
    pub is_ca: bool,
}

impl CertInfo {
    pub fn uris(&self) -> impl Iterator<Item = &str> {
        self.sans.iter().filter_map(|s| match s {
            San::Uri(u) => Some(u.as_str()),
            _ => None,
        })
    }

    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

/// Every certificate in a PEM bundle, in order.
pub fn parse_chain(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, X509Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| X509Error::Pem { what, source })?;
    if certs.is_empty() {
        return Err(X509Error::Empty { what });
    }
    Ok(certs)
}

pub fn to_pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Hex SHA-256 of the DER, the same form `step certificate fingerprint` prints.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn to_system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH
    }
}

pub fn inspect(der: &[u8]) -> Result<CertInfo, X509Error> {
    let (_, cert) = X509Certificate::from_der(der).map_err(X509Error::Der)?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(San::Dns(d.to_string())),
                GeneralName::URI(u) => sans.push(San::Uri(u.to_string())),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        sans.push(San::Ip(ip));
                    }
                }
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    Ok(CertInfo {
        common_name,
        sans,
        not_before: to_system_time(validity.not_before),
        not_after: to_system_time(validity.not_after),
        serial_hex: cert.raw_serial_as_string().replace(':', ""),
        fingerprint: fingerprint(der),
        is_ca: cert.is_ca(),
    })
}

/// Checks an ECDSA P-256 SHA-256 (ASN.1) signature against the certificate's public key.
pub fn verify_signature(cert_der: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
        return false;
    };
    let point = &cert.public_key().subject_public_key.data;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        point.as_ref(),
    )
    .verify(msg, sig)
    .is_ok()
}
