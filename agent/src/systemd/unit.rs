//! Rendering unit files from the model: pure functions, so a bad value is found before
//! anything is written. Quoting follows systemd.service(5) "Command lines" and
//! systemd.exec(5) `Environment=`; `%` is doubled everywhere (specifiers) and `$` in command
//! lines (variable expansion), so a value reaches the program exactly as written.

use super::ServiceError;
use phoenix_proto::model::{ServiceSpec, UnitSpec};

pub(super) const HEADER: &str = "# Managed by Phoenix; local changes are overwritten.\n";

const RESTART: [&str; 7] = [
    "no",
    "always",
    "on-success",
    "on-failure",
    "on-abnormal",
    "on-abort",
    "on-watchdog",
];
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

fn invalid(unit: &str, reason: String) -> ServiceError {
    ServiceError::Invalid {
        unit: unit.to_owned(),
        reason,
    }
}

/// Agent-side checks beyond the model's: values that would break the unit file's syntax
/// or that systemd would reject.
pub(super) fn validate(spec: &ServiceSpec) -> Result<(), ServiceError> {
    let name = spec.name.as_str();
    for (key, text) in &spec.dropins {
        if text.contains('\0') {
            return Err(invalid(name, format!("drop-in {key} contains a NUL byte")));
        }
    }
    let Some(u) = &spec.unit else {
        return Ok(());
    };
    if !name.ends_with(".service") {
        return Err(invalid(name, "a generated unit must be a .service".into()));
    }
    if u.description.contains(['\n', '\r']) {
        return Err(invalid(name, "description contains a line break".into()));
    }
    for arg in u.exec_start.iter().chain(&u.exec_reload) {
        if arg.contains(['\n', '\r', '\0']) {
            return Err(invalid(
                name,
                format!("command argument {arg:?} contains a line break or NUL"),
            ));
        }
    }
    if !u.exec_reload.is_empty() && !u.exec_reload[0].starts_with('/') {
        return Err(invalid(
            name,
            "exec_reload needs an absolute program path".into(),
        ));
    }
    if !spec.reload_on.is_empty() && u.exec_reload.is_empty() {
        return Err(invalid(
            name,
            "reload_on needs unit.exec_reload (the unit could not be reloaded)".into(),
        ));
    }
    if let Some(r) = &u.restart
        && !RESTART.contains(&r.as_str())
    {
        return Err(invalid(
            name,
            format!("restart {r:?} is not one of {}", RESTART.join(", ")),
        ));
    }
    if let Some(t) = &u.service_type
        && !TYPES.contains(&t.as_str())
    {
        return Err(invalid(
            name,
            format!("service_type {t:?} is not one of {}", TYPES.join(", ")),
        ));
    }
    if let Some(l) = &u.limits {
        for (what, v) in [("memory_max", &l.memory_max), ("cpu_quota", &l.cpu_quota)] {
            if let Some(v) = v
                && (v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'%'))
            {
                return Err(invalid(
                    name,
                    format!("limits.{what} {v:?} is not a systemd size or percentage"),
                ));
            }
        }
    }
    Ok(())
}

/// One command-line word, quoted when needed.
fn quote_word(w: &str) -> String {
    let escaped = w.replace('%', "%%").replace('$', "$$");
    let plain = !escaped.is_empty()
        && escaped
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%$".contains(&b));
    if plain {
        return escaped;
    }
    if w == ";" {
        return "\\;".into();
    }
    format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
}

pub(super) fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|w| quote_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote_env(k: &str, v: &str) -> String {
    format!(
        "\"{}={}\"",
        k,
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('%', "%%")
    )
}

/// The `EnvironmentFile=` body for resolved secret values.
pub(super) fn env_file(values: &[(String, String)]) -> String {
    let mut s = String::from(HEADER);
    for (k, v) in values {
        s.push_str(&format!(
            "{k}=\"{}\"\n",
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        ));
    }
    s
}

/// The unit file for `u`; `env_file` is the path of the secret environment file, if any.
pub(super) fn render(u: &UnitSpec, env_file: Option<&str>) -> String {
    let mut s = String::from(HEADER);
    s.push_str("[Unit]\n");
    if !u.description.is_empty() {
        s.push_str(&format!(
            "Description={}\n",
            u.description.replace('%', "%%")
        ));
    }
    for (key, list) in [
        ("After", &u.after),
        ("Requires", &u.requires),
        ("Wants", &u.wants),
    ] {
        if !list.is_empty() {
            s.push_str(&format!("{key}={}\n", list.join(" ")));
        }
    }
    s.push_str("\n[Service]\n");
    if let Some(t) = &u.service_type {
        s.push_str(&format!("Type={t}\n"));
    }
    s.push_str(&format!("ExecStart={}\n", command_line(&u.exec_start)));
    if !u.exec_reload.is_empty() {
        s.push_str(&format!("ExecReload={}\n", command_line(&u.exec_reload)));
    }
    for (k, v) in &u.environment {
        s.push_str(&format!("Environment={}\n", quote_env(k, v)));
    }
    if let Some(p) = env_file {
        s.push_str(&format!("EnvironmentFile={p}\n"));
    }
    for (key, v) in [
        ("User", &u.user),
        ("Group", &u.group),
        ("Restart", &u.restart),
    ] {
        if let Some(v) = v {
            s.push_str(&format!("{key}={v}\n"));
        }
    }
    if let Some(d) = &u.working_directory {
        s.push_str(&format!(
            "WorkingDirectory={}\n",
            d.as_str().replace('%', "%%")
        ));
    }
    if let Some(r) = u.restart_sec {
        s.push_str(&format!("RestartSec={r}\n"));
    }
    if let Some(l) = &u.limits {
        if let Some(v) = &l.memory_max {
            s.push_str(&format!("MemoryMax={v}\n"));
        }
        if let Some(v) = &l.cpu_quota {
            s.push_str(&format!("CPUQuota={v}\n"));
        }
        if let Some(v) = l.tasks_max {
            s.push_str(&format!("TasksMax={v}\n"));
        }
        if let Some(v) = l.limit_nofile {
            s.push_str(&format!("LimitNOFILE={v}\n"));
        }
    }
    s.push_str("\n[Install]\n");
    let wanted = if u.wanted_by.is_empty() {
        "multi-user.target".to_owned()
    } else {
        u.wanted_by.join(" ")
    };
    s.push_str(&format!("WantedBy={wanted}\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> ServiceSpec {
        serde_json::from_value(json).expect("service spec")
    }

    #[test]
    fn renders_a_full_unit() {
        let s = spec(serde_json::json!({
            "name": "api.service",
            "unit": {
                "description": "API 100%",
                "exec_start": ["/usr/bin/api", "--name", "two words", "$HOME", "a\"b\\c"],
                "environment": {"MODE": "prod \"x\""},
                "user": "www-data",
                "working_directory": "/srv/api",
                "restart": "on-failure",
                "restart_sec": 3,
                "after": ["network-online.target"],
                "wants": ["network-online.target"],
                "limits": {"memory_max": "4G", "tasks_max": 64, "limit_nofile": 65536}
            }
        }));
        validate(&s).expect("valid");
        let text = render(
            s.unit.as_ref().expect("unit"),
            Some("/etc/phoenix/env/api.service.env"),
        );
        let expected = "# Managed by Phoenix; local changes are overwritten.\n[Unit]\nDescription=API 100%%\nAfter=network-online.target\nWants=network-online.target\n\n[Service]\nExecStart=/usr/bin/api --name \"two words\" $$HOME \"a\\\"b\\\\c\"\nEnvironment=\"MODE=prod \\\"x\\\"\"\nEnvironmentFile=/etc/phoenix/env/api.service.env\nUser=www-data\nRestart=on-failure\nWorkingDirectory=/srv/api\nRestartSec=3\nMemoryMax=4G\nTasksMax=64\nLimitNOFILE=65536\n\n[Install]\nWantedBy=multi-user.target\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn refuses_what_would_break_the_file_or_be_rejected() {
        let bad = [
            serde_json::json!({"name": "a.service", "unit": {"exec_start": ["/bin/x", "a\nb"]}}),
            serde_json::json!({"name": "a.service", "unit": {"exec_start": ["/bin/x"], "restart": "sometimes"}}),
            serde_json::json!({"name": "a.service", "unit": {"exec_start": ["/bin/x"]}, "reload_on": ["file:/etc/x"]}),
            serde_json::json!({"name": "a.timer", "unit": {"exec_start": ["/bin/x"]}}),
            serde_json::json!({"name": "a.service", "unit": {"exec_start": ["/bin/x"], "limits": {"memory_max": "4G\nX=1"}}}),
        ];
        for b in bad {
            assert!(validate(&spec(b.clone())).is_err(), "{b}");
        }
    }
}
