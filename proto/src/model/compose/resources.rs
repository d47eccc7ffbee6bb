//! `deploy` (replicas, resources, restart policy, GPU reservations) and `build`, read into
//! what one engine honours. Swarm-only keys that `docker compose up` ignores on one engine
//! (`placement`, `update_config`, `rollback_config`, `endpoint_mode`, `labels`) are
//! accepted and have no effect, as with Compose.

use super::interpolate::Vars;
use super::parse::{Ctx, labels};
use super::raw::{RawBuild, RawDeploy, RawDeviceRequest, Scalar, StrOr};
use super::service::{bytes, hosts, replica_count};
use super::types::{Build, DeviceRequest, Resources};
use super::{ComposeError, invalid};
use std::path::{Component, Path};

/// What `deploy` adds to a service besides its resources.
pub(super) struct Deploy {
    pub(super) replicas: Option<u32>,
    pub(super) gpus: Vec<DeviceRequest>,
    /// `restart_policy` as a `restart` value.
    pub(super) restart: Option<String>,
}

/// Most CPUs a limit may name; a bound against hostile numbers.
const MAX_CPUS: f64 = 4096.0;

pub(super) fn nano_cpus(vars: &Vars, field: &str, v: Scalar) -> Result<i64, ComposeError> {
    let s = vars.s(field, &v.into_string())?;
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|c| c.is_finite() && *c > 0.0 && *c <= MAX_CPUS)
        .map(|c| (c * 1e9).round() as i64)
        .ok_or_else(|| invalid(field, format!("{s:?} is not a number of CPUs (e.g. 0.5)")))
}

pub(super) fn pids(vars: &Vars, field: &str, v: Scalar) -> Result<i64, ComposeError> {
    let s = vars.s(field, &v.into_string())?;
    s.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n == -1 || *n > 0)
        .ok_or_else(|| invalid(field, format!("{s:?} is not a process count (or -1)")))
}

/// Reads `deploy`; its limits and memory reservation override the service-level keys,
/// as `docker compose` applies them after those (compose-go `setLimits`).
pub(super) fn deploy(
    vars: &Vars,
    field: &str,
    d: RawDeploy,
    res: &mut Resources,
) -> Result<Deploy, ComposeError> {
    if let Some(m) = d.mode.as_deref()
        && m != "replicated"
    {
        return Err(invalid(
            format!("{field}.mode"),
            format!("{m:?}: only replicated (one engine has no nodes to run a global service on)"),
        ));
    }
    let _ = labels(vars, &format!("{field}.labels"), d.labels)?;
    let replicas = d
        .replicas
        .map(|r| replica_count(vars, &format!("{field}.replicas"), r))
        .transpose()?;
    let mut gpus = Vec::new();
    if let Some(r) = d.resources {
        if let Some(l) = r.limits {
            let f = |k: &str| format!("{field}.resources.limits.{k}");
            if let Some(c) = l.cpus {
                res.nano_cpus = Some(nano_cpus(vars, &f("cpus"), c)?);
            }
            if let Some(m) = l.memory {
                res.memory = Some(bytes(vars, &f("memory"), m)?);
            }
            if let Some(p) = l.pids {
                res.pids = Some(pids(vars, &f("pids"), p)?);
            }
        }
        if let Some(rv) = r.reservations {
            let f = |k: &str| format!("{field}.resources.reservations.{k}");
            if rv.generic_resources.is_some() {
                return Err(invalid(
                    f("generic_resources"),
                    "swarm generic resources; for GPUs use reservations.devices",
                ));
            }
            if let Some(m) = rv.memory {
                res.memory_reservation = Some(bytes(vars, &f("memory"), m)?);
            }
            if let Some(c) = rv.cpus {
                // Checked, then left out as `docker compose` leaves it out: a CPU
                // reservation is a swarm scheduling option (compose-go
                // `setReservations`), not a container setting. The parity test shows
                // docker-compose sets no CPU shares for it either.
                nano_cpus(vars, &f("cpus"), c)?;
            }
            for dev in rv.devices {
                gpus.push(device_request(vars, &f("devices"), dev)?);
            }
        }
    }
    let restart = match d.restart_policy {
        None => None,
        Some(p) => {
            let cond = vars.opt(field, p.condition)?;
            Some(match cond.as_deref() {
                None | Some("any" | "always") => "always".to_string(),
                Some("none" | "no") => "no".to_string(),
                Some("unless-stopped") => "unless-stopped".to_string(),
                Some("on-failure") => match p.max_attempts {
                    Some(n) if n > 0 => format!("on-failure:{n}"),
                    _ => "on-failure".to_string(),
                },
                Some(other) => {
                    return Err(invalid(
                        format!("{field}.restart_policy.condition"),
                        format!("{other:?} is not one of none, on-failure, any"),
                    ));
                }
            })
        }
    };
    Ok(Deploy {
        replicas,
        gpus,
        restart,
    })
}

fn device_request(
    vars: &Vars,
    field: &str,
    d: RawDeviceRequest,
) -> Result<DeviceRequest, ComposeError> {
    let count = match d.count {
        None => None,
        Some(Scalar::Int(n)) if n >= 0 => Some(n),
        Some(Scalar::Str(s)) if vars.s(field, &s)? == "all" => Some(-1),
        Some(other) => {
            return Err(invalid(
                format!("{field}.count"),
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

/// `build` → the context on the guest and what the engine's build endpoint takes. The
/// context ships with the stack (beneath the project directory); remote contexts and
/// BuildKit-only keys are refused with their reason.
pub(super) fn build(ctx: &Ctx, field: &str, b: StrOr<RawBuild>) -> Result<Build, ComposeError> {
    let vars = ctx.vars;
    let b = match b {
        StrOr::Str(context) => RawBuild {
            context: Some(context),
            ..RawBuild::default()
        },
        StrOr::Other(b) => b,
    };
    for (key, present, why) in [
        (
            "additional_contexts",
            b.additional_contexts.is_some(),
            "needs BuildKit; the engine's build endpoint has one context",
        ),
        (
            "ssh",
            b.ssh.is_some(),
            "forwards an SSH agent into the build; not supported",
        ),
        (
            "secrets",
            b.secrets.is_some(),
            "build secrets need BuildKit; not supported",
        ),
        (
            "entitlements",
            b.entitlements.is_some(),
            "grants the build extra privileges; not supported",
        ),
        (
            "privileged",
            b.privileged.is_some(),
            "a privileged build controls the guest; not supported",
        ),
        (
            "cache_from",
            b.cache_from.is_some(),
            "pulls cache images from a registry; not supported",
        ),
        (
            "cache_to",
            b.cache_to.is_some(),
            "exports cache to a registry; not supported",
        ),
        (
            "tags",
            b.tags.is_some(),
            "extra tags are not supported; `image` names the result",
        ),
        ("isolation", b.isolation.is_some(), "a Windows option"),
    ] {
        if present {
            return Err(invalid(format!("{field}.{key}"), why));
        }
    }
    let context = vars
        .opt(field, b.context)?
        .unwrap_or_else(|| ".".to_string());
    if context.contains("://") || context.starts_with("git@") {
        return Err(invalid(
            format!("{field}.context"),
            format!(
                "{context:?}: remote contexts are fetched at build time; ship the context with the stack"
            ),
        ));
    }
    let context = ctx.path(&format!("{field}.context"), &context)?;
    let dockerfile = vars.opt(field, b.dockerfile)?;
    if let Some(d) = &dockerfile {
        let escapes = Path::new(d).is_absolute()
            || Path::new(d)
                .components()
                .any(|c| matches!(c, Component::ParentDir));
        if escapes {
            return Err(invalid(
                format!("{field}.dockerfile"),
                format!("{d:?} must be a path inside the context (it ships with it)"),
            ));
        }
    }
    let dockerfile_inline = b.dockerfile_inline;
    if dockerfile.is_some() && dockerfile_inline.is_some() {
        return Err(invalid(
            field,
            "give dockerfile or dockerfile_inline, not both",
        ));
    }
    let network = vars.opt(field, b.network)?;
    if let Some(n) = network.as_deref()
        && !matches!(n, "default" | "bridge" | "none")
    {
        return Err(invalid(
            format!("{field}.network"),
            format!(
                "{n:?}: a build runs on the default bridge or none (the guest's own network would let RUN steps reach its local services)"
            ),
        ));
    }
    let mut platforms = Vec::new();
    for p in b.platforms.unwrap_or_default() {
        let p = vars.s(&format!("{field}.platforms"), &p)?;
        check_platform(&format!("{field}.platforms"), &p)?;
        if !platforms.contains(&p) {
            platforms.push(p);
        }
    }
    let mut args = std::collections::BTreeMap::new();
    if let Some(a) = b.args {
        for (k, v) in vars.pairs(&format!("{field}.args"), a)? {
            // `ARG` without a value takes the stack variable of that name, or stays unset.
            match v.or_else(|| vars.get(&k).cloned()) {
                Some(v) => {
                    args.insert(k, v);
                }
                None => continue,
            }
        }
    }
    Ok(Build {
        context,
        dockerfile,
        dockerfile_inline,
        args,
        target: vars.opt(field, b.target)?,
        labels: labels(vars, &format!("{field}.labels"), b.labels)?,
        network,
        shm_size: b
            .shm_size
            .map(|s| bytes(vars, &format!("{field}.shm_size"), s))
            .transpose()?,
        extra_hosts: match b.extra_hosts {
            Some(h) => hosts(vars, &format!("{field}.extra_hosts"), h)?,
            None => Vec::new(),
        },
        no_cache: b.no_cache.unwrap_or(false),
        pull: b.pull.unwrap_or(false),
        platforms,
    })
}

/// `os/arch[/variant]`, lowercase. Whether it is the engine's own platform only the
/// agent can tell (it asks the engine); this checks the form.
pub(super) fn check_platform(field: &str, p: &str) -> Result<(), ComposeError> {
    let parts: Vec<&str> = p.split('/').collect();
    let ok = (2..=3).contains(&parts.len())
        && parts.iter().all(|x| {
            !x.is_empty()
                && x.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{p:?} is not a platform (os/arch[/variant], e.g. linux/amd64)"),
        ))
    }
}
