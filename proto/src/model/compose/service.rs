//! One raw service → the typed [`Service`]: interpolation, Compose's alternative forms
//! (list or map, short or long syntax), paths resolved on the guest, and the keys Phoenix
//! refuses named with their reason.

use super::interpolate::Vars;
use super::parse::{Ctx, labels};
use super::raw::{
    OneOrList, RawFileRef, RawHealthcheck, RawLongPort, RawLongVolume, RawService, RawUlimit,
    Scalar, SeqOrMap, StrOr, StrOrList,
};
use super::resources::{build, deploy};
use super::syntax::{
    mount, parse_bytes, parse_duration, parse_expose, parse_port, parse_short_volume, ports,
    shell_words,
};
use super::types::{Addresses, Condition, Healthcheck, Logging, Mount, MountKind, Service, Ulimit};
use super::{ComposeError, ImageRef, MAX_REPLICAS, invalid};
use std::collections::{BTreeMap, BTreeSet};

/// A converted service and what profile selection needs to know about it.
pub(super) struct Converted {
    pub(super) service: Service,
    pub(super) profiles: Vec<String>,
    /// Dependencies marked `required: false`: dropped when their service is absent.
    pub(super) optional_deps: BTreeSet<String>,
}

/// Service keys Compose defines that Phoenix refuses, and why.
fn refused(raw: &RawService) -> Option<(&'static str, &'static str)> {
    [
        (
            "privileged",
            raw.privileged.is_some(),
            "hands the container every device and capability of the guest; not supported",
        ),
        (
            "pid",
            raw.pid.is_some(),
            "shares a process namespace with the guest or another container; not supported",
        ),
        (
            "ipc",
            raw.ipc.is_some(),
            "shares an IPC namespace with the guest or another container; not supported",
        ),
        (
            "userns_mode",
            raw.userns_mode.is_some(),
            "leaves the engine's user-namespace setting; not supported",
        ),
        (
            "cgroup_parent",
            raw.cgroup_parent.is_some(),
            "places the container outside the engine's cgroup tree; not supported",
        ),
        (
            "runtime",
            raw.runtime.is_some(),
            "selects an engine runtime by name; for GPUs use deploy.resources.reservations.devices",
        ),
        (
            "volumes_from",
            raw.volumes_from.is_some(),
            "mounts another container's volumes; name the volumes instead",
        ),
        (
            "links",
            raw.links.is_some(),
            "legacy links; services on a shared network already reach each other by service name",
        ),
        (
            "external_links",
            raw.external_links.is_some(),
            "links to containers outside the stack; join an external network instead",
        ),
    ]
    .into_iter()
    .find(|(_, present, _)| *present)
    .map(|(k, _, why)| (k, why))
}

pub(super) fn service(ctx: &Ctx, name: &str, raw: RawService) -> Result<Converted, ComposeError> {
    let vars = ctx.vars;
    let f = |k: &str| format!("services.{name}.{k}");
    if let Some((key, why)) = refused(&raw) {
        return Err(invalid(f(key), why));
    }

    let build = raw.build.map(|b| build(ctx, &f("build"), b)).transpose()?;
    let image = match (raw.image, &build) {
        (Some(i), _) => vars.s(&f("image"), &i)?,
        // Compose names a built image `<project>-<service>`.
        (None, Some(_)) => match ctx.project_name {
            Some(p) => format!("{p}-{name}").to_ascii_lowercase(),
            None => {
                return Err(invalid(
                    f("image"),
                    "a build without `image` is named after the project; set `image:` or a top-level `name`",
                ));
            }
        },
        (None, None) => return Err(invalid(f("image"), "required (or `build`)")),
    };
    let image = ImageRef::try_from(image).map_err(|e| invalid(f("image"), e.to_string()))?;
    let platform = vars.opt(&f("platform"), raw.platform)?;
    if let Some(p) = &platform {
        super::resources::check_platform(&f("platform"), p)?;
        // Compose's rule: a service built for several platforms runs one of them.
        if let Some(b) = &build
            && !b.platforms.is_empty()
            && !b.platforms.contains(p)
        {
            return Err(invalid(
                f("platform"),
                format!(
                    "{p:?} is not one of build.platforms ({})",
                    b.platforms.join(", ")
                ),
            ));
        }
    }

    let mut environment = BTreeMap::new();
    if let Some(env) = raw.environment {
        for (k, v) in vars.pairs(&f("environment"), env)? {
            // `FOO` without a value takes the stack variable of that name (Compose takes
            // the shell's; the agent's process environment is never used). Without one
            // it is not set in the container, as in Compose, and the parser says so.
            let v = match v {
                Some(v) => v,
                None => match vars.get(&k) {
                    Some(v) => v.clone(),
                    None => {
                        ctx.warn(format!(
                            "{}: {k} has no value and no stack variable of that name; it is not set in the container",
                            f("environment")
                        ));
                        continue;
                    }
                },
            };
            environment.insert(k, v);
        }
    }
    let mut env_files = Vec::new();
    let mut optional_env_files = Vec::new();
    let entries = match raw.env_file {
        None => Vec::new(),
        Some(OneOrList::One(p)) => vec![(p, true)],
        Some(OneOrList::List(l)) => l
            .into_iter()
            .map(|e| match e {
                StrOr::Str(p) => Ok((p, true)),
                StrOr::Other(e) if e.format.is_some() => Err(invalid(
                    f("env_file"),
                    format!("{:?}: `format` is not supported", e.path),
                )),
                StrOr::Other(e) => Ok((e.path, e.required.unwrap_or(true))),
            })
            .collect::<Result<_, _>>()?,
    };
    for (p, required) in entries {
        let p = ctx.path(&f("env_file"), &vars.s(&f("env_file"), &p)?)?;
        if required {
            env_files.push(p);
        } else {
            optional_env_files.push(p);
        }
    }

    let mut port_list = Vec::new();
    for p in raw.ports.unwrap_or_default() {
        match p {
            StrOr::Str(s) => {
                let s = vars.s(&f("ports"), &s)?;
                port_list.extend(parse_port(&s).map_err(|m| invalid(f("ports"), m))?);
            }
            StrOr::Other(l) => port_list.extend(long_port(vars, &f("ports"), l)?),
        }
    }
    let mut expose = Vec::new();
    for e in raw.expose.unwrap_or_default() {
        let e = vars.s(&f("expose"), &e.into_string())?;
        expose.extend(parse_expose(&e).map_err(|m| invalid(f("expose"), m))?);
    }

    let mut mounts = Vec::new();
    let mut tmpfs = Vec::new();
    for v in raw.volumes.unwrap_or_default() {
        let mut m = match v {
            StrOr::Str(s) => parse_short_volume(&vars.s(&f("volumes"), &s)?)
                .map_err(|m| invalid(f("volumes"), m))?,
            StrOr::Other(l) => match long_volume(vars, &f("volumes"), l)? {
                LongVolume::Mount(m) => m,
                LongVolume::Tmpfs(t) => {
                    tmpfs.push(t);
                    continue;
                }
            },
        };
        if m.kind == MountKind::Bind {
            m.source = ctx.path(&f("volumes"), &m.source)?;
        }
        mounts.push(m);
    }
    for t in raw.tmpfs.map(StrOrList::into_vec).unwrap_or_default() {
        tmpfs.push(vars.s(&f("tmpfs"), &t)?);
    }
    for (kind, refs) in [("secrets", raw.secrets), ("configs", raw.configs)] {
        for r in refs.unwrap_or_default() {
            mounts.push(file_mount(ctx, &f(kind), kind, r)?);
        }
    }

    let mut networks = BTreeMap::new();
    let mut addresses = BTreeMap::new();
    match raw.networks {
        None => {}
        Some(SeqOrMap::Seq(list)) => {
            for n in list {
                networks.insert(vars.s(&f("networks"), &n)?, Vec::new());
            }
        }
        Some(SeqOrMap::Map(map)) => {
            for (n, cfg) in map {
                let field = format!("services.{name}.networks.{n}");
                let (aliases, ipv4, ipv6) = match cfg {
                    None => (Vec::new(), None, None),
                    Some(c) => (c.aliases, c.ipv4_address, c.ipv6_address),
                };
                let aliases = vars.list(&field, aliases)?;
                let a = Addresses {
                    ipv4: vars.opt(&field, ipv4)?,
                    ipv6: vars.opt(&field, ipv6)?,
                };
                if a != Addresses::default() {
                    addresses.insert(n.clone(), a);
                }
                networks.insert(n, aliases);
            }
        }
    }
    let network_mode = vars.opt(&f("network_mode"), raw.network_mode)?;

    let mut restart = match raw.restart {
        None => None,
        Some(Scalar::Bool(false)) => Some("no".to_string()),
        Some(s) => Some(vars.s(&f("restart"), &s.into_string())?),
    };

    let healthcheck = raw
        .healthcheck
        .map(|h| healthcheck(vars, &f("healthcheck"), h))
        .transpose()?;

    let mut depends_on = BTreeMap::new();
    let mut optional_deps = BTreeSet::new();
    match raw.depends_on {
        None => {}
        Some(SeqOrMap::Seq(list)) => {
            for d in list {
                depends_on.insert(d, Condition::ServiceStarted);
            }
        }
        Some(SeqOrMap::Map(map)) => {
            for (d, cfg) in map {
                if cfg.as_ref().and_then(|c| c.required) == Some(false) {
                    optional_deps.insert(d.clone());
                }
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

    let mut resources = super::types::Resources::default();
    let mut gpus = Vec::new();
    let mut replicas = raw
        .scale
        .map(|s| replica_count(vars, &f("scale"), s))
        .transpose()?;
    // Service-level keys first; `deploy.resources` overrides them, as Compose applies
    // it after them.
    if let Some(c) = raw.cpus {
        resources.nano_cpus = Some(super::resources::nano_cpus(vars, &f("cpus"), c)?);
    }
    if let Some(m) = raw.mem_limit {
        resources.memory = Some(bytes(vars, &f("mem_limit"), m)?);
    }
    if let Some(m) = raw.mem_reservation {
        resources.memory_reservation = Some(bytes(vars, &f("mem_reservation"), m)?);
    }
    if let Some(p) = raw.pids_limit {
        resources.pids = Some(super::resources::pids(vars, &f("pids_limit"), p)?);
    }
    if let Some(c) = raw.cpu_shares {
        let v = vars.s(&f("cpu_shares"), &c.into_string())?;
        resources.cpu_shares = Some(
            v.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| (2..=262_144).contains(n))
                .ok_or_else(|| {
                    invalid(
                        f("cpu_shares"),
                        format!("{v:?} is not a CPU share weight (2 to 262144)"),
                    )
                })?,
        );
    }
    if let Some(d) = raw.deploy {
        let dep = deploy(vars, &f("deploy"), d, &mut resources)?;
        gpus = dep.gpus;
        if dep.replicas.is_some() {
            replicas = dep.replicas;
        }
        // Compose lets deploy.restart_policy win over `restart`.
        if dep.restart.is_some() {
            restart = dep.restart;
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
        extra_hosts = hosts(vars, &f("extra_hosts"), h)?;
    }
    let mut sysctls = BTreeMap::new();
    if let Some(s) = raw.sysctls {
        for (k, v) in vars.pairs(&f("sysctls"), s)? {
            let v = v.ok_or_else(|| invalid(f("sysctls"), format!("{k:?} has no value")))?;
            sysctls.insert(k, v);
        }
    }

    let logging = match raw.logging {
        None => None,
        Some(l) => Some(Logging {
            driver: vars.opt(&f("logging"), l.driver)?,
            options: vars.map(&f("logging"), l.options)?,
        }),
    };

    let pull_policy = match vars.opt(&f("pull_policy"), raw.pull_policy)?.as_deref() {
        None | Some("missing" | "if_not_present") => None,
        Some(p @ ("never" | "build")) => Some(p.to_string()),
        Some("always") => {
            return Err(invalid(
                f("pull_policy"),
                "`always` would pull on every reconcile pass; pin a tag or digest and let Phoenix pull when it is absent",
            ));
        }
        Some(other) => {
            return Err(invalid(
                f("pull_policy"),
                format!("{other:?} is not supported (missing, if_not_present, never or build)"),
            ));
        }
    };

    let security_opt = vars.list(&f("security_opt"), raw.security_opt.unwrap_or_default())?;
    for o in &security_opt {
        let ok = matches!(
            o.as_str(),
            "no-new-privileges"
                | "no-new-privileges:true"
                | "no-new-privileges=true"
                | "no-new-privileges:false"
                | "no-new-privileges=false"
        );
        if !ok {
            return Err(invalid(
                f("security_opt"),
                format!(
                    "{o:?}: only no-new-privileges is supported; options that loosen confinement (seccomp, apparmor, label) are refused"
                ),
            ));
        }
    }

    let service = Service {
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
        optional_env_files,
        ports: port_list,
        volumes: mounts,
        networks,
        restart,
        healthcheck,
        depends_on,
        labels: labels(vars, &f("labels"), raw.labels)?,
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
        build,
        replicas,
        resources,
        expose,
        sysctls,
        network_mode,
        addresses,
        stop_signal: vars.opt(&f("stop_signal"), raw.stop_signal)?,
        stop_grace_period: raw
            .stop_grace_period
            .map(|d| duration(vars, &f("stop_grace_period"), &d))
            .transpose()?,
        tmpfs,
        shm_size: raw
            .shm_size
            .map(|s| bytes(vars, &f("shm_size"), s))
            .transpose()?,
        read_only: raw.read_only.unwrap_or(false),
        pull_policy,
        tty: raw.tty.unwrap_or(false),
        stdin_open: raw.stdin_open.unwrap_or(false),
        cap_drop: vars.list(&f("cap_drop"), raw.cap_drop.unwrap_or_default())?,
        security_opt,
        platform,
    };
    Ok(Converted {
        service,
        profiles: raw.profiles.unwrap_or_default(),
        optional_deps,
    })
}

pub(super) fn hosts(
    vars: &Vars,
    field: &str,
    h: SeqOrMap<Option<Scalar>>,
) -> Result<Vec<String>, ComposeError> {
    let mut out = Vec::new();
    // Compose accepts `host:ip` and `host=ip`; the first separator splits.
    let items = match h {
        SeqOrMap::Map(m) => vars.pairs(field, SeqOrMap::Map(m))?,
        SeqOrMap::Seq(list) => {
            let mut v = Vec::new();
            for item in list {
                let item = vars.s(field, &item)?;
                let at = item.find(['=', ':']);
                v.push(match at {
                    Some(i) => (item[..i].to_string(), Some(item[i + 1..].to_string())),
                    None => (item, None),
                });
            }
            v
        }
    };
    for (host, ip) in items {
        let ip = ip.ok_or_else(|| invalid(field, format!("{host:?} has no address")))?;
        out.push(format!("{host}:{ip}"));
    }
    Ok(out)
}

pub(super) fn bytes(vars: &Vars, field: &str, v: Scalar) -> Result<i64, ComposeError> {
    let s = vars.s(field, &v.into_string())?;
    parse_bytes(&s).ok_or_else(|| invalid(field, format!("{s:?} is not a size (e.g. 512m, 2g)")))
}

pub(super) fn duration(vars: &Vars, field: &str, v: &str) -> Result<i64, ComposeError> {
    let v = vars.s(field, v)?;
    parse_duration(&v).ok_or_else(|| invalid(field, format!("{v:?} is not a duration")))
}

pub(super) fn replica_count(vars: &Vars, field: &str, v: Scalar) -> Result<u32, ComposeError> {
    let s = vars.s(field, &v.into_string())?;
    s.parse::<u32>()
        .ok()
        .filter(|n| *n <= MAX_REPLICAS)
        .ok_or_else(|| {
            invalid(
                field,
                format!("{s:?} is not a count from 0 to {MAX_REPLICAS}"),
            )
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

fn long_port(vars: &Vars, field: &str, p: RawLongPort) -> Result<Vec<super::Port>, ComposeError> {
    if let Some(m) = p.mode.as_deref()
        && !matches!(m, "host" | "ingress")
    {
        return Err(invalid(
            field,
            format!("mode {m:?} is neither host nor ingress"),
        ));
    }
    let target = vars.s(field, &p.target.into_string())?;
    let published = p
        .published
        .map(|x| vars.s(field, &x.into_string()))
        .transpose()?
        .filter(|x| !x.is_empty());
    let protocol = vars
        .opt(field, p.protocol)?
        .unwrap_or_else(|| "tcp".to_string());
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(invalid(field, format!("unknown protocol {protocol:?}")));
    }
    let host_ip = vars.opt(field, p.host_ip)?;
    let whole = format!("{}:{target}", published.as_deref().unwrap_or(""));
    ports(&whole, host_ip, published.as_deref(), &target, &protocol).map_err(|m| invalid(field, m))
}

enum LongVolume {
    Mount(Mount),
    /// A tmpfs entry, `target[:options]`.
    Tmpfs(String),
}

fn long_volume(vars: &Vars, field: &str, l: RawLongVolume) -> Result<LongVolume, ComposeError> {
    let target = vars.s(field, &l.target)?;
    if let Some(b) = &l.bind {
        if b.propagation.is_some() {
            return Err(invalid(
                format!("{field}.bind.propagation"),
                "mount propagation shares mounts between the guest and the container; not supported",
            ));
        }
        if b.create_host_path == Some(false) {
            return Err(invalid(
                format!("{field}.bind.create_host_path"),
                "`false` is not supported: the engine creates a missing bind source",
            ));
        }
        let _ = &b.selinux;
    }
    if let Some(v) = &l.volume
        && v.subpath.is_some()
    {
        return Err(invalid(
            format!("{field}.volume.subpath"),
            "not supported by the engine API version Phoenix speaks (1.41)",
        ));
    }
    if l.kind == "tmpfs" {
        let mut opts = Vec::new();
        if let Some(t) = l.tmpfs {
            if let Some(size) = t.size {
                opts.push(format!(
                    "size={}",
                    super::service::bytes(vars, field, size)?
                ));
            }
            if let Some(mode) = t.mode {
                // YAML gives the number Compose turns into a file mode; the engine's
                // option text is octal.
                let n = match mode {
                    Scalar::Int(n) if (0..=0o7777).contains(&n) => n,
                    other => {
                        return Err(invalid(
                            field,
                            format!("tmpfs mode {:?} is not a file mode", other.into_string()),
                        ));
                    }
                };
                opts.push(format!("mode={n:o}"));
            }
        }
        return Ok(LongVolume::Tmpfs(if opts.is_empty() {
            target
        } else {
            format!("{target}:{}", opts.join(","))
        }));
    }
    let Some(source) = l.source.filter(|s| !s.is_empty()) else {
        if l.kind != "volume" {
            return Err(invalid(
                field,
                format!("{target:?}: a {:?} mount needs a source", l.kind),
            ));
        }
        let mut m = super::syntax::anonymous(&target, l.read_only.unwrap_or(false));
        m.nocopy = l.volume.and_then(|v| v.nocopy).unwrap_or(false);
        return Ok(LongVolume::Mount(m));
    };
    let source = vars.s(field, &source)?;
    let mut m = mount(&source, &target, l.read_only.unwrap_or(false));
    match (l.kind.as_str(), m.kind) {
        ("volume", MountKind::Volume) => {
            m.nocopy = l.volume.and_then(|v| v.nocopy).unwrap_or(false);
            Ok(LongVolume::Mount(m))
        }
        // A long-syntax bind may name a relative path without `./`.
        ("bind", _) => {
            m.kind = MountKind::Bind;
            Ok(LongVolume::Mount(m))
        }
        ("volume", _) => Err(invalid(
            field,
            format!("type \"volume\" does not match the path source {source:?}"),
        )),
        (other, _) => Err(invalid(
            field,
            format!("volume type {other:?} is not supported (bind, volume or tmpfs)"),
        )),
    }
}

/// A service's `secrets`/`configs` entry → a read-only bind of the file on the guest, as
/// Compose mounts file-sourced ones: secrets at `/run/secrets/<name>`, configs at
/// `/<name>`, or at `target`.
fn file_mount(
    ctx: &Ctx,
    field: &str,
    kind: &str,
    r: StrOr<RawFileRef>,
) -> Result<Mount, ComposeError> {
    let (source, target) = match r {
        StrOr::Str(s) => (s, None),
        StrOr::Other(RawFileRef {
            source,
            target,
            uid,
            gid,
            mode,
        }) => {
            if uid.is_some() || gid.is_some() || mode.is_some() {
                return Err(invalid(
                    field,
                    format!(
                        "{source:?}: uid, gid and mode cannot be set on a file bind-mounted from the guest; set them on the file"
                    ),
                ));
            }
            (source, target)
        }
    };
    let table = if kind == "secrets" {
        &ctx.files.secrets
    } else {
        &ctx.files.configs
    };
    let Some(path) = table.get(&source) else {
        return Err(invalid(
            field,
            format!("{source:?} is not declared under top-level {kind}"),
        ));
    };
    let target = match target {
        Some(t) if t.starts_with('/') => t,
        Some(t) if kind == "secrets" => format!("/run/secrets/{t}"),
        Some(t) => format!("/{t}"),
        None if kind == "secrets" => format!("/run/secrets/{source}"),
        None => format!("/{source}"),
    };
    Ok(Mount {
        kind: MountKind::Bind,
        source: path.clone(),
        target,
        read_only: true,
        nocopy: false,
    })
}

fn healthcheck(vars: &Vars, field: &str, h: RawHealthcheck) -> Result<Healthcheck, ComposeError> {
    let dur = |k: &str, v: Option<String>| -> Result<Option<i64>, ComposeError> {
        v.map(|v| duration(vars, &format!("{field}.{k}"), &v))
            .transpose()
    };
    let test = if h.disable.unwrap_or(false) {
        vec!["NONE".to_string()]
    } else {
        match h.test {
            None => return Err(invalid(field, "test is required unless disable: true")),
            Some(StrOrList::Str(s)) => vec!["CMD-SHELL".to_string(), vars.s(field, &s)?],
            Some(StrOrList::List(l)) => vars.list(field, l)?,
        }
    };
    Ok(Healthcheck {
        test,
        interval: dur("interval", h.interval)?,
        timeout: dur("timeout", h.timeout)?,
        start_period: dur("start_period", h.start_period)?,
        retries: h.retries.map(i64::from),
        start_interval: dur("start_interval", h.start_interval)?,
    })
}
