//! The Compose subset Phoenix accepts: its typed model, the parser from YAML, and the
//! checks both sides run. Pure: reads no files and talks to no engine, so the coordinator
//! compiles a stack with exactly the code the agent validates it with.
//!
//! - [`parse`] reads a Compose file (YAML), interpolates it and returns a checked
//!   [`ComposeProject`]. Every key outside the subset is an error that names it (serde
//!   `deny_unknown_fields`), never silently dropped. `${VAR}`, `${VAR:-default}`,
//!   `${VAR-default}`, `$VAR` and `$$` are interpolated from the stack environment's
//!   variables only (never from a process environment), so the same input renders the same
//!   containers on every guest; an unset variable without a default is an error.
//! - [`ComposeProject`] is what a `StackSpec` carries. Deserializing one runs the same
//!   checks as parsing (`validate`), so the agent accepts nothing the parser would refuse.
//! - [`grants`] finds what a project grants over the guest (host-root binds, capabilities,
//!   devices).
//!
//! Limits: no `build`, no anonymous volumes, no port ranges, no project directory
//! (relative paths are refused), no `extends`/profiles/secrets/configs keys.

pub mod grants;
mod image;
mod interpolate;
mod parse;
mod raw;
mod syntax;
mod types;
mod validate;

pub use image::ImageRef;
pub use parse::parse;
pub use types::{
    ComposeProject, Condition, DeviceRequest, Healthcheck, Logging, Mount, MountKind, NetworkDef,
    Port, Service, Ulimit, VolumeDef,
};

/// Labels under this prefix belong to Phoenix (the agent marks its objects with them); a
/// Compose file may not set them.
pub const LABEL_PREFIX: &str = "phoenix.";

/// The network every service without a `networks` key joins, as in Compose.
pub const DEFAULT_NETWORK: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("parse compose file: {0}")]
    Yaml(String),
    #[error("compose {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("compose {field}: variable {var} is not set and has no default")]
    UnsetVariable { field: String, var: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ComposeError {
    ComposeError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests;
