//! The reconcile engine: validate every resource, then walk them in dependency order,
//! check → apply, and report each honestly.

pub mod handler;

pub use handler::{Check, Converge, PassContext, ResourceError};
