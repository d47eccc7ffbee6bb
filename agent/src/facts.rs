//! What the agent tells the coordinator about its guest: OS, kernel, CPUs, memory
//! (the cgroup limit inside an LXC container, which is what the config declares), disks,
//! interfaces, uptime, and what is mounted where (compared with the declared mount
//! points and volumes).

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
        mounts: std::fs::read_to_string("/proc/self/mountinfo")
            .map(|s| mounts(&s))
            .unwrap_or_default(),
    }
}

/// Filesystems that are never a declared mount point or volume; left out so the facts
/// stay small on a host with many of them.
const PSEUDO: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "devtmpfs",
    "efivarfs",
    "nsfs",
    "rpc_pipefs",
    "selinuxfs",
];
/// Upper bound on reported mounts: the facts travel in every hello.
const MAX_MOUNTS: usize = 256; // the coordinator keeps as many (agent_service.rs)

/// Mounts from `/proc/self/mountinfo` text: mount point (field 5), then after the `-`
/// separator the filesystem type and source. Octal escapes (`\040` for a space) are
/// decoded; malformed lines are skipped.
pub fn mounts(mountinfo: &str) -> Vec<v1::Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == "-")?;
            let fs_type = fields.get(sep + 1)?;
            let source = fields.get(sep + 2)?;
            (!PSEUDO.contains(fs_type)).then(|| v1::Mount {
                mount_point: unescape(point),
                source: unescape(source),
                fs_type: (*fs_type).to_owned(),
            })
        })
        .take(MAX_MOUNTS)
        .collect()
}

/// The kernel writes space, tab, newline and backslash in mountinfo as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_point_source_and_type() {
        let text = "\
22 1 0:21 / / rw,relatime shared:1 - zfs quickOS-tank/subvol-950-disk-0 rw,xattr
23 22 0:5 / /proc rw,nosuid - proc proc rw
24 22 0:40 / /data rw,relatime - zfs quickOS-tank/qdrant-data rw
25 22 8:1 /srv/my\\040models /mnt/my\\040models rw shared:2 master:1 - ext4 /dev/sda1 rw
garbage
";
        let m = mounts(text);
        let got: Vec<(&str, &str, &str)> = m
            .iter()
            .map(|m| {
                (
                    m.mount_point.as_str(),
                    m.source.as_str(),
                    m.fs_type.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("/", "quickOS-tank/subvol-950-disk-0", "zfs"),
                ("/data", "quickOS-tank/qdrant-data", "zfs"),
                ("/mnt/my models", "/dev/sda1", "ext4"),
            ]
        );
    }

    #[test]
    fn the_real_mountinfo_parses() {
        let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let m = mounts(&text);
        assert!(m.iter().any(|m| m.mount_point == "/"), "{m:?}");
        assert!(m.iter().all(|m| m.fs_type != "proc"));
    }
}
