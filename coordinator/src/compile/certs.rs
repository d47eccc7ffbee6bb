//! Certificate-manifest entries → `cert` resources in the guest that owns the path, with
//! the reload their `post_renewal_command` asked for.
//!
//! Layer 6, per-guest assembly: imports layers 0–5.

use super::builder::Builder;
use super::features::Item;
use super::phoenix::GuestConfig;
use super::reader::{Diag, Node, abs_path};
use super::types::Problem;
use phoenix_proto::model::{AbsPath, CertSpec, FileMode, GuestId, Reload, Resource};
use serde_json::Value;
use std::collections::BTreeMap;

/// Certificate-manifest entries → `cert` resources in the guest that owns the path.
pub(crate) fn certificates(
    root: &Node,
    built: &mut BTreeMap<GuestId, (GuestConfig, Builder)>,
    d: &mut Diag,
) {
    for e in root.items(d, "an array of certificate entries") {
        if let Some((gid, item)) = certificate(&e, built, d)
            && let Some((g, b)) = built.get_mut(&gid)
        {
            b.add(item, g, d);
        }
    }
}

fn certificate(
    e: &Node,
    built: &BTreeMap<GuestId, (GuestConfig, Builder)>,
    d: &mut Diag,
) -> Option<(GuestId, Item)> {
    let required = |key: &str, d: &mut Diag| -> Option<Node> {
        let n = e.get(key);
        if n.is_none() {
            e.error(d, Problem::Missing(format!("\"{key}\"")));
        }
        n
    };
    let common_name = required("common_name", d).and_then(|n| host_name(&n, d));
    let cert_path = required("cert_path", d).and_then(|n| abs_path(&n, d));
    let key_path = required("key_path", d).and_then(|n| abs_path(&n, d));
    let sans: Vec<String> = e.list(d, "sans", "an array of DNS names or IPs", host_name);
    let (owner, group) = match e.get("owner") {
        Some(n) => match n.value.as_str() {
            Some(s) if !s.is_empty() => match s.split_once(':') {
                Some((u, g)) => (Some(u.to_string()), Some(g.to_string())),
                None => (Some(s.to_string()), None),
            },
            _ => {
                n.expected(d, "\"user\" or \"user:group\"");
                (None, None)
            }
        },
        None => (None, None),
    };
    let mode = e.get("permissions").and_then(|n| {
        let s = match n.value {
            Value::String(s) => s.clone(),
            Value::Number(x) => x.to_string(),
            _ => String::new(),
        };
        match FileMode::try_from(s) {
            Ok(m) if m.bits() <= 0o777 => Some((m, n)),
            _ => {
                n.expected(d, "octal permissions such as \"640\"");
                None
            }
        }
    });
    let command = e.opt(d, "post_renewal_command", |n, d| {
        n.string(d, "a shell command")
    });
    let command_target = command.as_deref().and_then(command_guest);
    let explicit = e.opt(d, "guest_id", |n, d| n.guest_id(d));
    if let Some(t) = e.get("cert_type")
        && t.value.as_str() == Some("client")
    {
        t.warn(
            d,
            "client certificates are issued with the same request as server ones",
        );
    }
    let (cn, cert_path, key_path) = (common_name?, cert_path?, key_path?);

    // Which guest: guest_id, else the guest the hook runs in, else the one whose mount
    // holds the path.
    let target = explicit.or(command_target).or_else(|| {
        let owners: Vec<GuestId> = built
            .iter()
            .filter(|(_, (g, _))| map_path(g, &cert_path).is_some())
            .map(|(id, _)| *id)
            .collect();
        (owners.len() == 1).then(|| owners[0])
    });
    let Some(target) = target else {
        e.error(
            d,
            Problem::Expected {
                expected: "a cert_path inside exactly one guest's mount points (or a guest_id)"
                    .into(),
                found: format!("{:?}", cert_path.as_str()),
            },
        );
        return None;
    };
    let Some((g, _)) = built.get(&target) else {
        e.error(d, Problem::UnknownGuest(target));
        return None;
    };
    if let (Some(a), Some(b)) = (explicit, command_target)
        && a != b
    {
        e.error(
            d,
            Problem::Conflict(format!(
                "guest_id is {a} but post_renewal_command runs in guest {b}"
            )),
        );
    }
    // Newer manifests with a guest_id may already give in-guest paths.
    let map = |p: &AbsPath, key: &str, d: &mut Diag| -> Option<AbsPath> {
        match map_path(g, p) {
            Some(mapped) => Some(mapped),
            None if explicit.is_some() => Some(p.clone()),
            None => {
                if let Some(n) = e.get(key) {
                    n.expected(d, format!("a path inside a mount point of guest {target}"));
                }
                None
            }
        }
    };
    let cert_in_guest = map(&cert_path, "cert_path", d)?;
    let key_in_guest = map(&key_path, "key_path", d)?;

    let mut reload = Vec::new();
    if let Some(cmd) = &command {
        match renewal_reload(cmd) {
            Some(r) => reload.push(r),
            None => {
                if let Some(n) = e.get("post_renewal_command") {
                    n.warn(
                        d,
                        "post_renewal_command has no `systemctl reload|restart <unit>` or `docker restart <container>`; nothing is reloaded",
                    );
                }
            }
        }
    }
    let (mode, key_mode) = match mode {
        Some((m, n)) => {
            let key_mode = if m.bits() & 0o007 != 0 {
                n.warn(
                    d,
                    format!(
                        "permissions {:04o} would make the private key world-readable; the key gets {:04o}",
                        m.bits(),
                        m.bits() & !0o007
                    ),
                );
                FileMode::try_from(format!("{:04o}", m.bits() & !0o007)).ok()?
            } else {
                m
            };
            (m, key_mode)
        }
        None => (
            FileMode::try_from("0644".to_string()).ok()?,
            FileMode::try_from("0600".to_string()).ok()?,
        ),
    };
    // A container restart needs the container: the cert waits for the stack that creates
    // it (the RCA's second failure). A reloaded service needs its unit: the cert waits for
    // what provides it (the package, or Phoenix's own unit file), not for the service's
    // start, since its configuration usually needs the cert first.
    let after = reload
        .iter()
        .flat_map(|r| match r {
            Reload::ContainerRestart(c) => built
                .get(&target)
                .and_then(|(_, b)| {
                    b.resources.iter().find_map(|r| match r {
                        Resource::Stack(s)
                            if s.compose.contains(&format!("container_name: {c}")) =>
                        {
                            Some(r.id())
                        }
                        _ => None,
                    })
                })
                .into_iter()
                .collect::<Vec<_>>(),
            Reload::ServiceReload(u) | Reload::ServiceRestart(u) => built
                .get(&target)
                .and_then(|(_, b)| {
                    b.resources.iter().find_map(|r| match r {
                        Resource::Service(s) if &s.name == u => Some(if s.unit.is_some() {
                            vec![r.id()]
                        } else {
                            s.depends_on
                                .iter()
                                .filter(|d| d.kind() == "package")
                                .cloned()
                                .collect()
                        }),
                        _ => None,
                    })
                })
                .unwrap_or_default(),
        })
        .collect();
    let name: String = cn.chars().map(|c| if c == '*' { '_' } else { c }).collect();
    let spec = CertSpec {
        name,
        common_name: cn,
        sans,
        cert_path: cert_in_guest,
        key_path: key_in_guest,
        chain_path: None,
        ca_path: None,
        owner,
        group,
        mode,
        key_mode,
        ttl_seconds: 24 * 3600,
        reload,
        depends_on: Vec::new(),
    };
    Some((
        target,
        Item {
            resource: Resource::Cert(spec),
            after,
        },
    ))
}

fn host_name(n: &Node, d: &mut Diag) -> Option<String> {
    match n.value.as_str() {
        Some(s)
            if !s.is_empty()
                && s.len() <= 253
                && s.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'*')
                }) =>
        {
            Some(s.to_string())
        }
        _ => {
            n.expected(d, "a DNS name or IP address");
            None
        }
    }
}

/// Host path → in-guest path through the guest's mounts (longest host prefix wins).
fn map_path(g: &GuestConfig, host: &AbsPath) -> Option<AbsPath> {
    g.facts
        .mount_points
        .iter()
        .filter_map(|m| {
            let base = m.host_path.as_ref()?;
            let rest = host.as_path().strip_prefix(base.as_path()).ok()?;
            Some((base.as_str().len(), m.guest_path.as_path().join(rest)))
        })
        .max_by_key(|(len, _)| *len)
        .and_then(|(_, p)| {
            AbsPath::try_from(p.to_string_lossy().trim_end_matches('/').to_string()).ok()
        })
}

/// `pct exec 101 -- ...` / `qm guest exec 1001 -- ...`.
fn command_guest(cmd: &str) -> Option<GuestId> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    words.windows(3).find_map(|w| match w {
        ["pct", "exec", id] => id.parse().ok(),
        ["guest", "exec", id] => id.parse().ok(),
        _ => None,
    })
}

/// The last `systemctl reload|restart <unit>` or `docker restart <name>` in the hook.
/// Waiting for the file (the traefik hook's loop) is unnecessary: the agent reloads
/// only after the new files are written and verified.
fn renewal_reload(cmd: &str) -> Option<Reload> {
    let words: Vec<String> = cmd
        .split(|c: char| c.is_whitespace() || c == ';' || c == '\'' || c == '"')
        .filter(|w| !w.is_empty() && *w != "&&")
        .map(str::to_string)
        .collect();
    let unit = |u: &str| {
        if u.contains('.') {
            u.to_string()
        } else {
            format!("{u}.service")
        }
    };
    words
        .windows(3)
        .rev()
        .find_map(|w| match [w[0].as_str(), w[1].as_str(), w[2].as_str()] {
            ["systemctl", "reload", u] => Some(Reload::ServiceReload(unit(u))),
            ["systemctl", "restart", u] => Some(Reload::ServiceRestart(unit(u))),
            ["docker", "restart", c] => Some(Reload::ContainerRestart(c.to_string())),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_hooks_become_reloads_in_the_guest() {
        assert_eq!(
            renewal_reload("pct exec 101 -- systemctl reload nginx"),
            Some(Reload::ServiceReload("nginx.service".into()))
        );
        assert_eq!(
            renewal_reload("qm guest exec 1001 -- docker restart portainer_server"),
            Some(Reload::ContainerRestart("portainer_server".into()))
        );
        assert_eq!(
            renewal_reload(
                "pct exec 102 -- /bin/bash -c 'while [ ! -f /x ]; do sleep 1; done; systemctl reload traefik'"
            ),
            Some(Reload::ServiceReload("traefik.service".into()))
        );
        assert_eq!(renewal_reload("echo rotated"), None);
        assert_eq!(
            command_guest("qm guest exec 1001 -- docker restart p").map(u32::from),
            Some(1001)
        );
        assert_eq!(command_guest("pct exec 102 -- x").map(u32::from), Some(102));
    }
}
