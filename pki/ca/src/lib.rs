//! Certificate authorities for the coordinator, which acts as registration authority: the
//! [`CertAuthority`] seam, the embedded rcgen CA (a root in the coordinator's state
//! directory) and the client for a real Smallstep step-ca.
//!
//! Limits: only the coordinator (and tests) link this crate; agents never sign anything,
//! they send CSRs over gRPC, so the HTTP client (reqwest) and step's JOSE stay out of guest
//! binaries. Keys, CSRs and certificate inspection are `phoenix-pki`'s. The CA decides
//! nothing about *what* an identity may be: the caller's [`IssueRequest`] does.

pub mod authority;
pub mod embedded;
pub mod error;
pub mod sealed;
pub mod stepca;

pub use authority::{CertAuthority, IssueRequest, Issued};
pub use error::{AnswerError, CaError, KeyFormatError};
pub use phoenix_pki::San;
