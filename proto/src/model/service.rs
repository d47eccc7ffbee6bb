use super::file::valid_account;
use super::secret::SecretRef;
use super::{AbsPath, Ensure, ResourceRef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Stopped,
}

/// A systemd service: a unit Phoenix generates, or drop-ins for a unit it does not own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unit name including the suffix, e.g. `vllm_model_server.service`.
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
    /// Generated unit file `/etc/systemd/system/<name>`; unset means the unit comes
    /// from a package and only state, enablement and drop-ins are managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<UnitSpec>,
    /// Drop-ins `/etc/systemd/system/<name>.d/<key>.conf`, raw INI text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropins: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
    /// Restart when one of these resources changed in the same pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_on: Vec<ResourceRef>,
    /// Reload (not restart) when one of these changed, e.g. a cert for nginx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reload_on: Vec<ResourceRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<ResourceRef>,
}

/// The declarative body of a generated unit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    #[serde(default)]
    pub description: String,
    /// argv; rendered with systemd quoting, never through a shell.
    pub exec_start: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_reload: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Values resolved on the agent into an `EnvironmentFile` readable only by root.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_environment: BTreeMap<String, SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<AbsPath>,
    /// `no`, `always`, `on-failure`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_sec: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wants: Vec<String>,
    /// `[Install] WantedBy=`; defaults to `multi-user.target`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wanted_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceLimits>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// `MemoryMax=`, e.g. "4G".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<String>,
    /// `CPUQuota=`, e.g. "200%".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_nofile: Option<u32>,
}

/// systemd unit names: `[A-Za-z0-9:_.\\@-]`, with a known suffix, no path.
pub fn valid_unit_name(name: &str) -> Result<(), String> {
    const SUFFIXES: [&str; 6] = [
        ".service", ".socket", ".timer", ".target", ".mount", ".path",
    ];
    let ok = !name.is_empty()
        && name.len() <= 255
        && SUFFIXES
            .iter()
            .any(|s| name.ends_with(s) && name.len() > s.len())
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'@' | b'\\')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "unit name {name:?} is not a systemd unit name (no paths; needs a suffix such as .service)"
        ))
    }
}

impl ServiceSpec {
    pub(super) fn validate(&self) -> Result<(), String> {
        valid_unit_name(&self.name)?;
        for key in self.dropins.keys() {
            super::cert::simple_name("drop-in", key)?;
        }
        if let Some(u) = &self.unit {
            if u.exec_start.is_empty() || u.exec_start[0].is_empty() {
                return Err("unit.exec_start needs at least the program".into());
            }
            if !u.exec_start[0].starts_with('/') {
                return Err(format!(
                    "unit.exec_start program {:?} must be an absolute path",
                    u.exec_start[0]
                ));
            }
            for (what, v) in [("user", &u.user), ("group", &u.group)] {
                if let Some(v) = v
                    && !valid_account(v)
                {
                    return Err(format!("unit.{what} {v:?} is not a user/group name"));
                }
            }
            for k in u.environment.keys().chain(u.secret_environment.keys()) {
                valid_env_name(k)?;
            }
            for v in u.environment.values() {
                if v.contains('\n') {
                    return Err("unit.environment values may not contain newlines".into());
                }
            }
            for dep in u
                .after
                .iter()
                .chain(&u.requires)
                .chain(&u.wants)
                .chain(&u.wanted_by)
            {
                valid_unit_name(dep)?;
            }
        }
        if self.ensure == Ensure::Absent
            && (self.unit.is_some() || self.state == Some(RunState::Running))
        {
            return Err("an absent service cannot have a unit or be running".into());
        }
        Ok(())
    }
}

pub(crate) fn valid_env_name(k: &str) -> Result<(), String> {
    let ok = !k.is_empty()
        && !k.as_bytes()[0].is_ascii_digit()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "environment name {k:?} is not a valid variable name"
        ))
    }
}
