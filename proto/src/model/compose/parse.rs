//! YAML → [`ComposeProject`]: reads the file into a generic tree, drops `x-` extension
//! keys (the Compose spec says to ignore them), reads each section into its raw shape
//! (naming the section or service in every error), resolves relative paths against the
//! project directory, keeps the services of the active profiles and runs the project's
//! checks. Pure: reads no files itself (env_file contents are merged by the agent when it
//! renders the stack; another file named by `extends` is read through the caller's
//! [`FileReader`]) and talks to no engine.

use super::extends::{self, FileReader};
use super::interpolate::Vars;
use super::raw::{RawFileObject, RawNetwork, RawVolume};
use super::service::{Converted, service};
use super::types::{ComposeProject, Ipam, IpamPool, NetworkDef, VolumeDef};
use super::{ComposeError, invalid};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

/// What the parser needs besides the file: its variables, where the file lives on the
/// guest, the project name and the profiles to enable.
#[derive(Debug, Clone, Default)]
pub struct ParseOptions {
    /// `${VAR}` values; the only source of variables (never a process environment).
    pub variables: BTreeMap<String, String>,
    /// The project directory on the guest, i.e. the compose file's directory there (the
    /// stack's files live beneath it). Relative paths (`./data`, `build: .`, secret
    /// files) resolve against it and may not lead out of it. `None`: relative paths are
    /// refused.
    pub project_dir: Option<PathBuf>,
    /// The project name when the file has no top-level `name` (the stack's name): names
    /// the image a `build` without `image` produces.
    pub project_name: Option<String>,
    /// Profiles to enable (`*` enables all). Services without `profiles` always run.
    pub profiles: Vec<String>,
    /// Reads other files of the project (`extends: {file: …}`), by their path relative to
    /// the project directory. `None`: `extends` may only name services of this file.
    pub files: Option<FileReader>,
    /// Variables the caller knows but keeps out of the parse (a manifest's literal
    /// secrets, which never enter a desired state): a reference to one is refused, never
    /// substituted by an empty string.
    pub withheld: BTreeSet<String>,
}

impl ParseOptions {
    pub fn new(variables: &BTreeMap<String, String>) -> Self {
        ParseOptions {
            variables: variables.clone(),
            ..Default::default()
        }
    }
}

/// Parses, interpolates from `variables` and checks a Compose file with no project
/// directory (relative paths refused) and no profile enabled.
pub fn parse(
    compose: &str,
    variables: &BTreeMap<String, String>,
) -> Result<ComposeProject, ComposeError> {
    parse_with(compose, &ParseOptions::new(variables))
}

/// Keys whose mapping is user data (variable names, labels, options), where a key
/// starting with `x-` is data, not an extension.
const DATA_MAPS: &[&str] = &[
    "environment",
    "labels",
    "args",
    "driver_opts",
    "options",
    "sysctls",
    "extra_hosts",
    "annotations",
    "aux_addresses",
];

/// Drops `x-*` keys from every mapping except user-data ones.
fn strip_extensions(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .filter(|(k, _)| !k.starts_with("x-"))
        .map(|(k, v)| {
            let v = if DATA_MAPS.contains(&k.as_str()) {
                v
            } else {
                strip_value(v)
            };
            (k, v)
        })
        .collect()
}

fn strip_value(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_extensions(m)),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_value).collect()),
        other => other,
    }
}

/// Reads one section entry into its raw shape; the error names the entry.
fn read<T: serde::de::DeserializeOwned>(field: &str, v: Value) -> Result<T, ComposeError> {
    serde_json::from_value(v).map_err(|e| invalid(field, e.to_string()))
}

fn section(field: &str, v: Value) -> Result<Map<String, Value>, ComposeError> {
    match v {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => Err(invalid(field, "must be a mapping")),
    }
}

/// Parses, interpolates and checks a Compose file. The coordinator compiles stacks with
/// it; the agent receives the result.
pub fn parse_with(compose: &str, opts: &ParseOptions) -> Result<ComposeProject, ComposeError> {
    let vars = Vars::new(&opts.variables, &opts.withheld);
    // A value that is invalid because a variable was empty: the error says which.
    read_project(compose, opts, &vars).map_err(|e| vars.explain(e))
}

fn read_project(
    compose: &str,
    opts: &ParseOptions,
    vars: &Vars,
) -> Result<ComposeProject, ComposeError> {
    let tree: Value =
        serde_saphyr::from_str(compose).map_err(|e| ComposeError::Yaml(e.to_string()))?;
    let root = match tree {
        Value::Object(m) => strip_extensions(m),
        _ => return Err(ComposeError::Yaml("the file is not a mapping".into())),
    };
    let mut name = None;
    let mut services = Map::new();
    let mut networks = BTreeMap::new();
    let mut volumes = BTreeMap::new();
    let mut files = FileObjects::default();
    for (key, value) in root {
        match key.as_str() {
            // Obsolete in the Compose spec and ignored by Compose itself.
            "version" => {}
            "name" => {
                let n: String = read("name", value)?;
                name = Some(vars.s("name", &n)?);
            }
            "services" => services = section("services", value)?,
            "networks" => {
                for (k, v) in section("networks", value)? {
                    let field = format!("networks.{k}");
                    let raw: Option<RawNetwork> = read(&field, v)?;
                    networks.insert(k, network(vars, &field, raw.unwrap_or_default())?);
                }
            }
            "volumes" => {
                for (k, v) in section("volumes", value)? {
                    let field = format!("volumes.{k}");
                    let raw: Option<RawVolume> = read(&field, v)?;
                    volumes.insert(k, volume(vars, &field, raw.unwrap_or_default())?);
                }
            }
            "secrets" | "configs" => {
                for (k, v) in section(&key, value)? {
                    let field = format!("{key}.{k}");
                    let raw: Option<RawFileObject> = read(&field, v)?;
                    let path = file_object(vars, opts, &field, &key, raw.unwrap_or_default())?;
                    if key == "secrets" {
                        files.secrets.insert(k, path);
                    } else {
                        files.configs.insert(k, path);
                    }
                }
            }
            "include" => {
                return Err(invalid(
                    "include",
                    "not supported: it reads other Compose files; merge them into this one",
                ));
            }
            other => {
                return Err(invalid(
                    other,
                    "unknown top-level key (expected services, networks, volumes, secrets, configs, name, version or x-*)",
                ));
            }
        }
    }
    if let Some(n) = &name {
        check_project_name(n)?;
    }
    let project_name = name.clone().or_else(|| opts.project_name.clone());
    extends::resolve(&mut services, opts.files.as_ref(), strip_extensions)?;
    let ctx = Ctx {
        vars,
        project_dir: opts.project_dir.as_deref(),
        project_name: project_name.as_deref(),
        files: &files,
        warnings: RefCell::new(Vec::new()),
    };
    let mut converted = BTreeMap::new();
    for (svc, v) in services {
        let raw = read(&format!("services.{svc}"), v)?;
        let c = service(&ctx, &svc, raw)?;
        converted.insert(svc, c);
    }
    let services = select_profiles(converted, &opts.profiles)?;
    let mut warnings = ctx.vars.warnings();
    warnings.extend(ctx.warnings.into_inner());
    ComposeProject::checked(name, services, networks, volumes, warnings)
}

/// Top-level `secrets` and `configs` with a file source: name → absolute path on the guest.
#[derive(Default)]
pub(super) struct FileObjects {
    pub(super) secrets: BTreeMap<String, String>,
    pub(super) configs: BTreeMap<String, String>,
}

/// What converting a service needs besides the service.
pub(super) struct Ctx<'a> {
    pub(super) vars: &'a Vars<'a>,
    pub(super) project_dir: Option<&'a Path>,
    pub(super) project_name: Option<&'a str>,
    pub(super) files: &'a FileObjects,
    /// Warnings besides unset variables (see `ComposeProject::warnings`).
    pub(super) warnings: RefCell<Vec<String>>,
}

impl Ctx<'_> {
    pub(super) fn warn(&self, w: String) {
        self.warnings.borrow_mut().push(w);
    }

    /// A path as written → an absolute path on the guest. Relative paths resolve against
    /// the project directory and must stay beneath it; absolute paths are kept (the grant
    /// rules judge them).
    pub(super) fn path(&self, field: &str, p: &str) -> Result<String, ComposeError> {
        resolve(self.project_dir, field, p)
    }
}

pub(super) fn resolve(dir: Option<&Path>, field: &str, p: &str) -> Result<String, ComposeError> {
    if p.starts_with('/') {
        return Ok(p.to_string());
    }
    if p.starts_with('~') {
        return Err(invalid(
            field,
            format!(
                "{p:?}: a home directory is not a place on the guest Phoenix can name; write the absolute path"
            ),
        ));
    }
    let Some(dir) = dir else {
        return Err(invalid(
            field,
            format!("{p:?} must be an absolute path (there is no project directory)"),
        ));
    };
    let mut out = dir.to_path_buf();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    if !out.starts_with(dir) {
        return Err(invalid(
            field,
            format!(
                "{p:?} leads out of the project directory {}; write an absolute path (host paths follow the host-access rules)",
                dir.display()
            ),
        ));
    }
    out.to_str()
        .map(str::to_string)
        .ok_or_else(|| invalid(field, format!("{p:?} is not UTF-8")))
}

/// Compose's project-name rule: lowercase letters, digits, `-` and `_`, starting with a
/// letter or digit.
fn check_project_name(n: &str) -> Result<(), ComposeError> {
    let ok = n
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!(
                "{n:?}: a project name is lowercase letters, digits, '-' and '_', starting with a letter or digit"
            ),
        ))
    }
}

/// Keeps the services whose profiles are enabled (or that have none), as Compose does; a
/// kept service that needs a dropped one is an error naming the profile to enable,
/// unless the dependency is `required: false`.
fn select_profiles(
    converted: BTreeMap<String, Converted>,
    enabled: &[String],
) -> Result<BTreeMap<String, super::Service>, ComposeError> {
    let all = enabled.iter().any(|p| p == "*");
    let active = |c: &Converted| {
        c.profiles.is_empty() || all || c.profiles.iter().any(|p| enabled.contains(p))
    };
    let dropped: BTreeMap<&str, &Vec<String>> = converted
        .iter()
        .filter(|(_, c)| !active(c))
        .map(|(n, c)| (n.as_str(), &c.profiles))
        .collect();
    let mut out = BTreeMap::new();
    for (name, c) in &converted {
        if !active(c) {
            continue;
        }
        let mut svc = c.service.clone();
        for dep in c.service.depends_on.keys() {
            if let Some(profiles) = dropped.get(dep.as_str()) {
                if c.optional_deps.contains(dep) {
                    svc.depends_on.remove(dep);
                    continue;
                }
                return Err(invalid(
                    format!("services.{name}.depends_on"),
                    format!(
                        "service {dep:?} is only in profile(s) {} and none is enabled; enable one with the stack's \"profiles\"",
                        profiles.join(", ")
                    ),
                ));
            }
            if c.optional_deps.contains(dep) && !converted.contains_key(dep) {
                svc.depends_on.remove(dep);
            }
        }
        out.insert(name.clone(), svc);
    }
    Ok(out)
}

pub(super) fn labels(
    vars: &Vars,
    field: &str,
    l: Option<super::raw::SeqOrMap<Option<super::raw::Scalar>>>,
) -> Result<BTreeMap<String, String>, ComposeError> {
    let mut out = BTreeMap::new();
    if let Some(l) = l {
        for (k, v) in vars.pairs(field, l)? {
            out.insert(k, v.unwrap_or_default());
        }
    }
    Ok(out)
}

fn network(vars: &Vars, field: &str, def: RawNetwork) -> Result<NetworkDef, ComposeError> {
    let driver = vars.opt(field, def.driver)?;
    if let Some(d) = driver.as_deref()
        && d == "overlay"
    {
        return Err(invalid(
            format!("{field}.driver"),
            "overlay networks need a swarm; a stack on one engine uses bridge (the default)",
        ));
    }
    let ipam = match def.ipam {
        None => None,
        Some(i) => {
            let mut config = Vec::new();
            for p in i.config {
                config.push(IpamPool {
                    subnet: vars.opt(field, p.subnet)?,
                    ip_range: vars.opt(field, p.ip_range)?,
                    gateway: vars.opt(field, p.gateway)?,
                    aux_addresses: p
                        .aux_addresses
                        .into_iter()
                        .map(|(k, v)| Ok((k, vars.s(field, &v)?)))
                        .collect::<Result<_, ComposeError>>()?,
                });
            }
            Some(Ipam {
                driver: vars.opt(field, i.driver)?,
                config,
                options: vars.map(field, i.options)?,
            })
        }
    };
    Ok(NetworkDef {
        external: def.external.unwrap_or(false),
        name: vars.opt(field, def.name)?,
        driver,
        driver_opts: vars.map(field, def.driver_opts)?,
        internal: def.internal.unwrap_or(false),
        attachable: def.attachable.unwrap_or(false),
        enable_ipv6: def.enable_ipv6.unwrap_or(false),
        ipam,
        labels: labels(vars, &format!("{field}.labels"), def.labels)?,
    })
}

fn volume(vars: &Vars, field: &str, def: RawVolume) -> Result<VolumeDef, ComposeError> {
    Ok(VolumeDef {
        external: def.external.unwrap_or(false),
        name: vars.opt(field, def.name)?,
        driver: vars.opt(field, def.driver)?,
        driver_opts: vars.map(field, def.driver_opts)?,
        labels: labels(vars, &format!("{field}.labels"), def.labels)?,
    })
}

/// A top-level secret or config → the absolute path of its file on the guest. Only file
/// sources: the content stays on the guest and is mounted by reference.
fn file_object(
    vars: &Vars,
    opts: &ParseOptions,
    field: &str,
    kind: &str,
    def: RawFileObject,
) -> Result<String, ComposeError> {
    if def.external.unwrap_or(false) {
        return Err(invalid(
            format!("{field}.external"),
            format!(
                "external {kind} live in a swarm; on one engine give `file:` (a file on the guest)"
            ),
        ));
    }
    if def.environment.is_some() {
        return Err(invalid(
            format!("{field}.environment"),
            format!(
                "{kind} from an environment variable are not supported; give `file:` (a file on the guest)"
            ),
        ));
    }
    if def.content.is_some() {
        return Err(invalid(
            format!("{field}.content"),
            format!(
                "inline {kind} content is not supported; give `file:` (a file shipped with the stack)"
            ),
        ));
    }
    let Some(file) = def.file else {
        return Err(invalid(field, "needs `file:`"));
    };
    let file = vars.s(field, &file)?;
    resolve(opts.project_dir.as_deref(), &format!("{field}.file"), &file)
}
