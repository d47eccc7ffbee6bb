//! The typed Compose project: what the parser produces, what a `StackSpec` carries and what
//! the agent renders into containers.
//!
//! Maps are BTreeMaps so the serialized form (and the config hash the agent builds from a
//! service) does not depend on key order in the file. The serialized form of `Service` is
//! the agent's config-hash input: a field renamed or skipped when empty would recreate
//! every container once, so serialization stays exactly as it is; `default` only eases
//! deserialization.

use super::{ComposeError, DEFAULT_NETWORK, ImageRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A parsed, interpolated and validated Compose project. The fields are private: one is
/// obtained from [`super::parse`] or by deserializing (which runs the same checks), never
/// assembled unchecked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "ProjectFields")]
pub struct ComposeProject {
    services: BTreeMap<String, Service>,
    #[serde(default)]
    networks: BTreeMap<String, NetworkDef>,
    #[serde(default)]
    volumes: BTreeMap<String, VolumeDef>,
}

/// The wire shape of [`ComposeProject`] before its checks.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ProjectFields {
    pub(super) services: BTreeMap<String, Service>,
    #[serde(default)]
    pub(super) networks: BTreeMap<String, NetworkDef>,
    #[serde(default)]
    pub(super) volumes: BTreeMap<String, VolumeDef>,
}

/// Adds the implicit `default` network (as Compose does when a service names no network),
/// then runs every check.
impl TryFrom<ProjectFields> for ComposeProject {
    type Error = ComposeError;
    fn try_from(f: ProjectFields) -> Result<Self, ComposeError> {
        let mut networks = f.networks;
        if f.services.values().any(|s| s.networks.is_empty()) {
            networks.entry(DEFAULT_NETWORK.to_string()).or_default();
        }
        let project = ComposeProject {
            services: f.services,
            networks,
            volumes: f.volumes,
        };
        project.validate()?;
        Ok(project)
    }
}

impl ComposeProject {
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

    /// The service whose `container_name` is `name`.
    pub fn service_with_container_name(&self, name: &str) -> Option<&str> {
        self.services
            .iter()
            .find(|(_, s)| s.container_name.as_deref() == Some(name))
            .map(|(k, _)| k.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    /// A named volume declared under top-level `volumes`.
    Volume,
    /// A host path.
    Bind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub kind: MountKind,
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Durations are nanoseconds, as the Engine API wants them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
}

impl ComposeProject {
    /// Builds and checks a project; the parser's only way in.
    pub(super) fn checked(
        services: BTreeMap<String, Service>,
        networks: BTreeMap<String, NetworkDef>,
        volumes: BTreeMap<String, VolumeDef>,
    ) -> Result<Self, ComposeError> {
        ComposeProject::try_from(ProjectFields {
            services,
            networks,
            volumes,
        })
    }
}
