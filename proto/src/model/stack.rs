use super::ResourceRef;
use super::compose::ComposeProject;
use super::secret::SecretRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A Docker stack: the parsed Compose project plus what the Phoenix manifest adds.
/// The coordinator parses and interpolates the Compose file at compile time
/// ([`super::compose::parse`]); deserializing a spec runs the project's checks again, so
/// the agent accepts exactly what the compiler does. Secrets are never part of it: a
/// container gets them from an `env_file` or a bind-mounted file on the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    /// Compose project name (`com.docker.compose.project`-like label `phoenix.stack`).
    pub name: String,
    /// Manifest environment the variables came from, e.g. "production".
    #[serde(default = "default_environment")]
    pub environment: String,
    /// The Compose file, parsed, with `${VAR}` already interpolated from the manifest's
    /// variables.
    pub project: ComposeProject,
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
    /// A stack of `project` with the defaults a hand-written spec gets.
    pub fn new(name: impl Into<String>, project: ComposeProject) -> Self {
        StackSpec {
            name: name.into(),
            environment: default_environment(),
            project,
            labels: BTreeMap::new(),
            files: Vec::new(),
            registry_auth: None,
            rollback_on_failure: true,
            depends_on: Vec::new(),
            host_access: Vec::new(),
        }
    }

    /// The project was checked when it was parsed or deserialized; what is left is the
    /// manifest's part.
    pub(super) fn validate(&self) -> Result<(), String> {
        super::cert::simple_name("stack", &self.name)?;
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
