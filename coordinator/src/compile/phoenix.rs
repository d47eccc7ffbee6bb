//! Readers for the files of an existing Phoenix Hypervisor etc directory, into typed
//! guest configs. Lenient where the real files are (see the module doc of `reader`),
//! strict where a value cannot mean anything.
//!
//! Layer 3, Phoenix config readers: imports layers 0–2 and its helpers `facts`, `vllm`.

use super::facts::{firewall, gpus, mac_address, mounts, network, port_mapping, traefik_service};
use super::keys;
use super::names::{domain_ok, simple_name_ok};
use super::reader::{Diag, Node, abs_path, guest_or_root};
use super::types::{GuestFacts, GuestKind, MountKind, Problem};
use super::vllm::{self, VllmArgs};
use phoenix_proto::model::GuestId;
use phoenix_proto::model::{Declared, DeclaredMount, MountSource};
use serde_json::Value;
use std::path::PathBuf;

/// NVIDIA globals; per guest or, as the scripts do, from the file root.
#[derive(Debug, Clone, Default)]
pub(crate) struct Nvidia {
    pub driver_version: Option<String>,
    pub repo_url: Option<String>,
    pub runfile_url: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct StackRef {
    pub name: String,
    pub environment: String,
    pub path: String,
}

/// One guest as the files describe it, before compilation.
#[derive(Debug, Clone)]
pub(crate) struct GuestConfig {
    pub id: GuestId,
    pub kind: GuestKind,
    pub name: String,
    pub file: PathBuf,
    pub path: String,
    pub declared: Declared,
    pub facts: GuestFacts,
    /// Feature names with their JSON paths, in file order (the scripts' run order).
    pub features: Vec<(String, String)>,
    pub application_script: Option<(String, String)>,
    pub vllm: Option<VllmArgs>,
    pub stacks: Vec<StackRef>,
    pub nvidia: Nvidia,
    pub bootstrap_ca_url: Option<String>,
    pub unprivileged: bool,
}

/// Host settings the compiler needs from `phoenix_hypervisor_config.json`.
#[derive(Debug, Clone)]
pub(crate) struct Hypervisor {
    /// Where Proxmox mounts storages on the host (`/mnt/pve`); NFS exports of VMs are
    /// seen by the host under it.
    pub mount_point_base: String,
    /// `12.8` → package `cuda-toolkit-12-8`.
    pub cuda_version: String,
    /// `domain_name`: the internal domain Traefik routes `<service>.<domain>` in.
    pub domain_name: Option<String>,
}

impl Default for Hypervisor {
    fn default() -> Self {
        Hypervisor {
            mount_point_base: "/mnt/pve".into(),
            cuda_version: "12.8".into(),
            domain_name: None,
        }
    }
}

pub(crate) fn hypervisor(root: &Node, d: &mut Diag) -> Hypervisor {
    let mut h = Hypervisor::default();
    if let Some(base) = root.opt(d, "mount_point_base", |n, d| abs_path(n, d)) {
        h.mount_point_base = base.to_string();
    }
    if let Some(n) = root.get("domain_name") {
        match n.text(d, "a domain name") {
            Some(v) if domain_ok(&v) => h.domain_name = Some(v),
            Some(_) => n.expected(d, "a domain name of DNS labels (a-z, 0-9, '-')"),
            None => {}
        }
    }
    if let Some(v) = root.get("nvidia_driver").and_then(|n| {
        n.opt(d, "cuda_version", |n, d| {
            n.text(d, "a CUDA version such as \"12.8\"")
        })
    }) {
        if v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            h.cuda_version = v;
        } else if let Some(n) = root
            .get("nvidia_driver")
            .and_then(|n| n.get("cuda_version"))
        {
            n.expected(d, "a CUDA version such as \"12.8\"");
        }
    }
    h
}

/// `phoenix_lxc_configs.json`: `lxc_configs` keyed by CTID string.
pub(crate) fn lxc_guests(root: &Node, d: &mut Diag) -> Vec<GuestConfig> {
    let Some(configs) = root.get("lxc_configs") else {
        root.error(
            d,
            Problem::Missing("an object \"lxc_configs\" keyed by CTID".into()),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, g) in configs.entries(d, "an object keyed by CTID") {
        let Some(id) = g.key_guest_id(&key, d, "a CTID") else {
            continue;
        };
        if !g.is_object() {
            g.expected(d, "an object describing the container");
            continue;
        }
        out.push(guest(GuestKind::Lxc, id, &g, root, None, d));
    }
    out
}

/// `phoenix_vm_configs.json`: `vm_defaults` + array `vms[]` keyed by `vmid`.
pub(crate) fn vm_guests(root: &Node, d: &mut Diag) -> Vec<GuestConfig> {
    let Some(vms) = root.get("vms") else {
        root.error(d, Problem::Missing("an array \"vms\"".into()));
        return Vec::new();
    };
    let defaults = root.get("vm_defaults");
    if let Some(def) = &defaults {
        keys::check(def, keys::VM, d);
    }
    let mut out = Vec::new();
    for vm in vms.items(d, "an array of VM objects") {
        if !vm.is_object() {
            vm.expected(d, "an object describing the VM");
            continue;
        }
        let Some(id) = (match vm.get("vmid") {
            Some(n) => n.guest_id(d),
            None => {
                vm.error(d, Problem::Missing("\"vmid\", the VM's id".into()));
                None
            }
        }) else {
            continue;
        };
        out.push(guest(GuestKind::Vm, id, &vm, root, defaults.as_ref(), d));
    }
    out
}

fn guest(
    kind: GuestKind,
    id: GuestId,
    g: &Node,
    root: &Node,
    defaults: Option<&Node>,
    d: &mut Diag,
) -> GuestConfig {
    let known = if kind == GuestKind::Vm {
        keys::VM
    } else {
        keys::LXC
    };
    keys::check(g, known, d);
    // VMs fall back to `vm_defaults`, LXC keys to the file root (jq_get_value).
    let fallback = |key: &str| -> Option<Node> {
        g.get(key).or_else(|| match defaults {
            Some(def) => def.get(key),
            None => root.get(key).filter(|_| kind == GuestKind::Lxc),
        })
    };
    let name = match g.get("name") {
        Some(n) => n.text(d, "the guest's name").unwrap_or_default(),
        None => {
            g.warn(d, "no \"name\"; using the id");
            format!("guest-{id}")
        }
    };
    let storage_key = if kind == GuestKind::Lxc {
        "storage_size_gb"
    } else {
        "disk_size_gb"
    };
    let mut declared = Declared {
        cores: fallback("cores")
            .and_then(|n| n.uint(d, 1..=1024))
            .map(|v| v as u32),
        memory_mb: fallback("memory_mb").and_then(|n| n.uint(d, 16..=16_777_216)),
        storage_gb: fallback(storage_key).and_then(|n| n.uint(d, 1..=1_048_576)),
        ips: Vec::new(),
        mounts: Vec::new(),
    };
    let mut facts = GuestFacts::default();
    for key in ["network_config", "secondary_network_config"] {
        if let Some(n) = g.get(key) {
            let default_name = if key == "network_config" {
                "eth0"
            } else {
                "eth1"
            };
            if let Some(iface) = network(&n, default_name, fallback("network_bridge"), d) {
                declared.ips.push(iface.ip.clone());
                facts.network.push(iface);
            }
        }
    }
    if let Some(mac) = g.opt(d, "mac_address", |n, d| mac_address(n, d))
        && let Some(first) = facts.network.first_mut()
        && first.mac_address.is_none()
    {
        first.mac_address = Some(mac);
    }
    facts.dependencies = g.list(d, "dependencies", "an array of guest ids", |i, d| {
        i.guest_id(d)
    });
    facts.clone_from = g
        .get("clone_from_ctid")
        .or_else(|| g.get("clone_from_vmid"))
        .and_then(|n| n.guest_id(d));
    facts.is_template = g
        .opt(d, "is_template", |n, d| n.boolean(d))
        .unwrap_or(false);
    facts.start_at_boot = g.opt(d, "start_at_boot", |n, d| n.boolean(d));
    facts.boot_order = g
        .opt(d, "boot_order", |n, d| n.uint(d, 0..=9999))
        .map(|v| v as u32);
    facts.boot_delay = g
        .opt(d, "boot_delay", |n, d| n.uint(d, 0..=86_400))
        .map(|v| v as u32);
    facts.gpus = g
        .opt(d, "gpu_assignment", |n, d| gpus(n, d))
        .unwrap_or_default();
    facts.ports = g.list(
        d,
        "ports",
        "an array of \"host:guest\" port strings",
        port_mapping,
    );
    facts.firewall = g.opt(d, "firewall", |n, d| firewall(n, d));
    facts.traefik_service = g.opt(d, "traefik_service", |n, d| traefik_service(n, d));
    facts.portainer_role = g.opt(d, "portainer_role", |n, d| n.text(d, "a Portainer role"));
    facts.mount_points = mounts(g, kind, d);
    declared.mounts = facts
        .mount_points
        .iter()
        .map(|m| DeclaredMount {
            path: m.guest_path.to_string(),
            kind: match m.kind {
                MountKind::Bind => MountSource::Bind,
                MountKind::Zfs => MountSource::Zfs,
                MountKind::Nfs => MountSource::Nfs,
            },
            source: m.source.clone(),
        })
        .collect();

    let features = g.list(d, "features", "an array of feature names", |f, d| {
        f.text(d, "a feature name").map(|s| (s, f.path.clone()))
    });
    let application_script = g.get("application_script").and_then(|n| {
        n.text(d, "a script file name in bin/")
            .map(|s| (s, n.path.clone()))
    });
    let vllm = match g.get("vllm_engine_config") {
        Some(n) => vllm::from_engine_config(&n, d),
        None => vllm::from_legacy_keys(g, d),
    };
    let stacks = g.list(
        d,
        "docker_stacks",
        "an array of stack names or {name, environment} objects",
        stack_ref,
    );
    let nvidia = Nvidia {
        driver_version: guest_or_root(g, root, "nvidia_driver_version")
            .and_then(|n| n.text(d, "an NVIDIA driver version such as \"580.76.05\"")),
        repo_url: guest_or_root(g, root, "nvidia_repo_url").and_then(|n| url(&n, d)),
        runfile_url: guest_or_root(g, root, "nvidia_runfile_url").and_then(|n| url(&n, d)),
    };
    let bootstrap_ca_url = g.opt(d, "bootstrap_ca_url", |n, d| url(n, d));
    let unprivileged = g
        .opt(d, "unprivileged", |n, d| n.boolean(d))
        .unwrap_or(kind == GuestKind::Lxc);
    GuestConfig {
        id,
        kind,
        name,
        file: g.file_buf(),
        path: g.path.clone(),
        declared,
        facts,
        features,
        application_script,
        vllm,
        stacks,
        nvidia,
        bootstrap_ca_url,
        unprivileged,
    }
}

fn url(n: &Node, d: &mut Diag) -> Option<String> {
    match n.value.as_str() {
        Some(s)
            if (s.starts_with("https://") || s.starts_with("http://"))
                && !s.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Some(s.to_string())
        }
        _ => {
            n.expected(d, "an http(s) URL");
            None
        }
    }
}

fn stack_ref(n: &Node, d: &mut Diag) -> Option<StackRef> {
    match n.value {
        Value::String(s) if simple_name_ok(s) => Some(StackRef {
            name: s.clone(),
            environment: "production".into(),
            path: n.path.clone(),
        }),
        Value::Object(_) => {
            let name = match n.get("name") {
                Some(x) => x.text(d, "a stack name")?,
                None => {
                    n.error(d, Problem::Missing("\"name\": the stack's name".into()));
                    return None;
                }
            };
            let environment = n
                .opt(d, "environment", |n, d| n.text(d, "an environment name"))
                .unwrap_or_else(|| "production".into());
            Some(StackRef {
                name,
                environment,
                path: n.path.clone(),
            })
        }
        _ => {
            n.expected(
                d,
                "a stack name (letters, digits, '-', '_', '.') or {name, environment}",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{MountKind, PortMapping};
    use serde_json::json;
    use std::path::Path;

    fn lxc(v: &Value) -> (Vec<GuestConfig>, Diag) {
        let mut d = Diag::default();
        let g = lxc_guests(&Node::root(Path::new("lxc.json"), v), &mut d);
        (g, d)
    }

    #[test]
    fn both_legacy_lxc_volume_shapes_are_declared_facts() {
        let v = json!({"lxc_configs": {"952": {
            "name": "qdrant",
            "volumes": [
                {"name": "qdrant-data", "pool": "quickOS-lxc-disks", "size_gb": 50, "mount_point": "/qdrant/storage"},
                {"path": "/mnt/pve/shared/models", "mount_point": "/models"},
                {"mount_point": "/half"}
            ]
        }}});
        let (g, d) = lxc(&v);
        let m = &g[0].facts.mount_points;
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].kind, MountKind::Zfs);
        assert_eq!(m[0].source, "quickOS-lxc-disks/qdrant-data");
        assert_eq!(m[0].guest_path.as_str(), "/qdrant/storage");
        assert_eq!(m[1].kind, MountKind::Bind);
        assert_eq!(m[1].source, "/mnt/pve/shared/models");
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
        assert_eq!(d.errors[0].path, "lxc_configs.\"952\".volumes[2]");
    }

    #[test]
    fn key_variants_of_newer_and_older_files_are_read() {
        let v = json!({
            "nvidia_driver_version": "580.76.05",
            "lxc_configs": {"120": {
                "name": "n",
                "cores": "4",
                "network_config": {"ip": "dhcp", "nameserver": "10.0.0.13, 1.1.1.1"},
                "secondary_network_config": {"ip": "192.168.1.5/24", "nameservers": ["10.0.0.13"]},
                "dependencies": [101, "1002"],
                "clone_from_ctid": 900,
                "gpu_assignment": "0, 1",
                "ports": ["8080:80", 9000],
                "unknown_future_key": {"anything": true},
                "vllm_model": "m/x",
                "vllm_port": 8001,
                "vllm_trust_remote_code": true,
                "vllm_args": ["--enforce-eager --max-num-seqs 8"]
            }}
        });
        let (g, d) = lxc(&v);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let g = &g[0];
        assert_eq!(g.declared.cores, Some(4));
        assert_eq!(g.declared.ips, ["dhcp", "192.168.1.5/24"]);
        assert_eq!(g.facts.network[0].nameservers, ["10.0.0.13", "1.1.1.1"]);
        assert_eq!(g.facts.network[1].name, "eth1");
        let deps: Vec<u32> = g.facts.dependencies.iter().map(|d| d.get()).collect();
        assert_eq!(deps, [101, 1002]);
        assert_eq!(g.facts.clone_from.map(|c| c.get()), Some(900));
        assert_eq!(g.facts.gpus, [0, 1]);
        assert_eq!(
            g.facts.ports[1],
            PortMapping {
                host: 9000,
                guest: 9000
            }
        );
        // Root fallback.
        assert_eq!(g.nvidia.driver_version.as_deref(), Some("580.76.05"));
        let args = &g.vllm.as_ref().expect("legacy vllm keys").args;
        assert_eq!(
            args,
            &[
                "--model",
                "m/x",
                "--port",
                "8001",
                "--trust_remote_code",
                "--enforce-eager",
                "--max-num-seqs",
                "8"
            ]
        );
    }

    #[test]
    fn docker_stacks_take_strings_and_objects() {
        let v = json!({"vms": [{"vmid": "1002", "docker_stacks": ["a", {"name": "b", "environment": "testing"}]}]});
        let mut d = Diag::default();
        let g = vm_guests(&Node::root(Path::new("vm.json"), &v), &mut d);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let s: Vec<(&str, &str)> = g[0]
            .stacks
            .iter()
            .map(|s| (s.name.as_str(), s.environment.as_str()))
            .collect();
        assert_eq!(s, [("a", "production"), ("b", "testing")]);
        // A missing name is a warning, not an error; the id stands in.
        assert_eq!(g[0].name, "guest-1002");
    }
}
