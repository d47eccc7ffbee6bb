//! Phoenix's wire protocol (`phoenix.v1`, tonic/prost codegen) and the validated domain
//! types both sides use after the edge.
//!
//! Generated messages carry untrusted data; every value crossing into the rest of the code
//! goes through a `TryFrom` here (`GuestId`, `DesiredState`, the resource model), so the
//! agent and coordinator never re-validate and never `unwrap` network input.
//! No I/O happens in this crate.

pub mod codec;
pub mod convert;
pub mod graph;
pub mod model;
pub mod redact;
pub mod token;

#[allow(clippy::all, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("phoenix.v1");
}

/// Hard limit on any single gRPC message, both directions. A desired state larger than
/// this is a configuration mistake, not something to stream.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
