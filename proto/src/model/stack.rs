use super::ResourceRef;
use super::secret::SecretRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A Docker stack: the Compose file text plus what the Phoenix manifest adds.
/// The agent parses and validates the Compose subset; the coordinator checks it
/// too before pushing, with the same parser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    /// Compose project name (`com.docker.compose.project`-like label `phoenix.stack`).
    pub name: String,
    /// Manifest environment the variables came from, e.g. "production".
    #[serde(default = "default_environment")]
    pub environment: String,
    /// docker-compose.yml, verbatim.
    pub compose: String,
    /// `${VAR}` interpolation values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
    /// Extra labels per service (the manifest's `traefik_labels`), "key=value".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, Vec<String>>,
    /// Files placed on the guest before containers start (bind-mount sources).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<StackFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<SecretRef>,
    /// Put the previous container back when a recreate fails.
    #[serde(default = "yes")]
    pub rollback_on_failure: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<ResourceRef>,
    /// Host-root grants the stack is allowed to make, exactly as the agent prints them:
    /// `bind /var/run/docker.sock`, `cap_add SYS_ADMIN`, `device /dev/mem`. Any grant the
    /// Compose file makes that is not listed here fails the stack before anything runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_access: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StackFile {
    pub path: super::AbsPath,
    pub content: String,
}

fn default_environment() -> String {
    "production".into()
}

fn yes() -> bool {
    true
}

impl StackSpec {
    pub(super) fn validate(&self) -> Result<(), String> {
        super::cert::simple_name("stack", &self.name)?;
        if self.compose.trim().is_empty() {
            return Err("compose file is empty".into());
        }
        for g in &self.host_access {
            let ok = matches!(g.split_once(' '), Some(("bind" | "device", p)) if p.starts_with('/'))
                || matches!(g.split_once(' '), Some(("cap_add", c)) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'));
            if !ok {
                return Err(format!(
                    "host_access {g:?}: expected \"bind /path\", \"device /dev/x\" or \"cap_add NAME\""
                ));
            }
        }
        Ok(())
    }
}
