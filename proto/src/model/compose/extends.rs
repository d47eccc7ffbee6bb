//! `extends`: a service built on another one, from the same file or from another file
//! inside the project directory, merged as Compose merges them (the Compose
//! specification's merge rules), on the YAML tree before the service is read, so every
//! key keeps its own checks afterwards.
//!
//! Merge rules (local wins): mappings merge key by key; `command`, `entrypoint` and
//! `healthcheck.test` are replaced; `environment`, `labels`, `sysctls`, `extra_hosts`,
//! `annotations`, build `args`, `depends_on` and `networks` are read as mappings whatever
//! form each side wrote; `volumes` and `devices` are unique by container path, `secrets`
//! and `configs` by target; other sequences are appended without duplicates. Relative
//! paths of a service from a file in a subdirectory are rebased onto the project
//! directory, since Compose resolves them against the file that wrote them.
//!
//! Another file is read through [`FileReader`], the caller's, with a path relative to
//! the project directory that cannot lead out of it (the reader must also not follow a
//! link out of it); the parser itself still reads nothing.

use super::{ComposeError, invalid};
use serde_json::{Map, Value};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// How a file is read: path relative to the project directory → its text or why not.
type ReadFn = dyn Fn(&Path) -> Result<String, String> + Send + Sync;

/// Reads a file of the project by its path relative to the project directory (already
/// checked to stay beneath it). The coordinator reads beside the compose file.
#[derive(Clone)]
pub struct FileReader(Arc<ReadFn>);

impl FileReader {
    pub fn new(f: impl Fn(&Path) -> Result<String, String> + Send + Sync + 'static) -> Self {
        FileReader(Arc::new(f))
    }
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileReader")
    }
}

/// Deepest chain of `extends` followed; a bound against cycles through files.
const MAX_CHAIN: usize = 10;

/// Where a service definition came from: its file (relative to the project directory,
/// `None` for the compose file itself) and that file's services.
struct Source<'a> {
    file: Option<PathBuf>,
    services: &'a Map<String, Value>,
}

/// Replaces every service that has `extends` by its merge with the service it extends.
pub(super) fn resolve(
    services: &mut Map<String, Value>,
    reader: Option<&FileReader>,
    strip: fn(Map<String, Value>) -> Map<String, Value>,
) -> Result<(), ComposeError> {
    let original = services.clone();
    let src = Source {
        file: None,
        services: &original,
    };
    for (name, v) in services.iter_mut() {
        if v.get("extends").is_some() {
            *v = expand(&src, name, reader, strip, &[])?;
        }
    }
    Ok(())
}

/// The service `name` of `src` with its `extends` chain merged in, paths rebased onto
/// the project directory. `chain`: the services followed so far (`file:service`), the
/// first being the one the error names.
fn expand(
    src: &Source,
    name: &str,
    reader: Option<&FileReader>,
    strip: fn(Map<String, Value>) -> Map<String, Value>,
    chain: &[String],
) -> Result<Value, ComposeError> {
    let here = format!(
        "{}:{name}",
        src.file
            .as_deref()
            .map(|f| f.display().to_string())
            .unwrap_or_default()
    );
    let mut chain = chain.to_vec();
    let first = chain
        .first()
        .map(|c| c.rsplit(':').next().unwrap_or_default().to_string())
        .unwrap_or_else(|| name.to_string());
    let field = format!("services.{first}.extends");
    if chain.contains(&here) || chain.len() > MAX_CHAIN {
        chain.push(here);
        return Err(invalid(
            field,
            format!(
                "extends cycle or a chain of more than {MAX_CHAIN}: {}",
                chain.join(" -> ")
            ),
        ));
    }
    chain.push(here);
    let Some(Value::Object(local)) = src.services.get(name).cloned() else {
        return Err(invalid(
            format!("services.{name}"),
            "no such service to extend",
        ));
    };
    let mut local = local;
    let ext = local.remove("extends");
    // This service's own paths resolve against its file; a base is already rebased.
    let mut local = Value::Object(local);
    if let Some(file) = &src.file {
        rebase(&mut local, file.parent().unwrap_or(Path::new("")));
    }
    Ok(match ext {
        None => local,
        Some(ext) => {
            let (base_name, base_file) = match ext {
                Value::String(s) => (s, None),
                Value::Object(mut m) => {
                    let service = match m.remove("service") {
                        Some(Value::String(s)) => s,
                        _ => return Err(invalid(&field, "needs `service:` (a service name)")),
                    };
                    let file = match m.remove("file") {
                        None => None,
                        Some(Value::String(f)) => Some(f),
                        Some(_) => return Err(invalid(&field, "`file` must be a path")),
                    };
                    if let Some(k) = m.keys().next() {
                        return Err(invalid(
                            &field,
                            format!("unknown key {k:?} (service, file)"),
                        ));
                    }
                    (service, file)
                }
                _ => {
                    return Err(invalid(&field, "must be a service name or {service, file}"));
                }
            };
            let base = match base_file {
                None if !src.services.contains_key(&base_name) => {
                    return Err(invalid(
                        &field,
                        format!("no such service {base_name:?} to extend"),
                    ));
                }
                None => expand(src, &base_name, reader, strip, &chain)?,
                Some(f) => {
                    let rel = beneath(&field, src.file.as_deref(), &f)?;
                    let Some(reader) = reader else {
                        return Err(invalid(
                            &field,
                            format!(
                                "{f:?}: another file is read only when the stack is compiled with its project directory"
                            ),
                        ));
                    };
                    let text = (reader.0)(&rel)
                        .map_err(|why| invalid(&field, format!("read {f:?}: {why}")))?;
                    let tree: Value = serde_saphyr::from_str(&text)
                        .map_err(|e| invalid(&field, format!("{f:?}: {e}")))?;
                    let services = match tree {
                        Value::Object(m) => match strip(m).remove("services") {
                            Some(Value::Object(s)) => s,
                            _ => return Err(invalid(&field, format!("{f:?} has no services"))),
                        },
                        _ => return Err(invalid(&field, format!("{f:?} is not a mapping"))),
                    };
                    let other = Source {
                        file: Some(rel),
                        services: &services,
                    };
                    if !services.contains_key(&base_name) {
                        return Err(invalid(
                            &field,
                            format!("{f:?} has no service {base_name:?}"),
                        ));
                    }
                    expand(&other, &base_name, Some(reader), strip, &chain)?
                }
            };
            merge_service(base, local)
        }
    })
}

/// `file` as written in a service of `from` (relative to the project directory, `None`:
/// the compose file) → its path relative to the project directory; it may not lead out.
fn beneath(field: &str, from: Option<&Path>, file: &str) -> Result<PathBuf, ComposeError> {
    if file.starts_with('/') || file.starts_with('~') {
        return Err(invalid(
            field,
            format!(
                "{file:?}: write a path relative to the compose file, inside the project directory"
            ),
        ));
    }
    let mut out = from
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for c in Path::new(file).components() {
        match c {
            Component::Normal(n) => out.push(n),
            // The guard pops one level; only a pop above the project directory fails.
            Component::ParentDir if !out.pop() => {
                return Err(invalid(
                    field,
                    format!("{file:?} leads out of the project directory"),
                ));
            }
            _ => {}
        }
    }
    if out.as_os_str().is_empty() {
        return Err(invalid(field, format!("{file:?} is not a file")));
    }
    Ok(out)
}

/// Rewrites the relative paths of a service read from a file in `dir` (relative to the
/// project directory) so they resolve against the project directory: `build`, its
/// `context`, `env_file` and bind sources.
fn rebase(service: &mut Value, dir: &Path) {
    if dir.as_os_str().is_empty() {
        return;
    }
    let fix = |p: &str| -> Option<String> {
        let relative = p.starts_with("./") || p.starts_with("../") || p == "." || p == "..";
        relative.then(|| format!("./{}/{p}", dir.display()))
    };
    let Value::Object(m) = service else { return };
    match m.get_mut("build") {
        Some(Value::String(s)) => {
            if let Some(n) = fix(s) {
                *s = n;
            }
        }
        Some(Value::Object(b)) => {
            if let Some(Value::String(s)) = b.get_mut("context")
                && let Some(n) = fix(s)
            {
                *s = n;
            }
        }
        _ => {}
    }
    let fix_env = |v: &mut Value| match v {
        Value::String(s) if !s.starts_with('/') => {
            *s = format!("./{}/{s}", dir.display());
        }
        Value::Object(o) => {
            if let Some(Value::String(s)) = o.get_mut("path")
                && !s.starts_with('/')
            {
                *s = format!("./{}/{s}", dir.display());
            }
        }
        _ => {}
    };
    match m.get_mut("env_file") {
        Some(Value::Array(a)) => a.iter_mut().for_each(fix_env),
        Some(v) => fix_env(v),
        None => {}
    }
    if let Some(Value::Array(vols)) = m.get_mut("volumes") {
        for v in vols {
            match v {
                Value::String(s) => {
                    if let Some((src, rest)) = s.split_once(':')
                        && let Some(n) = fix(src)
                    {
                        *s = format!("{n}:{rest}");
                    }
                }
                Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("bind") => {
                    if let Some(Value::String(s)) = o.get_mut("source")
                        && let Some(n) = fix(s)
                    {
                        *s = n;
                    }
                }
                _ => {}
            }
        }
    }
}

/// Keys whose list form (`K=V`) and mapping form mean the same.
const PAIR_KEYS: &[&str] = &["environment", "labels", "sysctls", "annotations", "args"];

/// `base` with `local` laid over it, by the Compose merge rules (see the module doc).
pub(super) fn merge_service(base: Value, local: Value) -> Value {
    let (Value::Object(mut out), Value::Object(local)) = (base, local) else {
        return Value::Null;
    };
    for (k, v) in local {
        let merged = match (k.as_str(), out.remove(&k)) {
            (_, None) => v,
            ("command" | "entrypoint", Some(_)) => v,
            (key, Some(b)) if PAIR_KEYS.contains(&key) => {
                merge_maps(as_map(b, '='), as_map(v, '='), false)
            }
            ("extra_hosts", Some(b)) => merge_maps(hosts_map(b), hosts_map(v), false),
            ("depends_on" | "networks", Some(b)) => merge_maps(names_map(b), names_map(v), true),
            ("volumes" | "devices", Some(b)) => unique_by(b, v, mount_target),
            ("secrets" | "configs", Some(b)) => unique_by(b, v, file_target),
            ("healthcheck", Some(Value::Object(mut b))) => {
                if let Value::Object(l) = &v
                    && l.contains_key("test")
                {
                    b.remove("test");
                }
                merge_value(Value::Object(b), v)
            }
            ("build", Some(b)) => {
                let build = |x: Value| match x {
                    Value::String(s) => {
                        let mut m = Map::new();
                        m.insert("context".into(), Value::String(s));
                        Value::Object(m)
                    }
                    other => other,
                };
                merge_service_build(build(b), build(v))
            }
            (_, Some(b)) => merge_value(b, v),
        };
        out.insert(k, merged);
    }
    Value::Object(out)
}

fn merge_service_build(base: Value, local: Value) -> Value {
    let (Value::Object(mut out), Value::Object(local)) = (base, local) else {
        return Value::Null;
    };
    for (k, v) in local {
        let merged = match (k.as_str(), out.remove(&k)) {
            ("args" | "labels", Some(b)) => merge_maps(as_map(b, '='), as_map(v, '='), false),
            (_, Some(b)) => merge_value(b, v),
            (_, None) => v,
        };
        out.insert(k, merged);
    }
    Value::Object(out)
}

/// Mappings merge key by key, sequences append without duplicates, scalars are replaced.
fn merge_value(base: Value, local: Value) -> Value {
    match (base, local) {
        (Value::Object(mut b), Value::Object(l)) => {
            for (k, v) in l {
                let merged = match b.remove(&k) {
                    Some(old) => merge_value(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Object(b)
        }
        (Value::Array(mut b), Value::Array(l)) => {
            for v in l {
                if !b.contains(&v) {
                    b.push(v);
                }
            }
            Value::Array(b)
        }
        (_, l) => l,
    }
}

fn merge_maps(base: Value, local: Value, deep: bool) -> Value {
    match (base, local) {
        (Value::Object(mut b), Value::Object(l)) => {
            for (k, v) in l {
                let merged = match b.remove(&k) {
                    Some(old) if deep => merge_value(old, v),
                    _ => v,
                };
                b.insert(k, merged);
            }
            Value::Object(b)
        }
        (_, l) => l,
    }
}

/// `["K=V", "K"]` → `{K: V, K: null}`; a mapping stays as it is.
fn as_map(v: Value, sep: char) -> Value {
    match v {
        Value::Array(items) => {
            let mut m = Map::new();
            for i in items {
                let Value::String(s) = i else { continue };
                match s.split_once(sep) {
                    Some((k, v)) => m.insert(k.to_string(), Value::String(v.to_string())),
                    None => m.insert(s, Value::Null),
                };
            }
            Value::Object(m)
        }
        other => other,
    }
}

/// `extra_hosts` entries split at their first `=` or `:`.
fn hosts_map(v: Value) -> Value {
    match v {
        Value::Array(items) => {
            let mut m = Map::new();
            for i in items {
                let Value::String(s) = i else { continue };
                match s.find(['=', ':']) {
                    Some(at) => m.insert(s[..at].to_string(), Value::String(s[at + 1..].into())),
                    None => m.insert(s, Value::Null),
                };
            }
            Value::Object(m)
        }
        other => other,
    }
}

/// A list of names → a mapping of names to null (`depends_on`, `networks`).
fn names_map(v: Value) -> Value {
    match v {
        Value::Array(items) => Value::Object(
            items
                .into_iter()
                .filter_map(|i| match i {
                    Value::String(s) => Some((s, Value::Null)),
                    _ => None,
                })
                .collect(),
        ),
        other => other,
    }
}

/// Base entries whose key the local list also has are dropped; then the local entries.
fn unique_by(base: Value, local: Value, key: fn(&Value) -> Option<String>) -> Value {
    let (Value::Array(b), Value::Array(l)) = (base, local) else {
        return Value::Null;
    };
    let local_keys: Vec<Option<String>> = l.iter().map(key).collect();
    let mut out: Vec<Value> = b
        .into_iter()
        .filter(|v| {
            let k = key(v);
            k.is_none() || !local_keys.contains(&k)
        })
        .collect();
    out.extend(l);
    Value::Array(out)
}

/// The container path of a `volumes` or `devices` entry.
fn mount_target(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            Some(parts.get(1).copied().unwrap_or(parts[0]).to_string())
        }
        Value::Object(o) => o.get("target").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The target of a `secrets` or `configs` entry (its source name by default).
fn file_target(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("target")
            .or_else(|| o.get("source"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}
