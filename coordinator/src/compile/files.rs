//! The files of a Phoenix etc directory, each parsed once (and scanned for literal
//! secrets) and kept alive for the `Node`s that borrow them.
//!
//! Layer 3, Phoenix config readers: imports layers 0–2 and `phoenix` (to find a guest's
//! own JSON again).

use super::phoenix::GuestConfig;
use super::reader::{Diag, Node, read_json};
use super::secrets;
use super::types::GuestKind;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub(crate) const LXC_FILE: &str = "phoenix_lxc_configs.json";
pub(crate) const VM_FILE: &str = "phoenix_vm_configs.json";
pub(crate) const STACKS_FILE: &str = "phoenix_stacks_config.json";
const MANIFEST_FILE: &str = "certificate-manifest.json";
const HYPERVISOR_FILE: &str = "phoenix_hypervisor_config.json";

/// Where a Phoenix Hypervisor install keeps its files: `etc/` holds the JSON configs, and
/// the base directory above it (`PHOENIX_BASE_DIR`, `/usr/local/phoenix_hypervisor` on a
/// host) holds `stacks/` and `persistent-storage/`, which `compose_file_path` is relative to.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub etc: PathBuf,
    pub base: PathBuf,
}

impl Layout {
    /// `etc` given: its parent is the base, as in the old scripts.
    pub fn from_etc(etc: PathBuf) -> Self {
        let base = etc
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".."));
        Layout { etc, base }
    }

    /// `stacks/` beside `etc/`; a flat copy (everything in one directory) keeps it inside.
    pub fn stacks_dir(&self) -> PathBuf {
        let beside = self.base.join("stacks");
        let inside = self.etc.join("stacks");
        if !beside.is_dir() && inside.is_dir() {
            inside
        } else {
            beside
        }
    }
}

/// Files of the directory, parsed once and kept alive for the `Node`s that borrow them.
pub(crate) struct Files {
    pub lxc: Option<(PathBuf, Value)>,
    pub vm: Option<(PathBuf, Value)>,
    pub stacks: Option<(PathBuf, Value)>,
    pub manifest: Option<(PathBuf, Value)>,
    pub hypervisor: Option<(PathBuf, Value)>,
}

impl Files {
    pub fn read(dir: &Path, d: &mut Diag) -> Files {
        Files {
            lxc: optional(dir, LXC_FILE, d),
            vm: optional(dir, VM_FILE, d),
            stacks: optional(dir, STACKS_FILE, d),
            manifest: optional(dir, MANIFEST_FILE, d),
            hypervisor: optional(dir, HYPERVISOR_FILE, d),
        }
    }
}

fn optional(dir: &Path, name: &str, d: &mut Diag) -> Option<(PathBuf, Value)> {
    let path = dir.join(name);
    if !path.exists() {
        return None;
    }
    let value = read_json(&path, d)?;
    secrets::scan(&Node::root(&path, &value), d);
    Some((path, value))
}

/// The guest's own JSON node again (for keys only the compiler reads).
pub(crate) fn files_node<'a>(files: &'a Files, g: &GuestConfig) -> Option<Node<'a>> {
    let (p, v) = match g.kind {
        GuestKind::Lxc => files.lxc.as_ref()?,
        GuestKind::Vm => files.vm.as_ref()?,
        GuestKind::Unspecified => return None,
    };
    let root = Node::root(p, v);
    match g.kind {
        GuestKind::Lxc => root.get("lxc_configs")?.get(&g.id.to_string()),
        _ => {
            let vms = root.get("vms")?;
            let idx = vms.value.as_array()?.iter().position(|vm| {
                vm.get("vmid").is_some_and(|x| {
                    x.as_u64() == Some(u64::from(g.id.get()))
                        || x.as_str().map(str::trim) == Some(&g.id.to_string())
                })
            })?;
            Some(Node {
                file: p,
                path: format!("vms[{idx}]"),
                value: &v["vms"][idx],
            })
        }
    }
}
