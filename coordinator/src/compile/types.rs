//! Layer 0: what the compiler produces (a desired state per guest and what is kept beside
//! it) and how it reports what was wrong (errors and warnings naming file and JSON path).
//! Imports nothing of the compiler.

use phoenix_proto::model::{AbsPath, GuestId, GuestSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a guest came from: an LXC container (CTID) or a VM (vmid). Native files do
/// not say, hence `Unspecified`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GuestKind {
    Lxc,
    Vm,
    Unspecified,
}

impl fmt::Display for GuestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GuestKind::Lxc => "lxc",
            GuestKind::Vm => "vm",
            GuestKind::Unspecified => "guest",
        })
    }
}

/// What the configs declare about the guest itself. The agent cannot change these
/// (Proxmox does), so they are compared with what the agent observes, not applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Declared {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Root disk size (`storage_size_gb` for LXC, `disk_size_gb` for VMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_gb: Option<u64>,
    /// Addresses in CIDR form (`10.0.0.153/24`) or `dhcp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
}

/// How a host directory or share reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    /// LXC `mount_points` bind mount.
    Bind,
    /// LXC `zfs_volumes` dataset.
    Zfs,
    /// VM `volumes` NFS share.
    Nfs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MountPoint {
    pub kind: MountKind,
    /// Host path (bind), `pool/name` (ZFS) or `server:/export` (NFS).
    pub source: String,
    /// Where the guest sees it; certificate paths are mapped through this.
    pub guest_path: AbsPath,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_gid: Option<u32>,
    /// Host-side path of the data, used to map certificate-manifest paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<AbsPath>,
}

/// `ports: ["host:guest"]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PortMapping {
    pub host: u16,
    pub guest: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FirewallAction {
    Accept,
    Drop,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FirewallRule {
    pub direction: Direction,
    pub action: FirewallAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
    /// `tcp`, `udp`, `icmp`, or another protocol name Proxmox accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Single ports or `first:last` ranges (the files write `"80,443"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Firewall {
    pub enabled: bool,
    pub rules: Vec<FirewallRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NetworkInterface {
    /// `eth0` unless the file says otherwise.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// CIDR or `dhcp`.
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TraefikService {
    pub name: String,
    pub port: u16,
}

/// What the configs say that the agent does not apply but that must not be lost:
/// checked here, shown by plan/status, compared where the agent can observe it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GuestFacts {
    /// Guests that must be up before this one (`dependencies`): start ordering.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<GuestId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_from: Option<GuestId>,
    #[serde(default)]
    pub is_template: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_boot: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_delay: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<NetworkInterface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_points: Vec<MountPoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<Firewall>,
    /// Rules a stack manifest (`stacks/<name>/phoenix.json`) asks for, by stack.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stack_firewall_rules: BTreeMap<String, Vec<FirewallRule>>,
    /// Host GPU indices passed through (`gpu_assignment`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traefik_service: Option<TraefikService>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portainer_role: Option<String>,
}

/// One guest's compiled desired state plus what is kept beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CompiledGuest {
    pub name: String,
    pub kind: GuestKind,
    pub spec: GuestSpec,
    pub declared: Declared,
    pub facts: GuestFacts,
}

/// Everything one run compiled. Contains no literal secrets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compiled {
    pub guests: BTreeMap<GuestId, CompiledGuest>,
    pub warnings: Vec<Warning>,
}

impl Compiled {
    /// Guests in an order that starts every guest after its `dependencies` (ties by id).
    /// `load` already rejected cycles, so every guest appears; for a hand-built value
    /// with a cycle the guests come by id.
    pub fn start_order(&self) -> Vec<GuestId> {
        let nodes = self
            .guests
            .iter()
            .map(|(id, g)| (*id, g.facts.dependencies.iter().copied()));
        phoenix_proto::graph::sort(nodes).unwrap_or_else(|_| self.guests.keys().copied().collect())
    }
}

/// Something accepted but worth a look: an ignored key, a literal secret, a script whose
/// effect is not compiled. Never carries a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub file: PathBuf,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        located(f, &self.file, &self.path, &self.message)
    }
}

/// `file: path: what`, or `file: what` for the file as a whole.
fn located(
    f: &mut fmt::Formatter<'_>,
    file: &Path,
    path: &str,
    what: &dyn fmt::Display,
) -> fmt::Result {
    if path.is_empty() {
        write!(f, "{}: {what}", file.display())
    } else {
        write!(f, "{}: {path}: {what}", file.display())
    }
}

/// What was wrong with one value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("cannot read the file: {0}")]
    Read(String),
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("expected {expected}, found {found}")]
    Expected { expected: String, found: String },
    #[error("missing; expected {0}")]
    Missing(String),
    #[error("guest {0} is defined twice")]
    DuplicateGuest(GuestId),
    #[error("names guest {0}, which no config defines")]
    UnknownGuest(GuestId),
    #[error("dependency cycle: {0}")]
    DependencyCycle(String),
    #[error("unknown feature {name:?}; expected one of {known}")]
    UnknownFeature { name: String, known: String },
    /// A compiled resource the desired-state model rejects (its `ModelError` text).
    #[error("{0}")]
    Model(String),
    #[error("{0}")]
    Conflict(String),
    /// The agent's Compose parser rejected the stack's compose file.
    #[error("{0}")]
    Compose(String),
}

/// One error: the file, the JSON path inside it, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub path: String,
    pub problem: Problem,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        located(f, &self.file, &self.path, &self.problem)
    }
}

/// All errors of one run, in file order, and the run's warnings (a literal secret must be
/// reported even when something else failed). `Display` shows the errors only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>, pub Vec<Warning>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} config error{}:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Inputs that do not come from the config files.
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    /// PEM of the roots the `trusted_ca` feature installs. Unset, the feature copies the
    /// Step-CA root that existing Phoenix shares into each guest (as its script does).
    pub trust_roots_pem: Option<String>,
}
