//! Guest service certificates (the `cert` resource kind).

pub mod signer;

pub use signer::{CertSigner, SessionSigner, SignError, SignedCert};
