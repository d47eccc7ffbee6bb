use super::{AbsPath, EnvName};
use serde::{Deserialize, Serialize};

/// A secret is never carried in a desired state: only where the agent reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretRef {
    /// A file on the guest (e.g. `/etc/phoenix/secrets/registry.json`).
    File(AbsPath),
    /// An environment variable of the agent process.
    Env(EnvName),
}
