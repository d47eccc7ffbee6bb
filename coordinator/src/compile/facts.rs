//! Layer 3, Phoenix config readers: what a guest's JSON says about the guest itself
//! (network, MAC, ports, GPUs, firewall, mount points), read into the checked values of
//! `GuestFacts`. Imports layers 0–2.

use super::reader::{Diag, Node, abs_path};
use super::types::{
    Direction, Firewall, FirewallAction, FirewallRule, GuestKind, MountKind, MountPoint,
    NetworkInterface, PortMapping, Problem, TraefikService,
};
use serde_json::Value;
use std::net::IpAddr;

pub(crate) fn mac_address(n: &Node, d: &mut Diag) -> Option<String> {
    let ok = n.value.as_str().filter(|s| {
        let parts: Vec<&str> = s.split(':').collect();
        parts.len() == 6
            && parts
                .iter()
                .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    match ok {
        Some(s) => Some(s.to_string()),
        None => {
            n.expected(d, "a MAC address such as \"52:54:00:AA:BB:CC\"");
            None
        }
    }
}

/// `10.0.0.153/24` or `dhcp`.
fn cidr_or_dhcp(n: &Node, d: &mut Diag) -> Option<String> {
    let s = n.value.as_str().unwrap_or("");
    if s == "dhcp" {
        return Some(s.into());
    }
    let ok = s.split_once('/').is_some_and(|(ip, len)| {
        ip.parse::<IpAddr>().is_ok_and(|ip| {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            len.parse::<u8>().is_ok_and(|l| l <= max)
        })
    });
    if ok {
        Some(s.into())
    } else {
        n.expected(
            d,
            "an address in CIDR form such as \"10.0.0.153/24\", or \"dhcp\"",
        );
        None
    }
}

fn ip(n: &Node, d: &mut Diag) -> Option<String> {
    match n
        .value
        .as_str()
        .and_then(|s| s.trim().parse::<IpAddr>().ok())
    {
        Some(ip) => Some(ip.to_string()),
        None => {
            n.expected(d, "an IP address");
            None
        }
    }
}

pub(crate) fn network(
    n: &Node,
    default_name: &str,
    bridge: Option<Node>,
    d: &mut Diag,
) -> Option<NetworkInterface> {
    if !n.is_object() {
        n.expected(d, "an object {name, bridge, ip, gw, nameservers}");
        return None;
    }
    super::keys::check(n, super::keys::NETWORK, d);
    // Read everything before giving up, so every bad value is reported in one run.
    let ip_addr = match n.get("ip") {
        Some(i) => cidr_or_dhcp(&i, d),
        None => {
            n.error(
                d,
                Problem::Missing("\"ip\": a CIDR address or \"dhcp\"".into()),
            );
            None
        }
    };
    // `nameservers` (string, older) and `nameserver` (newer); either may list several.
    let mut nameservers = Vec::new();
    for key in ["nameservers", "nameserver"] {
        if let Some(ns) = n.get(key) {
            let items: Vec<Node> = if ns.value.is_array() {
                ns.items(d, "nameserver addresses")
            } else {
                vec![ns.clone()]
            };
            for item in items {
                let Some(s) = item.string(d, "nameserver addresses") else {
                    continue;
                };
                for part in s.split([' ', ',']).filter(|p| !p.is_empty()) {
                    match part.parse::<IpAddr>() {
                        Ok(a) => nameservers.push(a.to_string()),
                        Err(_) => item
                            .expected(d, "nameserver IP addresses separated by spaces or commas"),
                    }
                }
            }
        }
    }
    let name = n
        .opt(d, "name", |n, d| n.text(d, "an interface name"))
        .unwrap_or_else(|| default_name.to_string());
    let bridge = n
        .get("bridge")
        .or(bridge)
        .and_then(|b| b.text(d, "a bridge name"));
    let gateway = n.opt(d, "gw", |n, d| ip(n, d));
    let mac_address = n.opt(d, "hwaddr", |n, d| mac_address(n, d));
    Some(NetworkInterface {
        name,
        bridge,
        ip: ip_addr?,
        gateway,
        nameservers,
        mac_address,
    })
}

/// `"none"`, `"0"`, `"0,1"`, `"0, 1"`, or a number.
pub(crate) fn gpus(n: &Node, d: &mut Diag) -> Option<Vec<u32>> {
    let s = match n.value {
        Value::String(s) => s.clone(),
        Value::Number(x) => x.to_string(),
        _ => String::new(),
    };
    if s.trim() == "none" || s.trim().is_empty() && n.value.is_string() {
        return Some(Vec::new());
    }
    let parsed: Option<Vec<u32>> = s.split(',').map(|p| p.trim().parse::<u32>().ok()).collect();
    if parsed.is_none() {
        n.expected(d, "\"none\" or GPU indices such as \"0\" or \"0, 1\"");
    }
    parsed
}

fn port(s: &str) -> Option<u16> {
    s.trim().parse::<u16>().ok().filter(|p| *p > 0)
}

/// `"8000:8000"` (host:guest) or `"8000"`.
pub(crate) fn port_mapping(n: &Node, d: &mut Diag) -> Option<PortMapping> {
    let s = match n.value {
        Value::String(s) => s.clone(),
        Value::Number(x) => x.to_string(),
        _ => String::new(),
    };
    let m = match s.split_once(':') {
        Some((h, g)) => port(h).zip(port(g)),
        None => port(&s).map(|p| (p, p)),
    };
    match m {
        Some((host, guest)) => Some(PortMapping { host, guest }),
        None => {
            n.expected(d, "a port mapping \"host:guest\" with ports 1..65535");
            None
        }
    }
}

pub(crate) fn traefik_service(n: &Node, d: &mut Diag) -> Option<TraefikService> {
    let name = match n.get("name") {
        Some(x) => x.text(d, "the Traefik service name")?,
        None => {
            n.error(d, Problem::Missing("\"name\"".into()));
            return None;
        }
    };
    let port = match n.get("port") {
        Some(x) => x.uint(d, 1..=65535)? as u16,
        None => {
            n.error(d, Problem::Missing("\"port\"".into()));
            return None;
        }
    };
    Some(TraefikService { name, port })
}

pub(crate) fn firewall(n: &Node, d: &mut Diag) -> Option<Firewall> {
    if !n.is_object() {
        n.expected(d, "an object {enabled, rules}");
        return None;
    }
    let enabled = n.opt(d, "enabled", |n, d| n.boolean(d)).unwrap_or(true);
    let rules = n
        .get("rules")
        .map(|r| firewall_rules(&r, d))
        .unwrap_or_default();
    Some(Firewall { enabled, rules })
}

pub(crate) fn firewall_rules(n: &Node, d: &mut Diag) -> Vec<FirewallRule> {
    n.items(d, "an array of firewall rules")
        .iter()
        .filter_map(|r| firewall_rule(r, d))
        .collect()
}

fn firewall_rule(r: &Node, d: &mut Diag) -> Option<FirewallRule> {
    if !r.is_object() {
        r.expected(d, "a firewall rule object");
        return None;
    }
    let direction = match r.get("type").as_ref().map(|n| (n, n.value.as_str())) {
        Some((_, Some("in"))) => Direction::In,
        Some((_, Some("out"))) => Direction::Out,
        Some((n, _)) => {
            n.expected(d, "\"in\" or \"out\"");
            return None;
        }
        None => {
            r.error(d, Problem::Missing("\"type\": \"in\" or \"out\"".into()));
            return None;
        }
    };
    let action = match r.get("action").as_ref().map(|n| (n, n.value.as_str())) {
        Some((_, Some("ACCEPT"))) => FirewallAction::Accept,
        Some((_, Some("DROP"))) => FirewallAction::Drop,
        Some((_, Some("REJECT"))) => FirewallAction::Reject,
        Some((n, _)) => {
            n.expected(d, "\"ACCEPT\", \"DROP\" or \"REJECT\"");
            return None;
        }
        None => {
            r.error(
                d,
                Problem::Missing("\"action\": ACCEPT, DROP or REJECT".into()),
            );
            return None;
        }
    };
    let addr = |key: &str, d: &mut Diag| -> Option<String> {
        let n = r.get(key)?;
        let s = n.value.as_str().unwrap_or("");
        let ok = !s.is_empty()
            && (s.parse::<IpAddr>().is_ok()
                || s.split_once('/').is_some_and(|(a, l)| {
                    a.parse::<IpAddr>().is_ok() && l.parse::<u8>().is_ok_and(|l| l <= 128)
                })
                // Proxmox IP sets and aliases (`+dc/mgmt`, `my_alias`).
                || s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'-')));
        if ok {
            Some(s.to_string())
        } else {
            n.expected(d, "an IP address, CIDR or Proxmox alias");
            None
        }
    };
    let source = addr("source", d);
    let dest = addr("dest", d);
    let proto = r.opt(d, "proto", |n, d| {
        let s = n.value.as_str().unwrap_or("");
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            Some(s.to_ascii_lowercase())
        } else {
            n.expected(d, "a protocol such as \"tcp\", \"udp\" or \"icmp\"");
            None
        }
    });
    let ports = r
        .get("port")
        .and_then(|n| {
            let s = match n.value {
                Value::String(s) => s.clone(),
                Value::Number(x) => x.to_string(),
                _ => String::new(),
            };
            let parts: Option<Vec<String>> = s
                .split(',')
                .map(|p| {
                    let p = p.trim();
                    match p.split_once(':') {
                        Some((a, b)) => port(a)
                            .zip(port(b))
                            .filter(|(a, b)| a <= b)
                            .map(|(a, b)| format!("{a}:{b}")),
                        None => port(p).map(|p| p.to_string()),
                    }
                })
                .collect();
            if parts.is_none() {
                n.expected(d, "ports such as \"443\", \"80,443\" or \"8000:8010\"");
            }
            parts
        })
        .unwrap_or_default();
    let comment = r.opt(d, "comment", |n, d| n.string(d, "a comment"));
    Some(FirewallRule {
        direction,
        action,
        source,
        dest,
        proto,
        ports,
        comment,
    })
}

pub(crate) fn mounts(g: &Node, kind: GuestKind, d: &mut Diag) -> Vec<MountPoint> {
    let mut out = Vec::new();
    let uid = |m: &Node, key: &str, d: &mut Diag| {
        m.opt(d, key, |n, d| n.uint(d, 0..=4_294_967_294))
            .map(|v| v as u32)
    };
    if let Some(list) = g.get("mount_points") {
        for m in list.items(d, "an array of {host_path, container_path}") {
            let host = m.opt(d, "host_path", |n, d| abs_path(n, d));
            let guest = m.opt(d, "container_path", |n, d| abs_path(n, d));
            if !m.has("host_path") || !m.has("container_path") {
                m.error(
                    d,
                    Problem::Missing("\"host_path\" and \"container_path\"".into()),
                );
            }
            if let (Some(host), Some(guest)) = (host, guest) {
                out.push(MountPoint {
                    kind: MountKind::Bind,
                    source: host.to_string(),
                    guest_path: guest,
                    owner_uid: uid(&m, "owner_uid", d),
                    owner_gid: uid(&m, "owner_gid", d),
                    host_path: Some(host),
                });
            }
        }
    }
    if let Some(list) = g.get("zfs_volumes") {
        for z in list.items(d, "an array of {name, pool, size_gb, mount_point}") {
            out.extend(zfs_volume(&z, d));
        }
    }
    // `volumes`: NFS shares of VMs; in older LXC configs either a ZFS dataset created on the
    // host and bind-mounted (`{name, pool, size_gb, mount_point}`) or a bind
    // (`{path, mount_point}`). The shape, not a `type` key, tells them apart there.
    if let Some(list) = g.get("volumes") {
        for v in list.items(d, "an array of volumes") {
            let vtype = v.opt(d, "type", |n, d| n.text(d, "a volume type"));
            match vtype.as_deref() {
                Some("nfs") => out.extend(nfs_volume(&v, d)),
                Some(_) => v.warn(d, "only NFS volumes are understood; kept out of the facts"),
                None if v.has("pool") => out.extend(zfs_volume(&v, d)),
                None if kind == GuestKind::Lxc => {
                    let host = v.opt(d, "path", |n, d| abs_path(n, d));
                    let guest = v.opt(d, "mount_point", |n, d| abs_path(n, d));
                    match (host, guest) {
                        (Some(host), Some(guest)) => out.push(MountPoint {
                            kind: MountKind::Bind,
                            source: host.to_string(),
                            guest_path: guest,
                            owner_uid: None,
                            owner_gid: None,
                            host_path: Some(host),
                        }),
                        _ => v.error(
                            d,
                            Problem::Missing(
                                "\"path\" and \"mount_point\" (a bind), or \"name\", \"pool\" and \"mount_point\" (a ZFS dataset)"
                                    .into(),
                            ),
                        ),
                    }
                }
                None => out.extend(nfs_volume(&v, d)),
            }
        }
    }
    out
}

fn zfs_volume(z: &Node, d: &mut Diag) -> Option<MountPoint> {
    let name = z.opt(d, "name", |n, d| n.text(d, "a dataset name"));
    let pool = z.opt(d, "pool", |n, d| n.text(d, "a pool name"));
    let guest = z.opt(d, "mount_point", |n, d| abs_path(n, d));
    z.opt(d, "size_gb", |n, d| n.uint(d, 1..=1_048_576));
    match (name, pool, guest) {
        (Some(name), Some(pool), Some(guest)) => Some(MountPoint {
            kind: MountKind::Zfs,
            source: format!("{pool}/{name}"),
            guest_path: guest,
            owner_uid: None,
            owner_gid: None,
            host_path: None,
        }),
        _ => {
            z.error(
                d,
                Problem::Missing("\"name\", \"pool\" and \"mount_point\"".into()),
            );
            None
        }
    }
}

fn nfs_volume(v: &Node, d: &mut Diag) -> Option<MountPoint> {
    let export = v.opt(d, "path", |n, d| abs_path(n, d));
    let guest = v.opt(d, "mount_point", |n, d| abs_path(n, d));
    let server = v.opt(d, "server", |n, d| ip(n, d));
    match (export, guest) {
        (Some(export), Some(guest)) => Some(MountPoint {
            kind: MountKind::Nfs,
            source: format!("{}:{export}", server.unwrap_or_default()),
            guest_path: guest,
            owner_uid: None,
            owner_gid: None,
            // Filled in by the compiler from the hypervisor's mount_point_base.
            host_path: Some(export),
        }),
        _ => {
            v.error(d, Problem::Missing("\"path\" and \"mount_point\"".into()));
            None
        }
    }
}
