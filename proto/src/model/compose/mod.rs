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
//!   on every guest. An unset variable without a default is an empty string and a
//!   warning naming the field and the variable, as `docker compose` does; the warnings
//!   travel with the project ([`ComposeProject::warnings`]) so `phoenix validate`, the
//!   agent's plan and its log show them. `${VAR:?err}` and `${VAR?err}` still refuse.
//! - Relative paths (`./data`, `build: .`, secret and config files, env files) resolve
//!   against the project directory, the compose file's directory on the guest, and may
//!   not lead out of it. `profiles` keep or drop services as Compose does.
//! - [`ComposeProject`] is what a `StackSpec` carries. Deserializing one runs the same
//!   checks as parsing (`validate`), so the agent accepts nothing the parser would refuse.
//! - [`grants`] finds what a project grants over the guest (host-root binds, capabilities,
//!   devices, the host network).
//!
//! - `extends` (same file, or another file inside the project directory read through
//!   [`ParseOptions::files`]) is merged by Compose's rules before the service is read.
//! - `platform` and build `platforms` are checked for form here; whether they are the
//!   engine's own platform only the agent can tell (it asks the engine and refuses the
//!   stack otherwise: Phoenix sets up no emulation).
//! - Anonymous volumes (`- /data`) are [`MountKind::Anonymous`]; the agent keeps them
//!   across a recreate, as Compose does.
//!
//! Limits: host port ranges to pick from, external (swarm) secrets, overlay networks,
//! BuildKit-only build keys, `include`, `privileged` and the host namespaces (`pid`,
//! `ipc`, `userns_mode`) are refused, each with its reason.

pub mod dockerignore;
pub mod grants;
mod image;
mod types;
mod validate;

// The parser (YAML text to `ComposeProject`), behind the `compose-text` feature: the
// coordinator compiles Compose files; the agent receives projects already parsed and
// only deserializes and validates them (issue 14: the YAML stack is ~0.5 MB of its binary).
#[cfg(any(test, feature = "compose-text"))]
mod extends;
#[cfg(any(test, feature = "compose-text"))]
mod interpolate;
#[cfg(any(test, feature = "compose-text"))]
mod parse;
#[cfg(any(test, feature = "compose-text"))]
mod raw;
#[cfg(any(test, feature = "compose-text"))]
mod resources;
#[cfg(any(test, feature = "compose-text"))]
mod scalar;
#[cfg(any(test, feature = "compose-text"))]
mod service;
#[cfg(any(test, feature = "compose-text"))]
mod syntax;

#[cfg(any(test, feature = "compose-text"))]
pub use extends::FileReader;
pub use image::ImageRef;
#[cfg(any(test, feature = "compose-text"))]
pub use parse::{ParseOptions, parse, parse_with};
pub use types::{
    Addresses, Build, ComposeProject, Condition, DeviceRequest, Healthcheck, Ipam, IpamPool,
    Logging, Mount, MountKind, NetworkDef, Port, Resources, Service, Ulimit, VolumeDef,
};

/// Labels under this prefix belong to Phoenix (the agent marks its objects with them); a
/// Compose file may not set them.
pub const LABEL_PREFIX: &str = "phoenix.";

/// Most containers one service may ask for; a bound against a hostile `replicas`.
const MAX_REPLICAS: u32 = 100;

/// The network every service without a `networks` key joins, as in Compose.
pub const DEFAULT_NETWORK: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("parse compose file: {0}")]
    Yaml(String),
    #[error("compose {field}: {message}")]
    Invalid { field: String, message: String },
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

#[cfg(test)]
mod tests_gaps;
