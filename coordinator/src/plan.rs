//! What a new desired state changes against the one the store holds: the coordinator's
//! half of a plan (the agent's half compares with the guest itself and shows the files
//! and units as they are on disk).
//!
//! One line per resource added (`+`), removed (`-`) or changed (`~`), each changed one
//! followed by indented lines naming what changed in it: a unit's keys with old and new
//! value, a certificate's names added and removed, a stack's services added, removed or
//! changed and which of their keys, a file's content as line counts. Values that look
//! like secrets are redacted and file contents are never printed (plans land in CI logs).

use phoenix_proto::model::{GuestSpec, Resource};
use phoenix_proto::redact::{REDACTED, secret_key, secret_value};
use serde_json::Value;
use std::collections::BTreeMap;

/// Detail lines per changed resource; a change touching more says how many it left out.
const MAX_DETAILS: usize = 12;
/// Values longer than this are cut.
const MAX_VALUE_CHARS: usize = 60;

/// Lines of the difference from `old` to `new`, resources in id order.
pub fn spec_diff(old: &GuestSpec, new: &GuestSpec) -> Vec<String> {
    let index = |s: &GuestSpec| -> BTreeMap<String, Resource> {
        s.resources()
            .iter()
            .map(|r| (r.id().to_string(), r.clone()))
            .collect()
    };
    let (a, b) = (index(old), index(new));
    let mut out = Vec::new();
    for (id, r) in &b {
        match a.get(id) {
            None => out.push(format!("+ {id}")),
            Some(prev) if prev != r => {
                out.push(format!("~ {id}"));
                let details = resource_changes(prev, r);
                let hidden = details.len().saturating_sub(MAX_DETAILS);
                out.extend(
                    details
                        .into_iter()
                        .take(MAX_DETAILS)
                        .map(|d| format!("    {d}")),
                );
                if hidden > 0 {
                    out.push(format!("    … and {hidden} more"));
                }
            }
            Some(_) => {}
        }
    }
    for id in a.keys().filter(|id| !b.contains_key(*id)) {
        out.push(format!("- {id}"));
    }
    out
}

/// What changed inside one resource, as readable lines.
fn resource_changes(old: &Resource, new: &Resource) -> Vec<String> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return vec!["changed".into()];
    };
    let mut out = Vec::new();
    if let (Resource::Stack(_), Some(sa), Some(sb)) = (
        new,
        a.pointer("/project/services"),
        b.pointer("/project/services"),
    ) {
        stack_services(sa, sb, &mut out);
        let mut a = a.clone();
        let mut b = b.clone();
        for v in [&mut a, &mut b] {
            if let Some(p) = v.get_mut("project").and_then(Value::as_object_mut) {
                p.remove("services");
            }
        }
        walk("", &a, &b, &mut out);
        return out;
    }
    walk("", &a, &b, &mut out);
    out
}

/// A stack's services: added, removed, and for each changed one the keys that changed.
fn stack_services(a: &Value, b: &Value, out: &mut Vec<String>) {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return;
    };
    for (name, svc) in b {
        match a.get(name) {
            None => out.push(format!("+ service {name}")),
            Some(prev) if prev != svc => {
                let mut keys = Vec::new();
                walk("", prev, svc, &mut keys);
                // The key paths, without their values: "service web: image nginx:1 → nginx:2, ports".
                out.push(format!("~ service {name}: {}", keys.join("; ")));
            }
            Some(_) => {}
        }
    }
    for name in a.keys().filter(|n| !b.contains_key(*n)) {
        out.push(format!("- service {name}"));
    }
}

/// Every difference between `a` and `b` below `path`.
fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    if a == b {
        return;
    }
    let key = path.rsplit('.').next().unwrap_or(path);
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(
                    &sub,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::String(x), Value::String(y)) if key == "content" => {
            out.push(format!("{path}: {}", content_change(x, y)));
        }
        (Value::Array(x), Value::Array(y)) if is_set_like(x) && is_set_like(y) => {
            let added: Vec<String> = y
                .iter()
                .filter(|v| !x.contains(v))
                .map(|v| format!("+ {}", shown(key, v)))
                .collect();
            let removed: Vec<String> = x
                .iter()
                .filter(|v| !y.contains(v))
                .map(|v| format!("- {}", shown(key, v)))
                .collect();
            if added.is_empty() && removed.is_empty() {
                out.push(format!("{path}: reordered"));
            } else {
                out.push(format!("{path}: {}", [added, removed].concat().join(", ")));
            }
        }
        _ => out.push(format!("{path}: {} → {}", shown(key, a), shown(key, b))),
    }
}

/// Arrays of plain values (names, arguments, ports) are shown as what was added and
/// removed; an argv that only changed order says so.
fn is_set_like(v: &[Value]) -> bool {
    v.iter().all(|x| !x.is_object() && !x.is_array())
}

/// A value as the plan shows it: compact, cut, and redacted when its key or its shape
/// says it is a secret.
fn shown(key: &str, v: &Value) -> String {
    match v {
        Value::Null => return "(none)".into(),
        Value::String(s) if secret_key(key) || secret_value(s).is_some() => {
            return REDACTED.into();
        }
        _ => {}
    }
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > MAX_VALUE_CHARS {
        let cut: String = text.chars().take(MAX_VALUE_CHARS).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// A file content change as counts: the text itself may be secret.
fn content_change(a: &str, b: &str) -> String {
    let (x, y): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut pool: BTreeMap<&str, i64> = BTreeMap::new();
    for l in &x {
        *pool.entry(l).or_default() += 1;
    }
    let mut added = 0;
    for l in &y {
        match pool.get_mut(l) {
            Some(n) if *n > 0 => *n -= 1,
            _ => added += 1,
        }
    }
    let removed: i64 = pool.values().filter(|n| **n > 0).sum();
    format!("{} → {} lines (+{added} -{removed})", x.len(), y.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(resources: Value) -> GuestSpec {
        GuestSpec::from_value(json!({ "resources": resources })).expect("spec")
    }

    #[test]
    fn a_cert_names_the_sans_added_and_removed() {
        let cert = |sans: Value| {
            json!([{"kind": "cert", "name": "web", "common_name": "web.lab", "sans": sans,
                    "cert_path": "/etc/ssl/web.crt", "key_path": "/etc/ssl/web.key"}])
        };
        let d = spec_diff(
            &spec(cert(json!(["web.lab", "old.lab"]))),
            &spec(cert(json!(["web.lab", "new.lab"]))),
        );
        assert_eq!(d, ["~ cert:web", "    sans: + new.lab, - old.lab"]);
    }

    #[test]
    fn a_unit_shows_its_changed_keys_with_values_and_secrets_redacted() {
        let svc = |args: &str, pw: &str| {
            json!([{"kind": "service", "name": "app.service", "unit": {
                "description": "app", "exec_start": ["/usr/bin/app", args],
                "environment": {"DB_PASSWORD": pw, "MODE": args}}}])
        };
        let d = spec_diff(
            &spec(svc("--old", "hunter2")),
            &spec(svc("--new", "correct-horse")),
        );
        assert_eq!(d[0], "~ service:app.service");
        assert!(
            d.contains(&"    unit.environment.DB_PASSWORD: <redacted> → <redacted>".to_string()),
            "{d:?}"
        );
        assert!(
            d.contains(&"    unit.environment.MODE: --old → --new".to_string()),
            "{d:?}"
        );
        assert!(
            d.contains(&"    unit.exec_start: + --new, - --old".to_string()),
            "{d:?}"
        );
        assert!(!d.join("\n").contains("hunter2"), "{d:?}");
    }

    #[test]
    fn a_file_shows_line_counts_never_content_and_resources_come_and_go() {
        let file =
            |path: &str, content: &str| json!({"kind": "file", "path": path, "content": content});
        let d = spec_diff(
            &spec(json!([file("/a", "x\ny\n"), file("/gone", "")])),
            &spec(json!([file("/a", "x\nz\nw\n"), file("/new", "")])),
        );
        assert_eq!(
            d,
            [
                "~ file:/a",
                "    content: 2 → 3 lines (+2 -1)",
                "+ file:/new",
                "- file:/gone"
            ]
        );
    }

    #[test]
    fn a_stack_names_its_services_and_their_changed_keys() {
        let stack = |services: Value| json!([{"kind": "stack", "name": "media", "project": {"services": services}}]);
        let d = spec_diff(
            &spec(stack(
                json!({"web": {"image": "nginx:1.27"}, "old": {"image": "busybox:1"}}),
            )),
            &spec(stack(
                json!({"web": {"image": "nginx:1.28"}, "db": {"image": "postgres:16"}}),
            )),
        );
        assert_eq!(
            d,
            [
                "~ stack:media",
                "    + service db",
                "    ~ service web: image: nginx:1.27 → nginx:1.28",
                "    - service old"
            ]
        );
    }
}
