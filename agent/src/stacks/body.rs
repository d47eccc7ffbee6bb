//! A service's container as the Engine API's create body: ports, mounts (binds for
//! paths and named volumes, `Mount`s for anonymous volumes), resources, networking. Pure.

use super::plan::ContainerConfig;
use bollard::models::{
    ContainerCreateBody, DeviceMapping, DeviceRequest, EndpointIpamConfig, EndpointSettings,
    HealthConfig, HostConfig, HostConfigLogConfig, Mount, MountType, MountVolumeOptions,
    NetworkingConfig, PortBinding, ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
};
use phoenix_proto::model::compose::{Addresses, MountKind};
use std::collections::{BTreeMap, HashMap};

/// Builds the Engine API body. The first of the container's networks goes into the
/// create call (Engine API 1.41 takes only one there); `connect_network` adds the rest.
/// `inherit` (container path → volume name, from the container this one replaces) names
/// the volume an anonymous mount reuses; without an entry the engine creates a new one.
pub fn create_body(
    c: &ContainerConfig,
    labels: HashMap<String, String>,
    inherit: &BTreeMap<String, String>,
) -> ContainerCreateBody {
    let s = &c.spec;
    let none_if_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let mut exposed: Vec<String> = s.expose.clone();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &s.ports {
        let key = format!("{}/{}", p.container_port, p.protocol);
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        bindings
            .entry(key)
            .or_default()
            .get_or_insert_default()
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: Some(p.host_port.map(|h| h.to_string()).unwrap_or_default()),
            });
    }
    let anonymous: Vec<Mount> = s
        .volumes
        .iter()
        .filter(|m| m.kind == MountKind::Anonymous)
        .map(|m| Mount {
            target: Some(m.target.clone()),
            source: inherit.get(&m.target).cloned(),
            typ: Some(MountType::VOLUME),
            read_only: m.read_only.then_some(true),
            volume_options: m.nocopy.then(|| MountVolumeOptions {
                no_copy: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let binds: Vec<String> = s
        .volumes
        .iter()
        .filter(|m| m.kind != MountKind::Anonymous)
        .map(|m| {
            let mut opts = Vec::new();
            if m.read_only {
                opts.push("ro");
            }
            if m.nocopy {
                opts.push("nocopy");
            }
            // Binds (not Mounts) for both kinds, so a missing host directory is created
            // as Compose does.
            if opts.is_empty() {
                format!("{}:{}", m.source, m.target)
            } else {
                format!("{}:{}:{}", m.source, m.target, opts.join(","))
            }
        })
        .collect();
    let restart_policy = s.restart.as_deref().map(|r| {
        let (name, retries) = match r {
            "always" => (RestartPolicyNameEnum::ALWAYS, None),
            "unless-stopped" => (RestartPolicyNameEnum::UNLESS_STOPPED, None),
            "no" => (RestartPolicyNameEnum::NO, None),
            other => (
                RestartPolicyNameEnum::ON_FAILURE,
                other
                    .strip_prefix("on-failure:")
                    .and_then(|n| n.parse::<i64>().ok()),
            ),
        };
        RestartPolicy {
            name: Some(name),
            maximum_retry_count: retries,
        }
    });
    let devices: Vec<DeviceMapping> = s
        .devices
        .iter()
        .map(|d| {
            let mut parts = d.splitn(3, ':');
            let host = parts.next().unwrap_or_default().to_string();
            let inside = parts
                .next()
                .map(str::to_string)
                .unwrap_or_else(|| host.clone());
            DeviceMapping {
                path_on_host: Some(host),
                path_in_container: Some(inside),
                cgroup_permissions: Some(parts.next().unwrap_or("rwm").to_string()),
            }
        })
        .collect();
    let device_requests: Vec<DeviceRequest> = s
        .gpus
        .iter()
        .map(|g| DeviceRequest {
            driver: g.driver.clone(),
            count: g.count,
            device_ids: none_if_empty(&g.device_ids),
            capabilities: Some(vec![g.capabilities.clone()]),
            options: Some(g.options.clone().into_iter().collect()),
        })
        .collect();
    let ulimits: Vec<ResourcesUlimits> = s
        .ulimits
        .iter()
        .map(|(name, u)| ResourcesUlimits {
            name: Some(name.clone()),
            soft: Some(u.soft),
            hard: Some(u.hard),
        })
        .collect();
    let first_net = s.networks.iter().next();
    let tmpfs: HashMap<String, String> = s
        .tmpfs
        .iter()
        .map(|t| match t.split_once(':') {
            Some((path, opts)) => (path.to_string(), opts.to_string()),
            None => (t.clone(), String::new()),
        })
        .collect();
    let r = &s.resources;
    let host_config = HostConfig {
        binds: none_if_empty(&binds),
        mounts: (!anonymous.is_empty()).then_some(anonymous),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        restart_policy,
        devices: (!devices.is_empty()).then_some(devices),
        device_requests: (!device_requests.is_empty()).then_some(device_requests),
        cap_add: none_if_empty(&s.cap_add),
        ulimits: (!ulimits.is_empty()).then_some(ulimits),
        extra_hosts: none_if_empty(&s.extra_hosts),
        log_config: s.logging.as_ref().map(|l| HostConfigLogConfig {
            typ: l.driver.clone(),
            config: Some(l.options.clone().into_iter().collect()),
        }),
        init: s.init,
        dns: none_if_empty(&s.dns),
        // `network_mode` (none, host, bridge, container:<name>) or the first network.
        network_mode: s
            .network_mode
            .clone()
            .or_else(|| first_net.map(|(n, _)| n.clone())),
        nano_cpus: r.nano_cpus,
        memory: r.memory,
        pids_limit: r.pids,
        memory_reservation: r.memory_reservation,
        cpu_shares: r.cpu_shares,
        sysctls: (!s.sysctls.is_empty()).then(|| s.sysctls.clone().into_iter().collect()),
        tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
        shm_size: s.shm_size,
        readonly_rootfs: s.read_only.then_some(true),
        cap_drop: none_if_empty(&s.cap_drop),
        security_opt: none_if_empty(&s.security_opt),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(s.image.to_string()),
        cmd: s.command.clone(),
        entrypoint: s.entrypoint.clone(),
        env: Some(
            s.environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        healthcheck: s.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: h.interval,
            timeout: h.timeout,
            retries: h.retries,
            start_period: h.start_period,
            start_interval: h.start_interval,
        }),
        labels: Some(labels),
        user: s.user.clone(),
        working_dir: s.working_dir.clone(),
        hostname: s.hostname.clone(),
        stop_signal: s.stop_signal.clone(),
        // The engine takes whole seconds; a part second is rounded up so the service
        // gets at least its grace period.
        stop_timeout: s
            .stop_grace_period
            .map(|ns| ns.saturating_add(999_999_999) / 1_000_000_000),
        tty: s.tty.then_some(true),
        open_stdin: s.stdin_open.then_some(true),
        host_config: Some(host_config),
        networking_config: first_net.map(|(n, aliases)| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                n.clone(),
                endpoint(aliases.clone(), s.addresses.get(n).cloned()),
            )])),
        }),
        ..Default::default()
    }
}

/// A network endpoint with its aliases and fixed addresses.
pub(super) fn endpoint(aliases: Vec<String>, addresses: Option<Addresses>) -> EndpointSettings {
    EndpointSettings {
        aliases: Some(aliases),
        ipam_config: addresses.map(|a| EndpointIpamConfig {
            ipv4_address: a.ipv4,
            ipv6_address: a.ipv6,
            ..Default::default()
        }),
        ..Default::default()
    }
}
