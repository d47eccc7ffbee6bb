//! The typed Compose project: what the parser produces, what a `StackSpec` carries and what
//! the agent renders into containers.
//!
//! Maps are BTreeMaps so the serialized form (and the config hash the agent builds from a
//! service) does not depend on key order in the file. The serialized form of `Service` is
//! the agent's config-hash input: a field renamed or skipped when empty would recreate
//! every container once, so the fields of the first subset serialize exactly as they
//! always did. Fields added later are skipped while unused (`skip_serializing_if`), so a
//! service that does not use them hashes as before and no container is recreated by an
//! upgrade; `default` only eases deserialization.

use super::{ComposeError, DEFAULT_NETWORK, ImageRef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A parsed, interpolated and validated Compose project. The fields are private: one is
/// obtained from [`super::parse`] or by deserializing (which runs the same checks), never
/// assembled unchecked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(try_from = "ProjectFields")]
pub struct ComposeProject {
    /// Top-level `name`: the Compose project name, which names containers, networks and
    /// volumes (`<name>-<service>-<n>`, `<name>_<key>`). Without it the stack's name is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    services: BTreeMap<String, Service>,
    #[serde(default)]
    networks: BTreeMap<String, NetworkDef>,
    #[serde(default)]
    volumes: BTreeMap<String, VolumeDef>,
    /// What the parser substituted or dropped and the operator should know: unset
    /// variables (field and name, never a value), environment entries left unset. Carried
    /// so the agent prints them in its plan and log; not part of any container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// The wire shape of [`ComposeProject`] before its checks.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub(super) struct ProjectFields {
    #[serde(default)]
    pub(super) name: Option<String>,
    pub(super) services: BTreeMap<String, Service>,
    #[serde(default)]
    pub(super) networks: BTreeMap<String, NetworkDef>,
    #[serde(default)]
    pub(super) volumes: BTreeMap<String, VolumeDef>,
    #[serde(default)]
    pub(super) warnings: Vec<String>,
}

/// Adds the implicit `default` network (as Compose does when a service names no network),
/// then runs every check.
impl TryFrom<ProjectFields> for ComposeProject {
    type Error = ComposeError;
    fn try_from(f: ProjectFields) -> Result<Self, ComposeError> {
        let mut networks = f.networks;
        if f.services
            .values()
            .any(|s| s.networks.is_empty() && s.network_mode.is_none())
        {
            networks.entry(DEFAULT_NETWORK.to_string()).or_default();
        }
        let project = ComposeProject {
            name: f.name,
            services: f.services,
            networks,
            volumes: f.volumes,
            warnings: f.warnings,
        };
        project.validate()?;
        Ok(project)
    }
}

impl ComposeProject {
    /// The top-level `name`, when the file gives one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn services(&self) -> &BTreeMap<String, Service> {
        &self.services
    }

    /// Top-level networks, `default` included when a service joins it implicitly.
    pub fn networks(&self) -> &BTreeMap<String, NetworkDef> {
        &self.networks
    }

    pub fn volumes(&self) -> &BTreeMap<String, VolumeDef> {
        &self.volumes
    }

    /// The parser's warnings, one line each (`<field>: …`); never a value.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The service whose `container_name` is `name`.
    pub fn service_with_container_name(&self, name: &str) -> Option<&str> {
        self.services
            .iter()
            .find(|(_, s)| s.container_name.as_deref() == Some(name))
            .map(|(k, _)| k.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub image: ImageRef,
    #[serde(default)]
    pub container_name: Option<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Absolute paths; their content is merged under `environment` when the stack renders.
    #[serde(default)]
    pub env_files: Vec<String>,
    /// `env_file` entries with `required: false`: merged when present on the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub optional_env_files: Vec<String>,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub volumes: Vec<Mount>,
    /// Network key (as declared under top-level `networks`) → aliases.
    #[serde(default)]
    pub networks: BTreeMap<String, Vec<String>>,
    /// `no`, `always`, `unless-stopped`, `on-failure` or `on-failure:N`.
    #[serde(default)]
    pub restart: Option<String>,
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default)]
    pub depends_on: BTreeMap<String, Condition>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default)]
    pub gpus: Vec<DeviceRequest>,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub ulimits: BTreeMap<String, Ulimit>,
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    #[serde(default)]
    pub logging: Option<Logging>,
    #[serde(default)]
    pub init: Option<bool>,
    #[serde(default)]
    pub dns: Vec<String>,
    // Added after the first subset: skipped while unused, see the module doc.
    /// Build the image on the guest instead of pulling it; `image` names the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// `deploy.replicas` (or `scale`): that many containers, `<project>-<service>-<n>`.
    /// `None` means one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// `deploy.resources` limits and reservations (and the legacy `cpus`, `mem_limit`,
    /// `mem_reservation`, `pids_limit`).
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Ports exposed to other containers only, `port/protocol`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// `none`, `host` (a grant) or `service:<name>`; the service then joins no network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// Static addresses per network key (which must declare an `ipam` subnet).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub addresses: BTreeMap<String, Addresses>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Nanoseconds; the engine takes whole seconds (rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<i64>,
    /// `/path` or `/path:options` (e.g. `size=64m,mode=1777`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// `never` or `build`; `None` is Compose's default (`missing`: pull when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin_open: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Only `no-new-privileges[:true|false]`: it narrows what a container may do. Options
    /// that loosen confinement are refused by the parser.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    /// `platform` (`os/arch[/variant]`): the agent runs the service only when it is the
    /// engine's own platform (no emulation), refusing the stack otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// CPU, memory and PID limits and reservations, in the engine's units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// `limits.cpus` in billionths of a CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<i64>,
    /// `limits.memory` in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
    /// `reservations.memory` in bytes (a soft limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<i64>,
    /// `cpu_shares`: relative CPU weight. (`reservations.cpus` is not mapped: Compose
    /// treats it as a swarm scheduling option and sets nothing on the container.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<i64>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }
}

/// A service's fixed addresses on one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Addresses {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}

/// What `docker build` needs, paths already resolved on the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// Absolute directory on the guest (beneath the project directory as written).
    pub context: String,
    /// Relative to the context; `Dockerfile` when neither this nor `dockerfile_inline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_inline: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pull: bool,
    /// `platforms`: accepted only when each is the engine's own platform (the agent
    /// asks the engine); a multi-platform build would need emulation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Port {
    #[serde(default)]
    pub host_ip: Option<String>,
    #[serde(default)]
    pub host_port: Option<u16>,
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    /// A named volume declared under top-level `volumes`.
    Volume,
    /// A host path.
    Bind,
    /// An anonymous volume (`- /data`): the engine names it; `source` is empty. Kept
    /// across a recreate as Compose keeps it (the new container mounts the old one's).
    Anonymous,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub kind: MountKind,
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    /// Named volumes only: do not copy the image's content into an empty volume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nocopy: bool,
}

/// Durations are nanoseconds, as the Engine API wants them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    /// `["NONE"]` when `disable: true`.
    pub test: Vec<String>,
    #[serde(default)]
    pub interval: Option<i64>,
    #[serde(default)]
    pub timeout: Option<i64>,
    #[serde(default)]
    pub start_period: Option<i64>,
    #[serde(default)]
    pub retries: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceRequest {
    #[serde(default)]
    pub driver: Option<String>,
    /// -1 means all devices.
    #[serde(default)]
    pub count: Option<i64>,
    #[serde(default)]
    pub device_ids: Vec<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Logging {
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NetworkDef {
    #[serde(default)]
    pub external: bool,
    /// Engine-side name when set explicitly; otherwise `<stack>_<key>`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attachable: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_ipv6: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Ipam>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Ipam {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<IpamPool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct IpamPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct VolumeDef {
    #[serde(default)]
    pub external: bool,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl ComposeProject {
    /// Builds and checks a project; the parser's only way in.
    #[cfg(any(test, feature = "compose-text"))]
    pub(super) fn checked(
        name: Option<String>,
        services: BTreeMap<String, Service>,
        networks: BTreeMap<String, NetworkDef>,
        volumes: BTreeMap<String, VolumeDef>,
        warnings: Vec<String>,
    ) -> Result<Self, ComposeError> {
        ComposeProject::try_from(ProjectFields {
            name,
            services,
            networks,
            volumes,
            warnings,
        })
    }
}
