//! What signing can fail with. Each variant is one cause a caller can act on (the
//! coordinator turns each into its own gRPC status), carries the error it came from as its
//! source, and names the object: the subject, the file, the CA's URL, the serial.

use crate::stepca::{JoseError, ProvisionerKeyError};
use phoenix_pki::keys::KeyError;
use phoenix_pki::tls::TlsSetupError;
use phoenix_pki::transport::error_chain;
use phoenix_pki::x509::X509Error;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    // The request: the requester can fix these.
    #[error("parse certificate signing request for {subject}: {source}")]
    Csr {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    /// A name the RA granted cannot go into a certificate.
    #[error(transparent)]
    Grant(KeyError),
    /// The certificate handed in to renew, rekey or revoke with.
    #[error("{action}: certificate chain: {source}")]
    Chain {
        action: &'static str,
        #[source]
        source: X509Error,
    },
    /// The private key handed in with it.
    #[error("{action}: private key of {subject}: {source}")]
    Key {
        action: &'static str,
        subject: String,
        #[source]
        source: KeyFormatError,
    },
    #[error("{action}: serial {serial:?} is not a hexadecimal certificate serial")]
    Serial {
        action: &'static str,
        serial: String,
    },
    /// The held certificate can no longer authenticate over mTLS.
    #[error(
        "{action}: certificate {serial} of {subject} expired at {not_after}; it cannot authenticate over mTLS (renew after expiry needs an x5c token)"
    )]
    Expired {
        action: &'static str,
        subject: String,
        serial: String,
        not_after: String,
    },

    // The CA's answer.
    #[error("reach CA at {url} to {action}: {}", error_chain(source))]
    Unreachable {
        action: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// HTTP 401/403: the CA does not accept the token or certificate for this action.
    #[error("CA at {url} denied {action} (HTTP {status}): {message}")]
    Denied {
        url: String,
        action: &'static str,
        status: u16,
        message: String,
    },
    /// Any other HTTP 4xx: the request does not fit the CA's state or policy (already
    /// revoked, lifetime outside the provisioner's bounds, …).
    #[error("CA at {url} refused {action} (HTTP {status}): {message}")]
    Refused {
        url: String,
        action: &'static str,
        status: u16,
        message: String,
    },
    /// HTTP 5xx (or anything not 4xx): the CA failed; a later attempt may succeed.
    #[error("CA at {url} failed {action} (HTTP {status}): {message}")]
    Failed {
        url: String,
        action: &'static str,
        status: u16,
        message: String,
    },
    /// `ca`: the step-ca URL, or "embedded".
    #[error("CA {ca} answered {action} with {source}")]
    BadAnswer {
        ca: String,
        action: &'static str,
        #[source]
        source: Box<AnswerError>,
    },

    // This side: configuration and local material.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The embedded CA's own key or certificate.
    #[error("{action} {path}: {source}")]
    Material {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("sign certificate for {subject}: {source}")]
    Sign {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("mint {audience} token for {subject}: {source}")]
    Token {
        subject: String,
        audience: String,
        #[source]
        source: JoseError,
    },
    #[error(transparent)]
    Provisioner(#[from] ProvisionerKeyError),
    #[error("step-ca URL {url}: {source}")]
    Url {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("step-ca URL {url}: {reason}")]
    UrlShape { url: String, reason: &'static str },
    #[error("step-ca root fingerprint {0:?} is not a hex SHA-256")]
    Fingerprint(String),
    #[error("TLS client for {purpose}: {source}")]
    Tls {
        purpose: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("HTTP client for {purpose}: {}", error_chain(source))]
    Client {
        purpose: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

/// Why a private key cannot sign for its certificate.
#[derive(Debug, thiserror::Error)]
pub enum KeyFormatError {
    #[error("parse PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("not PKCS#8 (step tokens need a PKCS#8 P-256 key)")]
    NotPkcs8,
    #[error("not a P-256 key: {0}")]
    NotP256(ring::error::KeyRejected),
}

/// What was wrong with an answer the CA gave.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("JSON the client does not understand (HTTP {status}): {source}")]
    Json {
        status: u16,
        #[source]
        source: serde_json::Error,
    },
    #[error("an unreadable certificate: {0}")]
    Certificate(#[from] X509Error),
    #[error("a chain that does not verify against the CA's roots: {0}")]
    Untrusted(#[source] TlsSetupError),
    #[error("a root with fingerprint {got}, expected {want}")]
    WrongRoot { got: String, want: String },
    #[error("{0} root certificates where one was expected")]
    RootCount(usize),
    #[error("a root the TLS client cannot use: {0}")]
    UnusableRoot(#[source] rustls::Error),
    #[error("CN={got_cn} {got:?} where CN={want_cn} {want:?} was requested")]
    OtherNames {
        got_cn: String,
        got: Vec<String>,
        want_cn: String,
        want: Vec<String>,
    },
}

impl CaError {
    /// The CA's HTTP error answer as the variant its status means.
    pub fn from_status(url: String, action: &'static str, status: u16, message: String) -> Self {
        match status {
            401 | 403 => CaError::Denied {
                url,
                action,
                status,
                message,
            },
            400..=499 => CaError::Refused {
                url,
                action,
                status,
                message,
            },
            _ => CaError::Failed {
                url,
                action,
                status,
                message,
            },
        }
    }
}
