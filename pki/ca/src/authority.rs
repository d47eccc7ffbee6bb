//! The CA seam: the coordinator, acting as registration authority, decides *what* an
//! identity may be (SANs, lifetime) and a `CertAuthority` signs it. The embedded rcgen CA
//! and the Step-CA client both implement it, chosen in the coordinator's config.

use crate::CaError;
use phoenix_pki::San;
use std::time::{Duration, SystemTime};

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
