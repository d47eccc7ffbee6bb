//! YAML → [`ComposeProject`]: reads the raw shapes, interpolates every string value,
//! normalizes Compose's alternative forms (list or map, short or long syntax) and runs the
//! project's checks. Pure: reads no files (env_file contents are merged by the agent when
//! it renders the stack) and talks to no engine.

use super::interpolate::Vars;
use super::raw::{
    RawDeviceRequest, RawHealthcheck, RawLongVolume, RawProject, RawService, RawUlimit, Scalar,
    SeqOrMap, StrOr, StrOrList,
};
use super::syntax::{mount, parse_duration, parse_port, parse_short_volume, shell_words};
use super::types::{
    ComposeProject, Condition, DeviceRequest, Healthcheck, Logging, Mount, MountKind, NetworkDef,
    Service, Ulimit, VolumeDef,
};
use super::{ComposeError, ImageRef, invalid};
use std::collections::BTreeMap;

/// Parses, interpolates from `variables` and checks a Compose file. The coordinator
/// compiles stacks with it; the agent receives the result.
pub fn parse(
    compose: &str,
    variables: &BTreeMap<String, String>,
) -> Result<ComposeProject, ComposeError> {
    let raw: RawProject =
        serde_saphyr::from_str(compose).map_err(|e| ComposeError::Yaml(e.to_string()))?;
    let vars = Vars(variables);

    let mut networks = BTreeMap::new();
    for (key, def) in raw.networks {
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
        let svc = service(&vars, &name, raw)?;
        services.insert(name, svc);
    }
    ComposeProject::checked(services, networks, volumes)
}

fn service(vars: &Vars, name: &str, raw: RawService) -> Result<Service, ComposeError> {
    let f = |k: &str| format!("services.{name}.{k}");
    let image = match raw.image {
        Some(i) => vars.s(&f("image"), &i)?,
        None => return Err(invalid(f("image"), "required (build is not supported)")),
    };
    let image = ImageRef::try_from(image).map_err(|e| invalid(f("image"), e.to_string()))?;

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
        env_files.push(vars.s(&f("env_file"), &p)?);
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
        Some(s) => Some(vars.s(&f("restart"), &s.into_string())?),
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

    let mut labels = BTreeMap::new();
    if let Some(l) = raw.labels {
        for (k, v) in vars.pairs(&f("labels"), l)? {
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

fn long_volume(
    vars: &Vars,
    field: &str,
    l: RawLongVolume,
) -> Result<Result<Mount, String>, ComposeError> {
    let source = vars.s(field, &l.source)?;
    let target = vars.s(field, &l.target)?;
    let m = mount(&source, &target, l.read_only.unwrap_or(false));
    Ok(match (l.kind.as_str(), m.kind) {
        ("volume", MountKind::Volume) | ("bind", MountKind::Bind) => Ok(m),
        ("volume" | "bind", _) => Err(format!(
            "type {:?} does not match source {source:?}",
            l.kind
        )),
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
            Some(StrOrList::List(l)) => vars.list(field, l)?,
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
