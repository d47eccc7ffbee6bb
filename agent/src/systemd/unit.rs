//! Rendering unit files from the model: pure functions, so a bad value is found before
//! anything is written. Quoting follows systemd.service(5) "Command lines" and
//! systemd.exec(5) `Environment=`; `%` is doubled everywhere (specifiers) and `$` in command
//! lines (variable expansion), so a value reaches the program exactly as written.

use super::ServiceError;
use phoenix_proto::model::{ServiceSpec, UnitSpec};

pub(super) const HEADER: &str = "# Managed by Phoenix; local changes are overwritten.\n";

/// The model's checks (the same ones `phoenix validate` runs): every value rendered into
/// the unit is refused there if no escaping could carry it (line breaks, NUL).
pub(super) fn validate(spec: &ServiceSpec) -> Result<(), ServiceError> {
    spec.validate().map_err(|reason| ServiceError::Invalid {
        unit: spec.name.to_string(),
        reason,
    })
}

/// Escapes inside a double-quoted word (systemd.syntax(7) C-style escapes): backslash and
/// quote, and control characters as `\xNN` so the file stays one line per directive.
fn escape_quoted(w: &str) -> String {
    let mut out = String::with_capacity(w.len() + 2);
    for c in w.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// One command-line word, quoted when needed: `%` doubled (specifiers), `$` doubled
/// (variable expansion), everything else C-escaped inside double quotes.
fn quote_word(w: &str) -> String {
    let escaped = w.replace('%', "%%").replace('$', "$$");
    let plain = !escaped.is_empty()
        && escaped
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%$".contains(&b));
    if plain {
        return escaped;
    }
    // A lone `;` separates commands even when quoted.
    if w == ";" {
        return "\\;".into();
    }
    format!("\"{}\"", escape_quoted(&escaped))
}

pub(super) fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|w| quote_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote_env(k: &str, v: &str) -> String {
    format!("\"{}={}\"", k, escape_quoted(&v.replace('%', "%%")))
}

/// The `EnvironmentFile=` body for resolved secret values. Inside double quotes systemd
/// unescapes only `\\ " $ \``; a line break cannot be carried (backslash-newline is a
/// continuation), so such a value is refused rather than silently changed.
pub(super) fn env_file(unit: &str, values: &[(String, String)]) -> Result<String, ServiceError> {
    let mut s = String::from(HEADER);
    for (k, v) in values {
        if v.contains(['\n', '\r', '\0']) {
            return Err(ServiceError::Invalid {
                unit: unit.to_owned(),
                reason: format!(
                    "secret environment {k}: the value contains a line break or NUL, which an EnvironmentFile cannot carry"
                ),
            });
        }
        let mut q = String::with_capacity(v.len());
        for c in v.chars() {
            if matches!(c, '\\' | '"' | '$' | '`') {
                q.push('\\');
            }
            q.push(c);
        }
        s.push_str(&format!("{k}=\"{q}\"\n"));
    }
    Ok(s)
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
        ("User", u.user.as_deref()),
        ("Group", u.group.as_deref()),
        ("Restart", u.restart.as_deref()),
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

    #[test]
    fn odd_characters_are_escaped_not_interpreted() {
        let argv: Vec<String> = ["/bin/x", "%n", "$HOME", "a\tb", ";", "it's"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            command_line(&argv),
            "/bin/x %%n $$HOME \"a\\x09b\" \\; \"it's\""
        );
        assert_eq!(quote_env("V", "%i \"q\""), "\"V=%%i \\\"q\\\"\"");
    }

    #[test]
    fn env_file_escapes_shell_specials_and_refuses_line_breaks() {
        let body = env_file("a.service", &[("K".into(), "a\"b$c`d\\e".into())]).expect("ok");
        assert!(body.ends_with("K=\"a\\\"b\\$c\\`d\\\\e\"\n"), "{body}");
        for bad in ["a\nb", "a\rb", "a\0b"] {
            let err = env_file("a.service", &[("K".into(), bad.into())]).expect_err("refused");
            assert!(
                !err.to_string().contains(bad),
                "value must not be printed: {err}"
            );
        }
    }
}
