//! What both sides of Phoenix need to hold and use an identity: P-256 keys and CSRs,
//! reading certificates, the rustls configurations (with in-memory rotation of identity and
//! trust) and the gRPC transport under them, when to renew, and the private state
//! directories keys live in.
//!
//! Limits: no certificate authority lives here. Signing (the embedded CA, the Step-CA
//! client) is `phoenix-ca` (pki/ca), which only the coordinator links; this crate is in
//! every guest binary, so it stays free of HTTP clients and CA protocols. One crypto
//! provider (ring) for the whole workspace: see [`tls::provider`].

pub mod atomic;
pub mod keys;
pub mod rotation;
pub mod san;
pub mod statedir;
pub mod tls;
pub mod transport;
pub mod x509;

pub use san::San;
