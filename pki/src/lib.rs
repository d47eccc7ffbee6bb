//! Keys, CSRs, certificate authorities (embedded rcgen CA, Step-CA) and the rustls
//! configurations both sides use, including in-memory certificate rotation.
//!
//! One crypto provider (ring) for the whole workspace: see [`provider`].

pub mod authority;

pub use authority::{CaError, CertAuthority, IssueRequest, Issued, San};
