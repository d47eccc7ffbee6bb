//! The Compose subset Phoenix accepts, parsed and validated without touching the host.
//!
//! Every key outside the subset is an error that names it (serde `deny_unknown_fields`),
//! never silently dropped. `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$VAR` and `$$`
//! are interpolated in string values from the stack environment's variables only (never
//! from the agent's process environment), so the same input renders the same containers
//! on every guest. An unset variable without a default is an error, not an empty string.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("parse compose file: {0}")]
    Yaml(String),
    #[error("compose {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("compose {field}: variable {var} is not set and has no default")]
    UnsetVariable { field: String, var: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ComposeError {
    ComposeError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------
// The validated model. Maps are BTreeMaps so the serialized form (and the config hash
// built from it) does not depend on key order in the file.

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComposeProject {
    pub services: BTreeMap<String, Service>,
    pub networks: BTreeMap<String, NetworkDef>,
    pub volumes: BTreeMap<String, VolumeDef>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub image: String,
    pub container_name: Option<String>,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    /// Absolute paths; their content is merged under `environment` when the stack renders.
    pub env_files: Vec<String>,
    pub ports: Vec<Port>,
    pub volumes: Vec<Mount>,
    /// Network key (as declared under top-level `networks`) → aliases.
    pub networks: BTreeMap<String, Vec<String>>,
    pub restart: Option<String>,
    pub healthcheck: Option<Healthcheck>,
    pub depends_on: BTreeMap<String, Condition>,
    pub labels: BTreeMap<String, String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub hostname: Option<String>,
    pub devices: Vec<String>,
    pub gpus: Vec<DeviceRequest>,
    pub cap_add: Vec<String>,
    pub ulimits: BTreeMap<String, Ulimit>,
    pub extra_hosts: Vec<String>,
    pub logging: Option<Logging>,
    pub init: Option<bool>,
    pub dns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    pub host_ip: Option<String>,
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    /// A named volume declared under top-level `volumes`.
    Volume,
    /// A host path.
    Bind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub kind: MountKind,
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// Durations are nanoseconds, as the Engine API wants them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    /// `["NONE"]` when `disable: true`.
    pub test: Vec<String>,
    pub interval: Option<i64>,
    pub timeout: Option<i64>,
    pub start_period: Option<i64>,
    pub retries: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRequest {
    pub driver: Option<String>,
    /// -1 means all devices.
    pub count: Option<i64>,
    pub device_ids: Vec<String>,
    pub capabilities: Vec<String>,
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Logging {
    pub driver: Option<String>,
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkDef {
    pub external: bool,
    /// Engine-side name when set explicitly; otherwise `<stack>_<key>`.
    pub name: Option<String>,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub internal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeDef {
    pub external: bool,
    pub name: Option<String>,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
}

/// The network every service without a `networks` key joins, as in Compose.
pub const DEFAULT_NETWORK: &str = "default";

impl ComposeProject {
    /// Services in an order where every service comes after what it depends on
    /// (ties broken by name, so the order is stable).
    pub fn start_order(&self) -> Vec<&str> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut order = Vec::with_capacity(self.services.len());
        while order.len() < self.services.len() {
            let before = order.len();
            for (name, svc) in &self.services {
                if !done.contains(name.as_str())
                    && svc.depends_on.keys().all(|d| done.contains(d.as_str()))
                {
                    done.insert(name);
                    order.push(name.as_str());
                }
            }
            // `parse` rejects cycles; this only guards against looping forever.
            if order.len() == before {
                break;
            }
        }
        order
    }
}

// ---------------------------------------------------------------------------------------
// Parsing.

/// Parses and validates a Compose file, interpolating from `variables`. Pure: reads no
/// files (env_file contents are merged at render time) and talks to no engine, so the
/// coordinator can check stacks offline with the same function.
pub fn parse(
    compose: &str,
    variables: &BTreeMap<String, String>,
) -> Result<ComposeProject, ComposeError> {
    let raw: RawProject =
        serde_saphyr::from_str(compose).map_err(|e| ComposeError::Yaml(e.to_string()))?;
    let vars = Vars(variables);
    if raw.services.is_empty() {
        return Err(invalid("services", "no services defined"));
    }

    let mut networks = BTreeMap::new();
    for (key, def) in raw.networks {
        check_key("networks", &key)?;
        let def = def.unwrap_or_default();
        let field = format!("networks.{key}");
        networks.insert(
            key,
            NetworkDef {
                external: def.external.unwrap_or(false),
                name: vars.opt(&field, def.name)?,
                driver: vars.opt(&field, def.driver)?,
                driver_opts: vars.map(&field, def.driver_opts)?,
                internal: def.internal.unwrap_or(false),
            },
        );
    }
    let mut volumes = BTreeMap::new();
    for (key, def) in raw.volumes {
        check_key("volumes", &key)?;
        let def = def.unwrap_or_default();
        let field = format!("volumes.{key}");
        volumes.insert(
            key,
            VolumeDef {
                external: def.external.unwrap_or(false),
                name: vars.opt(&field, def.name)?,
                driver: vars.opt(&field, def.driver)?,
                driver_opts: vars.map(&field, def.driver_opts)?,
            },
        );
    }

    let mut services = BTreeMap::new();
    for (name, raw) in raw.services {
        check_key("services", &name)?;
        let svc = service(&vars, &name, raw, &volumes)?;
        services.insert(name, svc);
    }
    let uses_default = services.values().any(|s| s.networks.is_empty());
    if uses_default && !networks.contains_key(DEFAULT_NETWORK) {
        networks.insert(
            DEFAULT_NETWORK.to_string(),
            NetworkDef {
                external: false,
                name: None,
                driver: None,
                driver_opts: BTreeMap::new(),
                internal: false,
            },
        );
    }
    let project = ComposeProject {
        services,
        networks,
        volumes,
    };
    check_references(&project)?;
    Ok(project)
}

fn check_key(section: &str, key: &str) -> Result<(), ComposeError> {
    let ok = key
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("{section}.{key}"),
            "name may only contain letters, digits, '-', '_' and '.', starting with a letter or digit",
        ))
    }
}

fn check_references(p: &ComposeProject) -> Result<(), ComposeError> {
    let mut container_names = BTreeSet::new();
    for (name, svc) in &p.services {
        let field = format!("services.{name}");
        for net in svc.networks.keys() {
            if !p.networks.contains_key(net) {
                return Err(invalid(
                    format!("{field}.networks"),
                    format!("network {net:?} is not declared under top-level networks"),
                ));
            }
        }
        for dep in svc.depends_on.keys() {
            if !p.services.contains_key(dep) {
                return Err(invalid(
                    format!("{field}.depends_on"),
                    format!("unknown service {dep:?}"),
                ));
            }
        }
        if let Some(cn) = &svc.container_name
            && !container_names.insert(cn.clone())
        {
            return Err(invalid(
                format!("{field}.container_name"),
                format!("{cn:?} is used by two services"),
            ));
        }
    }
    if p.start_order().len() != p.services.len() {
        return Err(invalid("depends_on", "dependency cycle between services"));
    }
    Ok(())
}

fn service(
    vars: &Vars,
    name: &str,
    raw: RawService,
    volumes: &BTreeMap<String, VolumeDef>,
) -> Result<Service, ComposeError> {
    let f = |k: &str| format!("services.{name}.{k}");
    let image = match raw.image {
        Some(i) => vars.s(&f("image"), &i)?,
        None => return Err(invalid(f("image"), "required (build is not supported)")),
    };
    if image.trim().is_empty() {
        return Err(invalid(f("image"), "empty"));
    }

    let mut environment = BTreeMap::new();
    if let Some(env) = raw.environment {
        for (k, v) in vars.pairs(&f("environment"), env)? {
            // `FOO` without a value takes the stack variable of that name (Compose takes
            // the shell's; the agent's process environment is never used).
            let v = match v {
                Some(v) => v,
                None => vars.0.get(&k).cloned().ok_or(ComposeError::UnsetVariable {
                    field: f("environment"),
                    var: k.clone(),
                })?,
            };
            environment.insert(k, v);
        }
    }
    let mut env_files = Vec::new();
    for p in raw.env_file.map(StrOrList::into_vec).unwrap_or_default() {
        let p = vars.s(&f("env_file"), &p)?;
        if !p.starts_with('/') {
            return Err(invalid(
                f("env_file"),
                format!("{p:?} must be an absolute path (there is no project directory)"),
            ));
        }
        env_files.push(p);
    }

    let mut ports = Vec::new();
    for p in raw.ports.unwrap_or_default() {
        let p = vars.s(&f("ports"), &p.into_string())?;
        ports.push(parse_port(&p).map_err(|m| invalid(f("ports"), m))?);
    }

    let mut mounts = Vec::new();
    for v in raw.volumes.unwrap_or_default() {
        let m = match v {
            StrOr::Str(s) => parse_short_volume(&vars.s(&f("volumes"), &s)?),
            StrOr::Other(l) => long_volume(vars, &f("volumes"), l)?,
        }
        .map_err(|m| invalid(f("volumes"), m))?;
        if m.kind == MountKind::Volume && !volumes.contains_key(&m.source) {
            return Err(invalid(
                f("volumes"),
                format!(
                    "volume {:?} is not declared under top-level volumes",
                    m.source
                ),
            ));
        }
        mounts.push(m);
    }

    let mut networks = BTreeMap::new();
    match raw.networks {
        None => {}
        Some(SeqOrMap::Seq(list)) => {
            for n in list {
                networks.insert(vars.s(&f("networks"), &n)?, Vec::new());
            }
        }
        Some(SeqOrMap::Map(map)) => {
            for (n, cfg) in map {
                let aliases = cfg.map(|c| c.aliases).unwrap_or_default();
                let aliases = aliases
                    .iter()
                    .map(|a| vars.s(&f("networks"), a))
                    .collect::<Result<_, _>>()?;
                networks.insert(n, aliases);
            }
        }
    }

    let restart = match raw.restart {
        None => None,
        Some(Scalar::Bool(false)) => Some("no".to_string()),
        Some(s) => {
            let r = vars.s(&f("restart"), &s.into_string())?;
            let ok = matches!(
                r.as_str(),
                "no" | "always" | "unless-stopped" | "on-failure"
            ) || r
                .strip_prefix("on-failure:")
                .is_some_and(|n| n.parse::<u32>().is_ok());
            if !ok {
                return Err(invalid(
                    f("restart"),
                    format!("{r:?} is not one of no, always, unless-stopped, on-failure[:N]"),
                ));
            }
            Some(r)
        }
    };

    let healthcheck = match raw.healthcheck {
        None => None,
        Some(h) => Some(healthcheck(vars, &f("healthcheck"), h)?),
    };

    let mut depends_on = BTreeMap::new();
    match raw.depends_on {
        None => {}
        Some(SeqOrMap::Seq(list)) => {
            for d in list {
                depends_on.insert(d, Condition::ServiceStarted);
            }
        }
        Some(SeqOrMap::Map(map)) => {
            for (d, cfg) in map {
                let cond = match cfg.and_then(|c| c.condition).as_deref() {
                    None | Some("service_started") => Condition::ServiceStarted,
                    Some("service_healthy") => Condition::ServiceHealthy,
                    Some("service_completed_successfully") => {
                        Condition::ServiceCompletedSuccessfully
                    }
                    Some(other) => {
                        return Err(invalid(
                            f("depends_on"),
                            format!("unknown condition {other:?}"),
                        ));
                    }
                };
                depends_on.insert(d, cond);
            }
        }
    }
    if depends_on.contains_key(name) {
        return Err(invalid(
            f("depends_on"),
            "a service cannot depend on itself",
        ));
    }

    let mut labels = BTreeMap::new();
    if let Some(l) = raw.labels {
        for (k, v) in vars.pairs(&f("labels"), l)? {
            if k.starts_with(super::LABEL_PREFIX) {
                return Err(invalid(
                    f("labels"),
                    format!("{k:?}: the {} prefix is reserved", super::LABEL_PREFIX),
                ));
            }
            labels.insert(k, v.unwrap_or_default());
        }
    }

    let mut gpus = Vec::new();
    if let Some(deploy) = raw.deploy {
        let devices = deploy
            .resources
            .and_then(|r| r.reservations)
            .map(|r| r.devices)
            .unwrap_or_default();
        for d in devices {
            gpus.push(device_request(vars, &f("deploy"), d)?);
        }
    }

    let mut ulimits = BTreeMap::new();
    for (k, v) in raw.ulimits.unwrap_or_default() {
        let u = match v {
            RawUlimit::Single(n) => Ulimit { soft: n, hard: n },
            RawUlimit::Pair { soft, hard } => Ulimit { soft, hard },
        };
        ulimits.insert(k, u);
    }

    let mut extra_hosts = Vec::new();
    if let Some(h) = raw.extra_hosts {
        for (host, ip) in vars.pairs_sep(&f("extra_hosts"), h, ':')? {
            let ip =
                ip.ok_or_else(|| invalid(f("extra_hosts"), format!("{host:?} has no address")))?;
            extra_hosts.push(format!("{host}:{ip}"));
        }
    }

    let logging = match raw.logging {
        None => None,
        Some(l) => Some(Logging {
            driver: vars.opt(&f("logging"), l.driver)?,
            options: vars.map(&f("logging"), l.options)?,
        }),
    };

    Ok(Service {
        image,
        container_name: vars.opt(&f("container_name"), raw.container_name)?,
        command: raw
            .command
            .map(|c| words(vars, &f("command"), c))
            .transpose()?,
        entrypoint: raw
            .entrypoint
            .map(|c| words(vars, &f("entrypoint"), c))
            .transpose()?,
        environment,
        env_files,
        ports,
        volumes: mounts,
        networks,
        restart,
        healthcheck,
        depends_on,
        labels,
        user: raw
            .user
            .map(|u| vars.s(&f("user"), &u.into_string()))
            .transpose()?,
        working_dir: vars.opt(&f("working_dir"), raw.working_dir)?,
        hostname: vars.opt(&f("hostname"), raw.hostname)?,
        devices: vars.list(&f("devices"), raw.devices.unwrap_or_default())?,
        gpus,
        cap_add: vars.list(&f("cap_add"), raw.cap_add.unwrap_or_default())?,
        ulimits,
        extra_hosts,
        logging,
        init: raw.init,
        dns: vars.list(
            &f("dns"),
            raw.dns.map(StrOrList::into_vec).unwrap_or_default(),
        )?,
    })
}

fn words(vars: &Vars, field: &str, c: StrOrList) -> Result<Vec<String>, ComposeError> {
    match c {
        StrOrList::Str(s) => {
            let s = vars.s(field, &s)?;
            shell_words(&s).map_err(|m| invalid(field, m))
        }
        StrOrList::List(l) => vars.list(field, l),
    }
}

/// Splits like a POSIX shell would (quotes and backslashes), without expanding anything:
/// Compose runs a string `command` as these words, not through `sh -c`.
fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `[ip:][host:]container[/proto]`, single ports only.
fn parse_port(s: &str) -> Result<Port, String> {
    let (addr, protocol) = match s.rsplit_once('/') {
        Some((a, p)) if matches!(p, "tcp" | "udp" | "sctp") => (a, p.to_string()),
        Some((_, p)) => return Err(format!("{s:?}: unknown protocol {p:?}")),
        None => (s, "tcp".to_string()),
    };
    let num = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{s:?}: {p:?} is not a port number (ranges are not supported)"))
    };
    let parts: Vec<&str> = addr.rsplitn(3, ':').collect();
    let (host_ip, host_port, container) = match parts.as_slice() {
        [c] => (None, None, num(c)?),
        [c, h] => (None, Some(num(h)?), num(c)?),
        [c, h, ip] => {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            let host = if h.is_empty() { None } else { Some(num(h)?) };
            (Some(ip.to_string()), host, num(c)?)
        }
        _ => return Err(format!("{s:?}: not a port mapping")),
    };
    Ok(Port {
        host_ip,
        host_port,
        container_port: container,
        protocol,
    })
}

fn is_bind_source(s: &str) -> bool {
    s.starts_with('/') || s.starts_with('.') || s.starts_with('~')
}

fn mount(source: &str, target: &str, read_only: bool) -> Result<Mount, String> {
    if !target.starts_with('/') {
        return Err(format!("target {target:?} must be an absolute path"));
    }
    let kind = if is_bind_source(source) {
        if !source.starts_with('/') {
            return Err(format!(
                "bind source {source:?} must be an absolute path (there is no project directory)"
            ));
        }
        MountKind::Bind
    } else {
        MountKind::Volume
    };
    Ok(Mount {
        kind,
        source: source.to_string(),
        target: target.to_string(),
        read_only,
    })
}

fn parse_short_volume(s: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [_] => Err(format!(
            "{s:?}: anonymous volumes are not supported (they are lost on recreate); name the volume"
        )),
        [src, dst] => mount(src, dst, false),
        [src, dst, mode] => {
            let mut ro = false;
            for m in mode.split(',') {
                match m {
                    "ro" => ro = true,
                    "rw" => ro = false,
                    "z" | "Z" | "cached" | "delegated" | "consistent" => {}
                    other => return Err(format!("{s:?}: unknown volume option {other:?}")),
                }
            }
            mount(src, dst, ro)
        }
        _ => Err(format!("{s:?}: not a volume mapping")),
    }
}

fn long_volume(
    vars: &Vars,
    field: &str,
    l: RawLongVolume,
) -> Result<Result<Mount, String>, ComposeError> {
    let source = vars.s(field, &l.source)?;
    let target = vars.s(field, &l.target)?;
    let m = mount(&source, &target, l.read_only.unwrap_or(false));
    Ok(match (l.kind.as_str(), m) {
        ("volume", Ok(m)) if m.kind == MountKind::Volume => Ok(m),
        ("bind", Ok(m)) if m.kind == MountKind::Bind => Ok(m),
        ("volume" | "bind", Ok(_)) => Err(format!(
            "type {:?} does not match source {source:?}",
            l.kind
        )),
        (_, Err(e)) => Err(e),
        (other, _) => Err(format!("volume type {other:?} is not supported")),
    })
}

fn healthcheck(vars: &Vars, field: &str, h: RawHealthcheck) -> Result<Healthcheck, ComposeError> {
    let dur = |k: &str, v: Option<String>| -> Result<Option<i64>, ComposeError> {
        v.map(|v| {
            let v = vars.s(field, &v)?;
            parse_duration(&v)
                .ok_or_else(|| invalid(format!("{field}.{k}"), format!("{v:?} is not a duration")))
        })
        .transpose()
    };
    let test = if h.disable.unwrap_or(false) {
        vec!["NONE".to_string()]
    } else {
        match h.test {
            None => return Err(invalid(field, "test is required unless disable: true")),
            Some(StrOrList::Str(s)) => vec!["CMD-SHELL".to_string(), vars.s(field, &s)?],
            Some(StrOrList::List(l)) => {
                let l = vars.list(field, l)?;
                match l.first().map(String::as_str) {
                    Some("CMD" | "CMD-SHELL" | "NONE") => l,
                    _ => {
                        return Err(invalid(
                            format!("{field}.test"),
                            "a list must start with CMD, CMD-SHELL or NONE",
                        ));
                    }
                }
            }
        }
    };
    Ok(Healthcheck {
        test,
        interval: dur("interval", h.interval)?,
        timeout: dur("timeout", h.timeout)?,
        start_period: dur("start_period", h.start_period)?,
        retries: h.retries.map(i64::from),
    })
}

/// Go-style durations as Compose writes them: `1h2m3s`, `500ms`, `1.5s`, `10us`.
fn parse_duration(s: &str) -> Option<i64> {
    let mut total: f64 = 0.0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += n * mult;
    }
    Some(total as i64)
}

fn device_request(
    vars: &Vars,
    field: &str,
    d: RawDeviceRequest,
) -> Result<DeviceRequest, ComposeError> {
    let count = match d.count {
        None => None,
        Some(Scalar::Int(n)) => Some(n),
        Some(Scalar::Str(s)) if vars.s(field, &s)? == "all" => Some(-1),
        Some(other) => {
            return Err(invalid(
                format!("{field}.resources.reservations.devices.count"),
                format!("{:?} is neither a number nor \"all\"", other.into_string()),
            ));
        }
    };
    Ok(DeviceRequest {
        driver: vars.opt(field, d.driver)?,
        count,
        device_ids: vars.list(field, d.device_ids.unwrap_or_default())?,
        capabilities: vars.list(field, d.capabilities.unwrap_or_default())?,
        options: vars.map(field, d.options)?,
    })
}

// ---------------------------------------------------------------------------------------
// Interpolation.

struct Vars<'a>(&'a BTreeMap<String, String>);

impl Vars<'_> {
    fn s(&self, field: &str, input: &str) -> Result<String, ComposeError> {
        interpolate(input, self.0).map_err(|e| match e {
            Interp::Unset(var) => ComposeError::UnsetVariable {
                field: field.to_string(),
                var,
            },
            Interp::Syntax(m) => invalid(field, m),
        })
    }

    fn opt(&self, field: &str, v: Option<String>) -> Result<Option<String>, ComposeError> {
        v.map(|v| self.s(field, &v)).transpose()
    }

    fn list(&self, field: &str, v: Vec<String>) -> Result<Vec<String>, ComposeError> {
        v.iter().map(|x| self.s(field, x)).collect()
    }

    fn map(
        &self,
        field: &str,
        m: BTreeMap<String, Scalar>,
    ) -> Result<BTreeMap<String, String>, ComposeError> {
        m.into_iter()
            .map(|(k, v)| Ok((k, self.s(field, &v.into_string())?)))
            .collect()
    }

    fn pairs(
        &self,
        field: &str,
        v: SeqOrMap<Option<Scalar>>,
    ) -> Result<Vec<(String, Option<String>)>, ComposeError> {
        self.pairs_sep(field, v, '=')
    }

    /// A list of `key<sep>value` strings or a map; interpolates values (and list items).
    fn pairs_sep(
        &self,
        field: &str,
        v: SeqOrMap<Option<Scalar>>,
        sep: char,
    ) -> Result<Vec<(String, Option<String>)>, ComposeError> {
        let mut out = Vec::new();
        match v {
            SeqOrMap::Seq(list) => {
                for item in list {
                    let item = self.s(field, &item)?;
                    match item.split_once(sep) {
                        Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
                        None => out.push((item, None)),
                    }
                }
            }
            SeqOrMap::Map(map) => {
                for (k, v) in map {
                    let v = v.map(|v| self.s(field, &v.into_string())).transpose()?;
                    out.push((k, v));
                }
            }
        }
        Ok(out)
    }
}

#[derive(Debug, PartialEq)]
enum Interp {
    Unset(String),
    Syntax(String),
}

fn is_var_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn interpolate(input: &str, vars: &BTreeMap<String, String>) -> Result<String, Interp> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| Interp::Syntax(format!("unterminated ${{ in {input:?}")))?;
            let expr = &r[..end];
            rest = &r[end + 1..];
            let name_end = expr.find(|c| !is_var_char(c)).unwrap_or(expr.len());
            let (name, op) = expr.split_at(name_end);
            if name.is_empty() {
                return Err(Interp::Syntax(format!("empty variable name in {input:?}")));
            }
            let value = vars.get(name);
            let v = if op.is_empty() {
                value
                    .cloned()
                    .ok_or_else(|| Interp::Unset(name.to_string()))?
            } else if let Some(default) = op.strip_prefix(":-") {
                match value {
                    Some(v) if !v.is_empty() => v.clone(),
                    _ => interpolate(default, vars)?,
                }
            } else if let Some(default) = op.strip_prefix('-') {
                match value {
                    Some(v) => v.clone(),
                    None => interpolate(default, vars)?,
                }
            } else {
                return Err(Interp::Syntax(format!(
                    "unsupported interpolation ${{{expr}}} (only ${{VAR}}, ${{VAR:-default}} and ${{VAR-default}})"
                )));
            };
            out.push_str(&v);
        } else {
            let name_end = rest.find(|c| !is_var_char(c)).unwrap_or(rest.len());
            if name_end == 0 {
                return Err(Interp::Syntax(format!(
                    "lone $ in {input:?} (write $$ for a literal $)"
                )));
            }
            let name = &rest[..name_end];
            out.push_str(
                vars.get(name)
                    .ok_or_else(|| Interp::Unset(name.to_string()))?,
            );
            rest = &rest[name_end..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The raw file shape. `deny_unknown_fields` everywhere: an unsupported key fails the parse
// with serde's "unknown field `x`, expected one of …", which names it.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    /// Obsolete in the Compose spec and ignored by Compose itself; accepted for old files.
    #[serde(default, rename = "version")]
    _version: Option<de::IgnoredAny>,
    services: BTreeMap<String, RawService>,
    #[serde(default)]
    networks: BTreeMap<String, Option<RawNetwork>>,
    #[serde(default)]
    volumes: BTreeMap<String, Option<RawVolume>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    driver: Option<String>,
    #[serde(default)]
    driver_opts: BTreeMap<String, Scalar>,
    external: Option<bool>,
    name: Option<String>,
    internal: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    driver: Option<String>,
    #[serde(default)]
    driver_opts: BTreeMap<String, Scalar>,
    external: Option<bool>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    image: Option<String>,
    container_name: Option<String>,
    command: Option<StrOrList>,
    entrypoint: Option<StrOrList>,
    environment: Option<SeqOrMap<Option<Scalar>>>,
    env_file: Option<StrOrList>,
    ports: Option<Vec<Scalar>>,
    volumes: Option<Vec<StrOr<RawLongVolume>>>,
    networks: Option<SeqOrMap<Option<RawServiceNetwork>>>,
    restart: Option<Scalar>,
    healthcheck: Option<RawHealthcheck>,
    depends_on: Option<SeqOrMap<Option<RawDependsOn>>>,
    labels: Option<SeqOrMap<Option<Scalar>>>,
    user: Option<Scalar>,
    working_dir: Option<String>,
    hostname: Option<String>,
    devices: Option<Vec<String>>,
    deploy: Option<RawDeploy>,
    cap_add: Option<Vec<String>>,
    ulimits: Option<BTreeMap<String, RawUlimit>>,
    extra_hosts: Option<SeqOrMap<Option<Scalar>>>,
    logging: Option<RawLogging>,
    init: Option<bool>,
    dns: Option<StrOrList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLongVolume {
    #[serde(rename = "type")]
    kind: String,
    source: String,
    target: String,
    read_only: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServiceNetwork {
    #[serde(default)]
    aliases: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDependsOn {
    condition: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthcheck {
    test: Option<StrOrList>,
    interval: Option<String>,
    timeout: Option<String>,
    start_period: Option<String>,
    retries: Option<u32>,
    disable: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeploy {
    resources: Option<RawResources>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    reservations: Option<RawReservations>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReservations {
    #[serde(default)]
    devices: Vec<RawDeviceRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeviceRequest {
    driver: Option<String>,
    count: Option<Scalar>,
    device_ids: Option<Vec<String>>,
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    options: BTreeMap<String, Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    driver: Option<String>,
    #[serde(default)]
    options: BTreeMap<String, Scalar>,
}

/// A YAML scalar where Compose accepts numbers and booleans as well as strings.
#[derive(Debug, Clone)]
enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::Str(s) => s,
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                i64::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom("number too large"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
        }
        d.deserialize_any(V)
    }
}

enum StrOrList {
    Str(String),
    List(Vec<String>),
}

impl StrOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StrOrList::Str(s) => vec![s],
            StrOrList::List(l) => l,
        }
    }
}

impl<'de> Deserialize<'de> for StrOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrOrList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOrList, E> {
                Ok(StrOrList::Str(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<StrOrList, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(StrOrList::List)
            }
        }
        d.deserialize_any(V)
    }
}

/// A short-syntax string or a long-syntax mapping; the mapping keeps its own
/// unknown-key errors (an untagged enum would hide them).
enum StrOr<T> {
    Str(String),
    Other(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for StrOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = StrOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a mapping")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOr<T>, E> {
                Ok(StrOr::Str(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StrOr<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(StrOr::Other)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Compose's "list or dictionary" fields.
enum SeqOrMap<V> {
    Seq(Vec<String>),
    Map(BTreeMap<String, V>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for SeqOrMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = SeqOrMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list or a mapping")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<SeqOrMap<T>, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(SeqOrMap::Seq)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SeqOrMap<T>, A::Error> {
                BTreeMap::deserialize(de::value::MapAccessDeserializer::new(map)).map(SeqOrMap::Map)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

enum RawUlimit {
    Single(i64),
    Pair { soft: i64, hard: i64 },
}

impl<'de> Deserialize<'de> for RawUlimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Pair {
            soft: i64,
            hard: i64,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawUlimit;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or {soft, hard}")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawUlimit, E> {
                Ok(RawUlimit::Single(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawUlimit, E> {
                i64::try_from(v)
                    .map(RawUlimit::Single)
                    .map_err(|_| E::custom("number too large"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawUlimit, A::Error> {
                let p = Pair::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawUlimit::Pair {
                    soft: p.soft,
                    hard: p.hard,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests;
