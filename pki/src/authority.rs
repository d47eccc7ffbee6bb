//! The CA seam: the coordinator, acting as registration authority, decides *what* an
//! identity may be (SANs, lifetime) and a `CertAuthority` signs it. The embedded rcgen CA
//! and the Step-CA client both implement it, chosen in the coordinator's config.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// A subject alternative name the RA grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
    Uri(String),
}

impl San {
    /// `10.0.0.1` → Ip, anything else → Dns.
    pub fn host(s: &str) -> San {
        match s.parse::<IpAddr>() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(s.to_string()),
        }
    }
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(i) => write!(f, "IP:{i}"),
            San::Uri(u) => write!(f, "URI:{u}"),
        }
    }
}

/// What the RA asks the CA to sign. The CSR proves possession of the key; its own
/// subject and SANs are ignored in favour of these.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub csr_pem: String,
    pub common_name: String,
    pub sans: Vec<San>,
    pub ttl: Duration,
}

/// A signed certificate as handed to the requester.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf first, then intermediates (not the root).
    pub chain_pem: String,
    /// The trust bundle (roots) the chain verifies against.
    pub roots_pem: String,
    pub not_after: SystemTime,
    /// Hex serial of the leaf.
    pub serial: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("parse certificate signing request: {0}")]
    Csr(String),
    #[error("sign certificate for {subject}: {reason}")]
    Sign { subject: String, reason: String },
    #[error("reach CA at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("CA at {url} refused {action} (HTTP {status}): {message}")]
    Refused {
        url: String,
        action: &'static str,
        status: u16,
        message: String,
    },
    #[error("load CA material from {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("CA answer for {action}: {reason}")]
    BadAnswer {
        action: &'static str,
        reason: String,
    },
}

#[async_trait::async_trait]
pub trait CertAuthority: Send + Sync {
    /// Short name for logs and `phoenix certs` ("embedded", "step-ca").
    fn name(&self) -> &'static str;
    /// Sign `req`. Must not return a certificate with SANs other than `req.sans`.
    async fn issue(&self, req: IssueRequest) -> Result<Issued, CaError>;
    /// The current trust bundle, PEM. May contain more than one root while a new root
    /// is being distributed ahead of its use.
    async fn roots_pem(&self) -> Result<String, CaError>;
    /// Records at the CA that the certificate with `serial_hex` is revoked. `Ok(false)`:
    /// this CA keeps no revocation list (the embedded CA); the coordinator's deny-list
    /// is then the only revocation.
    async fn revoke_serial(&self, _serial_hex: &str, _reason: &str) -> Result<bool, CaError> {
        Ok(false)
    }
}
