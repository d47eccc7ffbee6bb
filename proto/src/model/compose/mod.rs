//! The Compose specification as one engine can honour it: its typed model, the parser
//! from YAML, and the checks both sides run. Pure: reads no files and talks to no engine,
//! so the coordinator compiles a stack with exactly the code the agent validates it with.
//!
//! - [`parse_with`] reads a Compose file (YAML), drops `x-` extension keys, interpolates it
//!   and returns a checked [`ComposeProject`]. Every key Phoenix does not honour is an
//!   error that names it and, for keys Compose defines, says why (serde
//!   `deny_unknown_fields` plus a table of refused keys), never silently dropped.
//!   `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`, `${VAR?err}`,
//!   `${VAR:+alt}`, `$VAR` and `$$` are interpolated from the stack's variables only
//!   (never from a process environment), so the same input renders the same containers
//!   on every guest; an unset variable without a default is an error (Compose would
//!   substitute an empty string: a silently empty image tag or password is worse).
//! - Relative paths (`./data`, `build: .`, secret and config files, env files) resolve
//!   against the project directory, the compose file's directory on the guest, and may
//!   not lead out of it. `profiles` keep or drop services as Compose does.
//! - [`ComposeProject`] is what a `StackSpec` carries. Deserializing one runs the same
//!   checks as parsing (`validate`), so the agent accepts nothing the parser would refuse.
//! - [`grants`] finds what a project grants over the guest (host-root binds, capabilities,
//!   devices, the host network).
//!
//! Limits: anonymous volumes, host port ranges to pick from, external (swarm) secrets,
//! overlay networks, BuildKit-only build keys, `extends`/`include`, `privileged` and the
//! host namespaces (`pid`, `ipc`, `userns_mode`) are refused, each with its reason.

pub mod grants;
mod image;
mod interpolate;
mod parse;
mod raw;
mod resources;
mod scalar;
mod service;
mod syntax;
mod types;
mod validate;

pub use image::ImageRef;
pub use parse::{ParseOptions, parse, parse_with};
pub use types::{
    Addresses, Build, ComposeProject, Condition, DeviceRequest, Healthcheck, Ipam, IpamPool,
    Logging, Mount, MountKind, NetworkDef, Port, Resources, Service, Ulimit, VolumeDef,
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
    /// `${VAR:?message}`: the file's own message, and never a value.
    #[error("compose {field}: required variable {var} is not set: {message}")]
    RequiredVariable {
        field: String,
        var: String,
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ComposeError {
    ComposeError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests_spec;
