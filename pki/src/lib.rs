//! Keys, CSRs, certificate authorities (embedded rcgen CA, Step-CA) and the rustls
//! configurations both sides use, including in-memory certificate rotation.
//!
//! One crypto provider (ring) for the whole workspace: see [`tls::provider`].

pub mod authority;
pub mod embedded;
pub mod fsutil;
pub mod keys;
pub mod rotation;
pub mod statedir;
pub mod stepca;
pub mod tls;
pub mod transport;
pub mod x509;

pub use authority::{CaError, CertAuthority, IssueRequest, Issued, San};
