//! Secrets in configs. A desired state never carries a secret value: only a
//! [`SecretRef`] (a file on the guest or an environment variable of the agent) that the
//! agent resolves. A literal secret found in a config is flagged as a warning, is not
//! copied into any spec, and its value is never printed.
//!
//! Layer 2: imports only layers 0–1 (`types`, `reader`).

use super::reader::{Diag, Node};
use phoenix_proto::model::compose::ComposeProject;
use phoenix_proto::model::{AbsPath, EnvName, SecretRef};
use serde_json::Value;

pub(crate) use phoenix_proto::redact::{is_placeholder, secret_key as looks_secret_key};
use phoenix_proto::redact::{secret_args, secret_value};

/// A value that must not reach a guest: under a credential key, or a secret by its shape.
pub(crate) fn is_literal_secret(key: &str, value: &str) -> bool {
    (looks_secret_key(key) && !is_placeholder(value)) || secret_value(value).is_some()
}

/// Walks a whole config file and flags every literal secret: by key (strings and
/// numbers alike), by the value's shape, as `--password x` in a command array, and as
/// `password=` lines inside file contents.
pub(crate) fn scan(n: &Node, d: &mut Diag) {
    match n.value {
        Value::Object(map) => {
            for key in map.keys() {
                let Some(child) = n.get(key) else { continue };
                let literal = match child.value {
                    Value::String(s) => is_literal_secret(key, s),
                    Value::Number(_) => looks_secret_key(key),
                    _ => false,
                };
                if literal {
                    flag(&child, d);
                } else {
                    scan(&child, d);
                }
            }
        }
        Value::Array(items) => {
            let strings: Option<Vec<String>> = items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect();
            if let Some(argv) = strings {
                let items = n.items(d, "an array");
                for i in secret_args(&argv) {
                    if let Some(item) = items.get(i) {
                        flag(item, d);
                    }
                }
                for (i, item) in items.iter().enumerate() {
                    if !secret_args(&argv).contains(&i) {
                        scan(item, d);
                    }
                }
                return;
            }
            for item in n.items(d, "an array") {
                // `[{name: "DATABASE_PASS", value: "..."}]`, the stack variable shape.
                if let (Some(name), Some(value)) = (item.get("name"), item.get("value"))
                    && let Some(name) = name.value.as_str()
                    && match value.value {
                        Value::String(s) => is_literal_secret(name, s),
                        Value::Number(_) => looks_secret_key(name),
                        _ => false,
                    }
                {
                    flag(&value, d);
                } else {
                    scan(&item, d);
                }
            }
        }
        Value::String(s)
            if s.contains('\n') && phoenix_proto::redact::redact_text(s) != s.as_str() =>
        {
            n.warn(
                d,
                "content holds a secret-looking line (shown redacted in plans); keep such a file private (mode 0600) or read the secret on the guest",
            );
        }
        _ => {}
    }
}

fn flag(n: &Node, d: &mut Diag) {
    match n.value {
        Value::String(v) => d.secrets.push(v.to_string()),
        Value::Number(v) => d.secrets.push(v.to_string()),
        _ => {}
    }
    n.warn(
        d,
        "literal secret in a config file (value redacted and never sent to a guest); reference it instead: {\"file\": \"/path/on/guest\"} or {\"env\": \"VAR\"}",
    );
}

/// A secret reference: `{"file": "/abs"}`, `{"env": "NAME"}` or the string `"${NAME}"`.
/// A literal is flagged and yields `None`.
pub(crate) fn reference(n: &Node, d: &mut Diag) -> Option<SecretRef> {
    if let Some(f) = n.get("file") {
        return super::reader::abs_path(&f, d).map(SecretRef::File);
    }
    if let Some(e) = n.get("env") {
        return env_name(&e, d).map(SecretRef::Env);
    }
    if let Some(s) = n.value.as_str()
        && let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}'))
    {
        return EnvName::try_from(name)
            .ok()
            .map(SecretRef::Env)
            .or_else(|| {
                n.expected(d, "a secret reference ${NAME} with a valid variable name");
                None
            });
    }
    if let Some(s) = n.value.as_str()
        && s.starts_with('/')
    {
        return AbsPath::try_from(s.to_string()).ok().map(SecretRef::File);
    }
    if n.value.is_string() {
        flag(n, d);
    } else {
        n.expected(
            d,
            "a secret reference {\"file\": \"/path\"} or {\"env\": \"NAME\"}",
        );
    }
    None
}

fn env_name(n: &Node, d: &mut Diag) -> Option<EnvName> {
    match n.value.as_str().and_then(|s| EnvName::try_from(s).ok()) {
        Some(name) => Some(name),
        None => {
            n.expected(d, "an environment variable name");
            None
        }
    }
}

/// A literal secret inside a parsed Compose project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ComposeLiteral {
    /// Where it sits, e.g. `services.db.environment.POSTGRES_PASSWORD`.
    pub field: String,
    /// What names it: the variable, label or option key, or the field of a list item.
    pub key: String,
    pub value: String,
}

/// Every literal secret in `project`, found on its typed form: values under a credential
/// key (environment, labels, driver and logging options), `--password x` in a command
/// or healthcheck, and values that are secrets by their shape anywhere. Such a value must
/// not reach a guest: the container reads it from an env_file or file on the guest.
pub(crate) fn compose_literals(project: &ComposeProject) -> Vec<ComposeLiteral> {
    let mut out = Vec::new();
    let value = serde_json::to_value(project).unwrap_or_default();
    walk_literals(&value, "", &mut out);
    out
}

fn walk_literals(v: &Value, path: &str, out: &mut Vec<ComposeLiteral>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match child {
                    Value::String(s) if is_literal_secret(k, s) => out.push(ComposeLiteral {
                        field: join(k),
                        key: k.clone(),
                        value: s.clone(),
                    }),
                    _ => walk_literals(child, &join(k), out),
                }
            }
        }
        Value::Array(items) => {
            let argv: Vec<String> = items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect();
            let flagged = if argv.len() == items.len() {
                secret_args(&argv)
            } else {
                Vec::new()
            };
            for (i, item) in items.iter().enumerate() {
                if flagged.contains(&i) {
                    out.push(ComposeLiteral {
                        field: format!("{path}[{i}]"),
                        key: format!("{path}[{i}]"),
                        value: argv[i].clone(),
                    });
                } else {
                    walk_literals(item, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::String(s) if secret_value(s).is_some() => out.push(ComposeLiteral {
            field: path.to_string(),
            key: path.to_string(),
            value: s.clone(),
        }),
        _ => {}
    }
}

/// The last line of defence: a literal secret found anywhere in the configs must not
/// appear in any compiled spec. Values shorter than 4 characters are too common to tell.
/// Records an error at `file`/`path` if the spec carries one.
pub(crate) fn check_leak(
    spec: &phoenix_proto::model::GuestSpec,
    id: phoenix_proto::model::GuestId,
    file: &std::path::Path,
    path: &str,
    d: &mut Diag,
) {
    let json = String::from_utf8_lossy(&spec.to_json()).into_owned();
    let leaked = d
        .secrets
        .iter()
        .map(|s| s.trim())
        .any(|s| s.len() >= 4 && json.contains(s));
    if leaked {
        d.error(
            file,
            path,
            super::types::Problem::Conflict(format!(
                "a literal secret from the configs would reach the desired state of guest {id} (value redacted); use a secret reference"
            )),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    #[test]
    fn flags_literals_not_references_or_placeholders() {
        let v = json!({
            "portainer_api": {"admin_password": "hunter2", "admin_user": "admin"},
            "users": {"password_hash": "NOT_SET"},
            "core_paths": {"hf_token_file": "/etc/x"},
            "variables": [{"name": "DATABASE_PASS", "value": "s3cret"}, {"name": "API_PORT", "value": "8000"}]
        });
        let mut d = Diag::default();
        scan(&Node::root(Path::new("f.json"), &v), &mut d);
        let paths: Vec<&str> = d.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            paths,
            ["portainer_api.admin_password", "variables[0].value"]
        );
        assert!(!d.warnings.iter().any(|w| w.to_string().contains("hunter2")));
    }

    #[test]
    fn compose_literals_are_found_on_the_parsed_project() {
        let project = phoenix_proto::model::compose::parse(
            "services:\n  db:\n    image: postgres:16\n    command: [\"app\", \"--db-password\", \"pw-in-argv\"]\n    environment:\n      - POSTGRES_PASSWORD=hunter2\n      - POSTGRES_USER=n8n\n      - DB_PASSWORD_FILE=/run/secrets/db\n    labels:\n      traefik.http.middlewares.a.basicauth.users: \"admin:$$apr1$$x$$y\"\n",
            &std::collections::BTreeMap::new(),
        )
        .expect("parse");
        let found: Vec<(String, String, String)> = compose_literals(&project)
            .into_iter()
            .map(|l| (l.field, l.key, l.value))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "services.db.command[2]".to_string(),
                    "services.db.command[2]".to_string(),
                    "pw-in-argv".to_string()
                ),
                (
                    "services.db.environment.POSTGRES_PASSWORD".into(),
                    "POSTGRES_PASSWORD".into(),
                    "hunter2".into()
                ),
                (
                    "services.db.labels.traefik.http.middlewares.a.basicauth.users".into(),
                    "traefik.http.middlewares.a.basicauth.users".into(),
                    "admin:$apr1$x$y".into()
                ),
            ]
        );
    }
}
