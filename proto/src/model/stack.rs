use super::ResourceRef;
use super::compose::ComposeProject;
#[cfg(any(test, feature = "compose-text"))]
use super::compose::{ParseOptions, parse_with};
use super::secret::SecretRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A Docker stack: the parsed Compose project plus what the Phoenix manifest adds.
/// The coordinator parses and interpolates the Compose file at compile time
/// ([`super::compose::parse`]); deserializing a spec runs the project's checks again, so
/// the agent accepts exactly what the compiler does. Secrets are never part of it: a
/// container gets them from an `env_file` or a bind-mounted file on the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(try_from = "StackSpecWire")]
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
    /// The Compose project directory on the guest (the compose file's directory there),
    /// against which the compiler resolved relative paths; where the stack's shipped
    /// files live. Recorded so the older `compose` text shape is parsed the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_dir: Option<super::AbsPath>,
    /// Compose profiles the stack enables (`*` for all); services of other profiles are
    /// not in `project`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
}

/// Where a stack's project directory is on the guest unless its manifest says otherwise:
/// beneath `/srv` (one of the agent's default file roots), one directory per stack.
pub const DEFAULT_PROJECTS_DIR: &str = "/srv/phoenix/stacks";

/// What a stack spec may look like on input. Besides the current shape it accepts the
/// shape written before 0008 (`compose` YAML text plus `variables`), which it parses with
/// the model's parser: a desired state persisted by an older agent or stored by an older
/// coordinator still loads. That shape is never written and not in the schema.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct StackSpecWire {
    name: String,
    #[serde(default = "default_environment")]
    environment: String,
    #[serde(default)]
    project: Option<ComposeProject>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    compose: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    // Accepted (the shape has it) but only the parser reads it.
    #[cfg_attr(not(any(test, feature = "compose-text")), allow(dead_code))]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    files: Vec<StackFile>,
    #[serde(default)]
    registry_auth: Option<SecretRef>,
    #[serde(default = "yes")]
    rollback_on_failure: bool,
    #[serde(default)]
    depends_on: Vec<ResourceRef>,
    #[serde(default)]
    host_access: Vec<String>,
    #[serde(default)]
    project_dir: Option<super::AbsPath>,
    #[serde(default)]
    profiles: Vec<String>,
}

impl TryFrom<StackSpecWire> for StackSpec {
    type Error = String;
    fn try_from(w: StackSpecWire) -> Result<Self, String> {
        let project = match (w.project, w.compose) {
            (Some(p), None) => p,
            #[cfg(any(test, feature = "compose-text"))]
            (None, Some(text)) => {
                let opts = ParseOptions {
                    variables: w.variables,
                    project_dir: w.project_dir.as_ref().map(|d| d.as_path().to_path_buf()),
                    project_name: Some(w.name.clone()),
                    profiles: w.profiles.clone(),
                    files: None,
                    withheld: Default::default(),
                };
                parse_with(&text, &opts).map_err(|e| format!("stack {}: {e}", w.name))?
            }
            // A build without the parser (the agent) cannot read the older shape; the
            // coordinator, which parses it, sends the current shape on the next session.
            #[cfg(not(any(test, feature = "compose-text")))]
            (None, Some(_)) => {
                return Err(format!(
                    "stack {}: the older compose-text shape is read only by the coordinator; \
                     it sends this state again as a parsed project",
                    w.name
                ));
            }
            (Some(_), Some(_)) => {
                return Err(format!(
                    "stack {}: give either project or the older compose text, not both",
                    w.name
                ));
            }
            (None, None) => return Err(format!("stack {}: missing field `project`", w.name)),
        };
        Ok(StackSpec {
            name: w.name,
            environment: w.environment,
            project,
            labels: w.labels,
            files: w.files,
            registry_auth: w.registry_auth,
            rollback_on_failure: w.rollback_on_failure,
            depends_on: w.depends_on,
            host_access: w.host_access,
            project_dir: w.project_dir,
            profiles: w.profiles,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
            project_dir: None,
            profiles: Vec::new(),
        }
    }

    /// The project was checked when it was parsed or deserialized; what is left is the
    /// manifest's part.
    pub(super) fn validate(&self) -> Result<(), String> {
        super::cert::simple_name("stack", &self.name)?;
        for g in &self.host_access {
            let ok = matches!(g.split_once(' '), Some(("bind" | "device", p)) if p.starts_with('/'))
                || matches!(g.split_once(' '), Some(("cap_add", c)) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
                || g == "network_mode host";
            if !ok {
                return Err(format!(
                    "host_access {g:?}: expected \"bind /path\", \"device /dev/x\", \"cap_add NAME\" or \"network_mode host\""
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    // In tests a panic is the failure report.
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_stack_written_by_an_older_agent_still_loads_as_its_parsed_project() {
        let old: StackSpec = serde_json::from_value(serde_json::json!({
            "name": "web",
            "compose": "services:\n  web:\n    image: \"nginx:${TAG}\"\n",
            "variables": {"TAG": "1.27"},
            "host_access": ["bind /srv"],
        }))
        .unwrap();
        assert_eq!(old.project.services()["web"].image.as_str(), "nginx:1.27");
        assert_eq!(old.host_access, ["bind /srv"]);
        // Written back in the current shape only, and read back the same.
        let json = serde_json::to_value(&old).unwrap();
        assert!(json.get("compose").is_none() && json.get("variables").is_none());
        assert_eq!(serde_json::from_value::<StackSpec>(json).unwrap(), old);
        // The old text meets the parser's checks.
        let e = serde_json::from_value::<StackSpec>(serde_json::json!({
            "name": "web", "compose": "services:\n  web:\n    image: \"nginx:${TAG:?set TAG}\"\n",
        }))
        .unwrap_err()
        .to_string();
        assert!(e.contains("required variable TAG is not set"), "{e}");
    }
}
