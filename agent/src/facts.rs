//! What the agent tells the coordinator about its guest: OS, kernel, CPUs, memory
//! (the cgroup limit inside an LXC container, which is what the config declares), disks,
//! interfaces, uptime.

use phoenix_proto::v1;
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System};

pub fn collect() -> v1::Facts {
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_memory(MemoryRefreshKind::nothing().with_ram())
            .with_cpu(CpuRefreshKind::nothing()),
    )
    .ok();
    let (cpus, mut memory) = sys
        .as_ref()
        .map(|s| (s.cpus().len() as u32, s.total_memory()))
        .unwrap_or_default();
    if let Some(limit) = sys.as_ref().and_then(|s| s.cgroup_limits()) {
        memory = memory.min(limit.total_memory);
    }
    let disks = Disks::new_with_refreshed_list()
        .map(|d| {
            d.iter()
                .map(|d| v1::Disk {
                    mount_point: d.mount_point().display().to_string(),
                    total_bytes: d.total_space(),
                    available_bytes: d.available_space(),
                })
                .collect()
        })
        .unwrap_or_default();
    let interfaces = Networks::new_with_refreshed_list()
        .map(|n| {
            let mut list: Vec<v1::Interface> = n
                .iter()
                .map(|(name, data)| v1::Interface {
                    name: name.to_string_lossy().into_owned(),
                    addresses: data
                        .ip_networks()
                        .iter()
                        .map(|ip| format!("{}/{}", ip.addr, ip.prefix))
                        .collect(),
                })
                .collect();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            list
        })
        .unwrap_or_default();
    v1::Facts {
        hostname: System::host_name().unwrap_or_default(),
        os: System::long_os_version().unwrap_or_default(),
        kernel: System::kernel_version().unwrap_or_default(),
        cpus,
        memory_bytes: memory,
        disks,
        uptime_seconds: System::uptime().unwrap_or_default(),
        interfaces,
        packages: Default::default(),
    }
}

/// Installed versions of `names` (the packages the desired state manages), from dpkg.
/// Missing dpkg or unknown packages simply leave entries out: facts are best effort.
pub fn package_versions(names: &[String]) -> std::collections::HashMap<String, String> {
    if names.is_empty() {
        return Default::default();
    }
    let out = std::process::Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${Version}\t${db:Status-Abbrev}\n")
        .args(names)
        .output();
    let Ok(out) = out else {
        return Default::default();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (name, version, status) = (f.next()?, f.next()?, f.next()?);
            (status.starts_with("ii") && !version.is_empty())
                .then(|| (name.to_string(), version.to_string()))
        })
        .collect()
}
