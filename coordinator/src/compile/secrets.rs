//! Secrets in configs. A desired state never carries a secret value: only a
//! [`SecretRef`] (a file on the guest or an environment variable of the agent) that the
//! agent resolves. A literal secret found in a config is flagged as a warning, is not
//! copied into any spec, and its value is never printed.
//!
//! Layer 2: imports only layers 0–1 (`types`, `reader`).

use super::reader::{Diag, Node};
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

/// Replaces literal secret values in Compose text (`KEY: value`, `- KEY=value`) with
/// a `${KEY}` interpolation, so the value comes from the stack's variables at deploy
/// time and never from the file. Returns the redacted text, the keys it touched and
/// the values it removed (for [`Diag::secrets`]).
pub(crate) fn redact_compose(text: &str) -> (String, Vec<String>, Vec<String>) {
    let mut keys = Vec::new();
    let mut values = Vec::new();
    let mut out = String::with_capacity(text.len());
    for (no, line) in text.split_inclusive('\n').enumerate() {
        let body = line.trim_end_matches(['\n', '\r']);
        let ending = &line[body.len()..];
        let indent_len = body.len() - body.trim_start().len();
        let (indent, rest) = body.split_at(indent_len);
        let (dash, rest) = match rest.strip_prefix("- ") {
            Some(r) => ("- ", r),
            None => ("", rest),
        };
        let split = if dash.is_empty() {
            rest.split_once(": ").map(|(k, v)| (k, ": ", v))
        } else {
            rest.split_once('=').map(|(k, v)| (k, "=", v))
        };
        if let Some((key, sep, value)) = split {
            let key_clean = key.trim().trim_matches(['"', '\'']);
            let value_clean = value.trim().trim_matches(['"', '\'']);
            if EnvName::try_from(key_clean).is_ok()
                && is_literal_secret(key_clean, value_clean)
                && !value_clean.contains("${")
            {
                keys.push(key_clean.to_string());
                values.push(value_clean.to_string());
                out.push_str(&format!("{indent}{dash}{key}{sep}${{{key_clean}}}{ending}"));
                continue;
            }
        }
        // A secret that cannot become an interpolation (a label such as
        // `traefik…basicauth.users=admin:$$apr1$$…`): reported, never sent.
        if phoenix_proto::redact::redact_line(body) != body {
            keys.push(format!("line {}", no + 1));
            values.push(body.trim().to_string());
        }
        out.push_str(line);
    }
    (out, keys, values)
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
    fn compose_literals_become_interpolations() {
        let (text, keys, values) = redact_compose(
            "services:\n  db:\n    environment:\n      POSTGRES_PASSWORD: hunter2\n      - N8N_API_TOKEN=abc\n      POSTGRES_USER: n8n\n      DB_PASSWORD: ${DB_PASSWORD}\n",
        );
        assert_eq!(keys, ["POSTGRES_PASSWORD", "N8N_API_TOKEN"]);
        assert_eq!(values, ["hunter2", "abc"]);
        assert!(!text.contains("hunter2") && !text.contains("abc"));
        assert!(text.contains("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD}\n"));
        assert!(text.contains("- N8N_API_TOKEN=${N8N_API_TOKEN}\n"));
        assert!(text.contains("POSTGRES_USER: n8n"));
    }
}
