//! Lenient, path-tracking access to the JSON of Phoenix's own config files.
//!
//! The real files fail their own schemas, so the reader never uses serde's strict
//! derive on them: it walks `serde_json::Value`, accepts the variants seen in the
//! field (ids as strings or integers, numbers as strings), ignores unknown keys, and
//! records every value that cannot mean anything as a [`ConfigError`] with the file
//! and the JSON path. Nothing stops at the first error.
//!
//! Layer 1: imports only `types`.

use super::types::{ConfigError, Problem, Warning};
use phoenix_proto::model::{AbsPath, GuestId};
use phoenix_proto::redact::secret_key as looks_secret_key;
use serde_json::Value;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

/// Errors and warnings of one run, collected across every file.
#[derive(Debug, Default)]
pub(crate) struct Diag {
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<Warning>,
    /// Literal secret values found in this run: kept in memory only, to prove that none
    /// reached a compiled spec. Never printed.
    pub secrets: Vec<String>,
}

impl Diag {
    pub fn error(&mut self, file: &Path, path: &str, problem: Problem) {
        self.errors.push(ConfigError {
            file: file.to_path_buf(),
            path: path.to_string(),
            problem,
        });
    }

    pub fn warn(&mut self, file: &Path, path: &str, message: impl Into<String>) {
        self.warnings.push(Warning {
            file: file.to_path_buf(),
            path: path.to_string(),
            message: message.into(),
        });
    }
}

/// One JSON value together with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Node<'a> {
    pub file: &'a Path,
    pub path: String,
    pub value: &'a Value,
}

/// `a.b`, `a."801"`, `a[3]`: a path a user can follow in the file.
pub(crate) fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && !key.as_bytes()[0].is_ascii_digit()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let key = if plain {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Node<'a> {
    pub fn root(file: &'a Path, value: &'a Value) -> Self {
        Node {
            file,
            path: String::new(),
            value,
        }
    }

    pub fn file_buf(&self) -> PathBuf {
        self.file.to_path_buf()
    }

    /// The child `key`; missing and `null` are the same thing in these files.
    pub fn get(&self, key: &str) -> Option<Node<'a>> {
        match self.value.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(Node {
                file: self.file,
                path: join(&self.path, key),
                value: v,
            }),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn error(&self, d: &mut Diag, problem: Problem) {
        d.error(self.file, &self.path, problem);
    }

    pub fn warn(&self, d: &mut Diag, message: impl Into<String>) {
        d.warn(self.file, &self.path, message);
    }

    /// What was found, short, and never the value of a secret-looking key.
    pub fn found(&self) -> String {
        let last = self.path.rsplit('.').next().unwrap_or("");
        if looks_secret_key(last.trim_matches('"'))
            || self
                .value
                .as_str()
                .is_some_and(|s| phoenix_proto::redact::secret_value(s).is_some())
        {
            return format!("{} (value redacted)", kind_of(self.value));
        }
        match self.value {
            Value::String(s) if s.chars().count() <= 60 => format!("{s:?}"),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => kind_of(other).to_string(),
        }
    }

    pub fn expected(&self, d: &mut Diag, expected: impl Into<String>) {
        let found = self.found();
        self.error(
            d,
            Problem::Expected {
                expected: expected.into(),
                found,
            },
        );
    }

    pub fn items(&self, d: &mut Diag, expected: &str) -> Vec<Node<'a>> {
        match self.value {
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, v)| Node {
                    file: self.file,
                    path: format!("{}[{i}]", self.path),
                    value: v,
                })
                .collect(),
            _ => {
                self.expected(d, expected);
                Vec::new()
            }
        }
    }

    /// The readable items of the array at `key` (none when the key is absent); `read`
    /// reports each item it cannot read.
    pub fn list<T>(
        &self,
        d: &mut Diag,
        key: &str,
        expected: &str,
        mut read: impl FnMut(&Node<'a>, &mut Diag) -> Option<T>,
    ) -> Vec<T> {
        let Some(n) = self.get(key) else {
            return Vec::new();
        };
        n.items(d, expected)
            .iter()
            .filter_map(|i| read(i, d))
            .collect()
    }

    /// The object key this node stands under, read as a guest id; `what` says which
    /// ("a CTID").
    pub fn key_guest_id(&self, key: &str, d: &mut Diag, what: &str) -> Option<GuestId> {
        let id = key.parse::<GuestId>().ok();
        if id.is_none() {
            self.error(
                d,
                Problem::Expected {
                    expected: format!("{what} (integer 1..999999999) as the key"),
                    found: format!("{key:?}"),
                },
            );
        }
        id
    }

    pub fn entries(&self, d: &mut Diag, expected: &str) -> Vec<(String, Node<'a>)> {
        match self.value {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Node {
                            file: self.file,
                            path: join(&self.path, k),
                            value: v,
                        },
                    )
                })
                .collect(),
            _ => {
                self.expected(d, expected);
                Vec::new()
            }
        }
    }

    pub fn is_object(&self) -> bool {
        self.value.is_object()
    }

    pub fn string(&self, d: &mut Diag, expected: &str) -> Option<String> {
        match self.value {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.expected(d, expected);
                None
            }
        }
    }

    /// A non-empty string without control characters.
    pub fn text(&self, d: &mut Diag, expected: &str) -> Option<String> {
        match self.value {
            Value::String(s) if !s.trim().is_empty() && !s.chars().any(char::is_control) => {
                Some(s.clone())
            }
            _ => {
                self.expected(d, expected);
                None
            }
        }
    }

    /// An integer, written as a JSON number or as a string of digits.
    pub fn uint(&self, d: &mut Diag, range: RangeInclusive<u64>) -> Option<u64> {
        let v = match self.value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match v {
            Some(v) if range.contains(&v) => Some(v),
            _ => {
                self.expected(
                    d,
                    format!("an integer from {} to {}", range.start(), range.end()),
                );
                None
            }
        }
    }

    pub fn boolean(&self, d: &mut Diag) -> Option<bool> {
        match self.value {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s == "true" => Some(true),
            Value::String(s) if s == "false" => Some(false),
            _ => {
                self.expected(d, "true or false");
                None
            }
        }
    }

    /// A guest id: `101`, `"101"`, `" 101 "`.
    pub fn guest_id(&self, d: &mut Diag) -> Option<GuestId> {
        let id = match self.value {
            Value::Number(n) => n
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .and_then(|v| GuestId::try_from(v).ok()),
            Value::String(s) => s.parse::<GuestId>().ok(),
            _ => None,
        };
        if id.is_none() {
            self.expected(
                d,
                "a guest id (integer 1..999999999, as a number or a string)",
            );
        }
        id
    }

    /// An optional child read with `f`; absent is fine.
    pub fn opt<T>(
        &self,
        d: &mut Diag,
        key: &str,
        f: impl FnOnce(&Node<'a>, &mut Diag) -> Option<T>,
    ) -> Option<T> {
        self.get(key).and_then(|n| f(&n, d))
    }
}

/// The guest's value of `key`, else the file root's (`jq_get_value` in the scripts:
/// this is how `nvidia_*` globals reach every guest).
pub(crate) fn guest_or_root<'a>(guest: &Node<'a>, root: &Node<'a>, key: &str) -> Option<Node<'a>> {
    guest.get(key).or_else(|| root.get(key))
}

/// A JSON file, or an error naming it (unreadable, or not JSON).
pub(crate) fn read_json(path: &Path, d: &mut Diag) -> Option<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            d.error(path, "", Problem::Read(e.to_string()));
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            d.error(path, "", Problem::Json(e.to_string()));
            None
        }
    }
}

/// An absolute path; anything else is an error naming the JSON path.
pub(crate) fn abs_path(n: &Node, d: &mut Diag) -> Option<AbsPath> {
    match n.value.as_str().map(|s| AbsPath::try_from(s.to_string())) {
        Some(Ok(p)) => Some(p),
        _ => {
            n.expected(d, "an absolute path");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_quote_numeric_and_odd_keys() {
        assert_eq!(join("lxc_configs", "801"), "lxc_configs.\"801\"");
        assert_eq!(join("", "lxc_configs"), "lxc_configs");
        assert_eq!(join("a", "pre-features"), "a.\"pre-features\"");
    }

    #[test]
    fn ids_and_numbers_accept_strings() {
        let v = json!({"a": "900", "b": 9000, "c": "x", "d": " 12 "});
        let root = Node::root(Path::new("f.json"), &v);
        let mut d = Diag::default();
        assert_eq!(
            root.get("a")
                .and_then(|n| n.guest_id(&mut d))
                .map(u32::from),
            Some(900)
        );
        assert_eq!(
            root.get("b")
                .and_then(|n| n.guest_id(&mut d))
                .map(u32::from),
            Some(9000)
        );
        assert_eq!(root.get("d").and_then(|n| n.uint(&mut d, 1..=32)), Some(12));
        assert!(d.errors.is_empty());
        assert_eq!(root.get("c").and_then(|n| n.uint(&mut d, 1..=32)), None);
        assert_eq!(d.errors.len(), 1);
        assert_eq!(
            d.errors[0].to_string(),
            "f.json: c: expected an integer from 1 to 32, found \"x\""
        );
    }

    #[test]
    fn secret_values_are_never_echoed_in_errors() {
        let v = json!({"admin_password": ["hunter2"]});
        let root = Node::root(Path::new("f.json"), &v);
        let n = root.get("admin_password").expect("present");
        assert_eq!(n.found(), "an array (value redacted)");
    }
}
