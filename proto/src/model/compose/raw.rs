//! The raw file shape, exactly as YAML gives it (after `x-` extension keys are dropped,
//! see `parse`). `deny_unknown_fields` everywhere: an unsupported key fails with serde's
//! "unknown field `x`, expected one of …", which names it; the parser adds the service or
//! section. Keys Compose defines but Phoenix cannot honour are listed here too and refused
//! by `parse` with the reason (`Refused`), so the message says why, not only "unknown".

pub(super) use super::scalar::{OneOrList, RawUlimit, Scalar, SeqOrMap, StrOr, StrOrList};
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::collections::BTreeMap;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub(super) driver: Option<String>,
    #[serde(default)]
    pub(super) driver_opts: BTreeMap<String, Scalar>,
    pub(super) external: Option<bool>,
    pub(super) name: Option<String>,
    pub(super) internal: Option<bool>,
    pub(super) attachable: Option<bool>,
    pub(super) enable_ipv6: Option<bool>,
    pub(super) ipam: Option<RawIpam>,
    pub(super) labels: Option<SeqOrMap<Option<Scalar>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIpam {
    pub(super) driver: Option<String>,
    #[serde(default)]
    pub(super) config: Vec<RawIpamPool>,
    #[serde(default)]
    pub(super) options: BTreeMap<String, Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIpamPool {
    pub(super) subnet: Option<String>,
    pub(super) ip_range: Option<String>,
    pub(super) gateway: Option<String>,
    #[serde(default)]
    pub(super) aux_addresses: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVolume {
    pub(super) driver: Option<String>,
    #[serde(default)]
    pub(super) driver_opts: BTreeMap<String, Scalar>,
    pub(super) external: Option<bool>,
    pub(super) name: Option<String>,
    pub(super) labels: Option<SeqOrMap<Option<Scalar>>>,
}

/// A top-level `secrets` or `configs` entry.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileObject {
    pub(super) file: Option<String>,
    pub(super) external: Option<bool>,
    #[serde(rename = "name")]
    pub(super) _name: Option<String>,
    pub(super) environment: Option<String>,
    pub(super) content: Option<String>,
    #[serde(rename = "template_driver")]
    pub(super) _template_driver: Option<IgnoredAny>,
    #[serde(rename = "driver")]
    pub(super) _driver: Option<IgnoredAny>,
    #[serde(rename = "labels")]
    pub(super) _labels: Option<IgnoredAny>,
}

/// A service's reference to a secret or config, long syntax.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileRef {
    pub(super) source: String,
    pub(super) target: Option<String>,
    pub(super) uid: Option<Scalar>,
    pub(super) gid: Option<Scalar>,
    pub(super) mode: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) image: Option<String>,
    pub(super) build: Option<StrOr<RawBuild>>,
    pub(super) container_name: Option<String>,
    pub(super) command: Option<StrOrList>,
    pub(super) entrypoint: Option<StrOrList>,
    pub(super) environment: Option<SeqOrMap<Option<Scalar>>>,
    pub(super) env_file: Option<OneOrList<StrOr<RawEnvFile>>>,
    pub(super) ports: Option<Vec<StrOr<RawLongPort>>>,
    pub(super) expose: Option<Vec<Scalar>>,
    pub(super) volumes: Option<Vec<StrOr<RawLongVolume>>>,
    pub(super) tmpfs: Option<StrOrList>,
    pub(super) networks: Option<SeqOrMap<Option<RawServiceNetwork>>>,
    pub(super) network_mode: Option<String>,
    pub(super) restart: Option<Scalar>,
    pub(super) healthcheck: Option<RawHealthcheck>,
    pub(super) depends_on: Option<SeqOrMap<Option<RawDependsOn>>>,
    pub(super) labels: Option<SeqOrMap<Option<Scalar>>>,
    pub(super) user: Option<Scalar>,
    pub(super) working_dir: Option<String>,
    pub(super) hostname: Option<String>,
    pub(super) devices: Option<Vec<String>>,
    pub(super) deploy: Option<RawDeploy>,
    pub(super) cap_add: Option<Vec<String>>,
    pub(super) cap_drop: Option<Vec<String>>,
    pub(super) security_opt: Option<Vec<String>>,
    pub(super) ulimits: Option<BTreeMap<String, RawUlimit>>,
    pub(super) sysctls: Option<SeqOrMap<Option<Scalar>>>,
    pub(super) extra_hosts: Option<SeqOrMap<Option<Scalar>>>,
    pub(super) logging: Option<RawLogging>,
    pub(super) init: Option<bool>,
    pub(super) tty: Option<bool>,
    pub(super) stdin_open: Option<bool>,
    pub(super) read_only: Option<bool>,
    pub(super) dns: Option<StrOrList>,
    pub(super) profiles: Option<Vec<String>>,
    pub(super) secrets: Option<Vec<StrOr<RawFileRef>>>,
    pub(super) configs: Option<Vec<StrOr<RawFileRef>>>,
    pub(super) stop_signal: Option<String>,
    pub(super) stop_grace_period: Option<String>,
    pub(super) shm_size: Option<Scalar>,
    pub(super) pull_policy: Option<String>,
    /// `os/arch[/variant]`: accepted when it is the engine's own (the agent asks it).
    pub(super) platform: Option<String>,
    /// Legacy service-level resource keys (Compose file format 2), same meaning as
    /// `deploy.resources`.
    pub(super) cpus: Option<Scalar>,
    pub(super) mem_limit: Option<Scalar>,
    pub(super) mem_reservation: Option<Scalar>,
    pub(super) pids_limit: Option<Scalar>,
    /// Relative CPU weight (the engine's `CpuShares`).
    pub(super) cpu_shares: Option<Scalar>,
    pub(super) scale: Option<Scalar>,
    /// `docker compose watch` only; `up` ignores it, and so does Phoenix.
    #[serde(rename = "develop")]
    pub(super) _develop: Option<IgnoredAny>,
    // Compose keys Phoenix refuses, each with its reason (see `parse::REFUSED`). Listed
    // so the error says why instead of "unknown field".
    pub(super) privileged: Option<IgnoredAny>,
    pub(super) pid: Option<IgnoredAny>,
    pub(super) ipc: Option<IgnoredAny>,
    pub(super) userns_mode: Option<IgnoredAny>,
    pub(super) cgroup_parent: Option<IgnoredAny>,
    pub(super) runtime: Option<IgnoredAny>,
    pub(super) volumes_from: Option<IgnoredAny>,
    pub(super) links: Option<IgnoredAny>,
    pub(super) external_links: Option<IgnoredAny>,
}

/// One `env_file` entry in long syntax.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvFile {
    pub(super) path: String,
    pub(super) required: Option<bool>,
    pub(super) format: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuild {
    pub(super) context: Option<String>,
    pub(super) dockerfile: Option<String>,
    pub(super) dockerfile_inline: Option<String>,
    pub(super) args: Option<SeqOrMap<Option<Scalar>>>,
    pub(super) target: Option<String>,
    pub(super) labels: Option<SeqOrMap<Option<Scalar>>>,
    pub(super) network: Option<String>,
    pub(super) shm_size: Option<Scalar>,
    pub(super) extra_hosts: Option<SeqOrMap<Option<Scalar>>>,
    pub(super) no_cache: Option<bool>,
    pub(super) pull: Option<bool>,
    /// Accepted when every one is the engine's own platform (the agent asks it).
    pub(super) platforms: Option<Vec<String>>,
    // Refused with their reason, see `parse::build`.
    pub(super) additional_contexts: Option<IgnoredAny>,
    pub(super) ssh: Option<IgnoredAny>,
    pub(super) secrets: Option<IgnoredAny>,
    pub(super) entitlements: Option<IgnoredAny>,
    pub(super) privileged: Option<IgnoredAny>,
    pub(super) cache_from: Option<IgnoredAny>,
    pub(super) cache_to: Option<IgnoredAny>,
    pub(super) tags: Option<IgnoredAny>,
    pub(super) isolation: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLongPort {
    pub(super) target: Scalar,
    pub(super) published: Option<Scalar>,
    pub(super) host_ip: Option<String>,
    pub(super) protocol: Option<String>,
    /// `host` or `ingress`: the same on a single engine (ingress is a swarm routing mesh).
    pub(super) mode: Option<String>,
    #[serde(rename = "name")]
    pub(super) _name: Option<String>,
    #[serde(rename = "app_protocol")]
    pub(super) _app_protocol: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLongVolume {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) source: Option<String>,
    pub(super) target: String,
    pub(super) read_only: Option<bool>,
    pub(super) bind: Option<RawBindOptions>,
    pub(super) volume: Option<RawVolumeOptions>,
    pub(super) tmpfs: Option<RawTmpfsOptions>,
    #[serde(rename = "consistency")]
    pub(super) _consistency: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBindOptions {
    pub(super) create_host_path: Option<bool>,
    pub(super) selinux: Option<String>,
    pub(super) propagation: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVolumeOptions {
    pub(super) nocopy: Option<bool>,
    pub(super) subpath: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTmpfsOptions {
    pub(super) size: Option<Scalar>,
    pub(super) mode: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServiceNetwork {
    #[serde(default)]
    pub(super) aliases: Vec<String>,
    pub(super) ipv4_address: Option<String>,
    pub(super) ipv6_address: Option<String>,
    #[serde(rename = "priority")]
    pub(super) _priority: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDependsOn {
    pub(super) condition: Option<String>,
    /// Restart the dependent when the dependency is restarted by a `docker compose`
    /// command; Phoenix restarts nothing by command, so there is nothing to honour.
    #[serde(rename = "restart")]
    pub(super) _restart: Option<bool>,
    /// Whether a missing dependency is an error; every dependency is required here.
    pub(super) required: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthcheck {
    pub(super) test: Option<StrOrList>,
    pub(super) interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) start_period: Option<String>,
    pub(super) start_interval: Option<String>,
    pub(super) retries: Option<u32>,
    pub(super) disable: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeploy {
    pub(super) resources: Option<RawResources>,
    pub(super) replicas: Option<Scalar>,
    pub(super) mode: Option<String>,
    pub(super) restart_policy: Option<RawRestartPolicy>,
    // Swarm scheduling only; `docker compose up` ignores them on a single engine, and so
    // does Phoenix (accepted so files written for both still load).
    #[serde(rename = "placement")]
    pub(super) _placement: Option<IgnoredAny>,
    pub(super) labels: Option<SeqOrMap<Option<Scalar>>>,
    #[serde(rename = "update_config")]
    pub(super) _update_config: Option<IgnoredAny>,
    #[serde(rename = "rollback_config")]
    pub(super) _rollback_config: Option<IgnoredAny>,
    #[serde(rename = "endpoint_mode")]
    pub(super) _endpoint_mode: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRestartPolicy {
    pub(super) condition: Option<String>,
    pub(super) max_attempts: Option<u32>,
    /// Swarm's restart pacing; the engine's restart policy has no such knob (Compose
    /// drops them too).
    #[serde(rename = "delay")]
    pub(super) _delay: Option<IgnoredAny>,
    #[serde(rename = "window")]
    pub(super) _window: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResources {
    pub(super) limits: Option<RawLimits>,
    pub(super) reservations: Option<RawReservations>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) cpus: Option<Scalar>,
    pub(super) memory: Option<Scalar>,
    pub(super) pids: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReservations {
    pub(super) cpus: Option<Scalar>,
    pub(super) memory: Option<Scalar>,
    #[serde(default)]
    pub(super) devices: Vec<RawDeviceRequest>,
    pub(super) generic_resources: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeviceRequest {
    pub(super) driver: Option<String>,
    pub(super) count: Option<Scalar>,
    pub(super) device_ids: Option<Vec<String>>,
    pub(super) capabilities: Option<Vec<String>>,
    #[serde(default)]
    pub(super) options: BTreeMap<String, Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogging {
    pub(super) driver: Option<String>,
    #[serde(default)]
    pub(super) options: BTreeMap<String, Scalar>,
}
