use super::secret::SecretRef;
use super::{AbsPath, AccountName, Ensure, EnvName, ResourceRef, SimpleName, UnitName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Stopped,
}

/// A systemd service: a unit Phoenix generates, or drop-ins for a unit it does not own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unit name including the suffix, e.g. `vllm_model_server.service`.
    pub name: UnitName,
    #[serde(default)]
    pub ensure: Ensure,
    /// Generated unit file `/etc/systemd/system/<name>`; unset means the unit comes
    /// from a package and only state, enablement and drop-ins are managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<UnitSpec>,
    /// Drop-ins `/etc/systemd/system/<name>.d/<key>.conf`, raw INI text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropins: BTreeMap<SimpleName, String>,
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
    pub environment: BTreeMap<EnvName, String>,
    /// Values resolved on the agent into an `EnvironmentFile` readable only by root.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_environment: BTreeMap<EnvName, SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<AccountName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<AccountName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<AbsPath>,
    /// `no`, `always`, `on-failure`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_sec: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<UnitName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<UnitName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wants: Vec<UnitName>,
    /// `[Install] WantedBy=`; defaults to `multi-user.target`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wanted_by: Vec<UnitName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceLimits>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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

/// `Restart=` values systemd accepts.
const RESTART: [&str; 7] = [
    "no",
    "always",
    "on-success",
    "on-failure",
    "on-abnormal",
    "on-abort",
    "on-watchdog",
];
/// `Type=` values systemd accepts.
const TYPES: [&str; 8] = [
    "simple",
    "exec",
    "forking",
    "oneshot",
    "dbus",
    "notify",
    "notify-reload",
    "idle",
];

/// A value rendered on one line of a unit or environment file: a line break there would
/// start a new directive (`ExecStartPre=` run as root), and NUL cannot be carried at all.
/// Every other character is escaped by the renderer.
pub fn one_line(what: &str, v: &str) -> Result<(), String> {
    match v.chars().find(|c| matches!(c, '\n' | '\r' | '\0')) {
        Some(c) => Err(format!(
            "{what} contains {}, which would break out of its line in the unit file",
            match c {
                '\n' => "a line feed",
                '\r' => "a carriage return",
                _ => "a NUL byte",
            }
        )),
        None => Ok(()),
    }
}

impl ServiceSpec {
    /// Everything the agent renders into a unit, drop-in or environment file is checked
    /// here, so `phoenix validate` and the agent refuse the same specs.
    pub fn validate(&self) -> Result<(), String> {
        for (key, text) in &self.dropins {
            // Drop-ins are raw INI by design; only what no file can hold is refused.
            if text.contains('\0') {
                return Err(format!("drop-in {key} contains a NUL byte"));
            }
        }
        if let Some(u) = &self.unit {
            if !self.name.ends_with(".service") {
                return Err("a generated unit must be a .service".into());
            }
            u.validate()?;
            if !self.reload_on.is_empty() && u.exec_reload.is_empty() {
                return Err(
                    "reload_on needs unit.exec_reload (the unit could not be reloaded)".into(),
                );
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

impl UnitSpec {
    fn validate(&self) -> Result<(), String> {
        if self.exec_start.is_empty() || self.exec_start[0].is_empty() {
            return Err("unit.exec_start needs at least the program".into());
        }
        for (what, argv) in [
            ("exec_start", &self.exec_start),
            ("exec_reload", &self.exec_reload),
        ] {
            if let Some(p) = argv.first()
                && !p.starts_with('/')
            {
                return Err(format!(
                    "unit.{what} program {p:?} must be an absolute path"
                ));
            }
            for (i, arg) in argv.iter().enumerate() {
                one_line(&format!("unit.{what}[{i}]"), arg)?;
            }
        }
        // These two are written unquoted: a trailing backslash would continue the line
        // and swallow the next directive, surrounding blanks would be stripped.
        for (what, v) in [
            ("unit.description", self.description.as_str()),
            (
                "unit.working_directory",
                self.working_directory.as_ref().map_or("", |d| d.as_str()),
            ),
        ] {
            one_line(what, v)?;
            if v.ends_with('\\') || v != v.trim() {
                return Err(format!(
                    "{what} {v:?} ends with a backslash or has surrounding blanks, which the unit file would not keep"
                ));
            }
        }
        for (k, v) in &self.environment {
            one_line(&format!("unit.environment.{k}"), v)?;
        }
        if let Some(r) = &self.restart
            && !RESTART.contains(&r.as_str())
        {
            return Err(format!(
                "unit.restart {r:?} is not one of {}",
                RESTART.join(", ")
            ));
        }
        if let Some(t) = &self.service_type
            && !TYPES.contains(&t.as_str())
        {
            return Err(format!(
                "unit.service_type {t:?} is not one of {}",
                TYPES.join(", ")
            ));
        }
        if let Some(l) = &self.limits {
            for (what, v) in [("memory_max", &l.memory_max), ("cpu_quota", &l.cpu_quota)] {
                if let Some(v) = v
                    && (v.is_empty()
                        || !v
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'%'))
                {
                    return Err(format!(
                        "unit.limits.{what} {v:?} is not a systemd size or percentage"
                    ));
                }
            }
        }
        Ok(())
    }
}
