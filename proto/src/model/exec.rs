use super::secret::SecretRef;
use super::{AbsPath, AccountName, EnvName, ResourceRef, SimpleName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A command for the steps that truly need one. Runs argv directly (no shell) unless the
/// argv itself is `["/bin/sh", "-c", ...]`; guarded so repeated passes are no-ops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    pub name: SimpleName,
    pub command: Vec<String>,
    /// Skip when this path exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates: Option<AbsPath>,
    /// Skip when this command exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unless: Option<Vec<String>>,
    /// Run only when this command exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onlyif: Option<Vec<String>>,
    /// Run only when one of these resources changed in the same pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refresh_on: Vec<ResourceRef>,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<EnvName, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_environment: BTreeMap<EnvName, SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<AbsPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<AccountName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<ResourceRef>,
}

fn default_timeout() -> u64 {
    300
}

impl ExecSpec {
    pub(super) fn validate(&self) -> Result<(), String> {
        let argv_ok = |a: &Vec<String>| !a.is_empty() && a[0].starts_with('/');
        if !argv_ok(&self.command) {
            return Err("command needs an absolute program path as its first element".into());
        }
        for g in self.unless.iter().chain(self.onlyif.iter()) {
            if !argv_ok(g) {
                return Err("guard commands need an absolute program path".into());
            }
        }
        if self.creates.is_none()
            && self.unless.is_none()
            && self.onlyif.is_none()
            && self.refresh_on.is_empty()
        {
            return Err(
                "an exec needs a guard (creates, unless, onlyif or refresh_on) so that it runs once, not on every pass"
                    .into(),
            );
        }
        if self.timeout_seconds == 0 || self.timeout_seconds > 24 * 3600 {
            return Err("timeout_seconds must be between 1 and 86400".into());
        }
        Ok(())
    }
}
