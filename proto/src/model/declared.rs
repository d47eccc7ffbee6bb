//! Declared (what the configs say about the guest itself) vs observed (the agent's
//! sysinfo facts). Proxmox, not the agent, sets these, so a mismatch is reported, never
//! "fixed" by the agent. The compiler produces `Declared`, the store keeps it as JSON and
//! the admin service compares it with the facts an agent reports.

use crate::v1::{Facts, Mount};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// What the configs declare about the guest itself. The agent cannot change these
/// (Proxmox does), so they are compared with what the agent observes, not applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
    /// Mount points and volumes (Proxmox mounts them; the agent only observes them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<DeclaredMount>,
}

/// A declared mount point or volume, as the guest should see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeclaredMount {
    /// Where the guest sees it.
    pub path: String,
    pub kind: MountSource,
    /// Host path (bind), `pool/name` (ZFS dataset) or `server:/export` (NFS), for the message.
    pub source: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum MountSource {
    /// LXC bind mount of a host directory: inside the guest it shows the host's filesystem,
    /// so only "something is mounted there" can be checked.
    Bind,
    /// A ZFS dataset created on the host and bind-mounted: a `zfs` mount whose source ends
    /// with the dataset's name.
    Zfs,
    /// An NFS share mounted in a VM: an `nfs`/`nfs4` mount.
    Nfs,
}

impl fmt::Display for MountSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MountSource::Bind => "bind",
            MountSource::Zfs => "zfs",
            MountSource::Nfs => "nfs",
        })
    }
}

/// Why what is mounted at a declared mount point is not what was declared, if it is not.
fn mount_mismatch(want: &DeclaredMount, mounts: &[Mount]) -> Option<String> {
    // The last mount on a path is the one the guest sees.
    let Some(m) = mounts.iter().rev().find(|m| m.mount_point == want.path) else {
        return Some("nothing mounted".into());
    };
    let ok = match want.kind {
        MountSource::Bind => true,
        MountSource::Zfs => {
            let name = want.source.rsplit('/').next().unwrap_or_default();
            m.fs_type == "zfs"
                && (m.source == want.source || m.source.ends_with(&format!("/{name}")))
        }
        MountSource::Nfs => m.fs_type.starts_with("nfs"),
    };
    (!ok).then(|| format!("{} {}", m.fs_type, m.source))
}

/// One difference, e.g. `cores: declared 4, observed 2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub field: &'static str,
    pub declared: String,
    pub observed: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: declared {}, observed {}",
            self.field, self.declared, self.observed
        )
    }
}

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// A guest kernel reports less memory than configured (VM firmware and kernel
/// reservations) and a filesystem less space than its disk: within this fraction
/// below the declared size counts as equal. More than declared is always a mismatch.
const TOLERANCE: f64 = 0.10;

fn close(declared: u64, observed: u64) -> bool {
    observed <= declared.saturating_add(declared / 100 + 1)
        && (observed as f64) >= (declared as f64) * (1.0 - TOLERANCE)
}

/// Differences between declared and observed; facts the agent did not report (zero,
/// protobuf's "unset") are not compared.
pub fn compare(declared: &Declared, facts: &Facts) -> Vec<Mismatch> {
    let mut out = Vec::new();
    if let Some(cores) = declared.cores
        && facts.cpus != 0
        && facts.cpus != cores
    {
        out.push(Mismatch {
            field: "cores",
            declared: cores.to_string(),
            observed: facts.cpus.to_string(),
        });
    }
    if let Some(mb) = declared.memory_mb
        && facts.memory_bytes != 0
        && !close(mb, facts.memory_bytes / MIB)
    {
        out.push(Mismatch {
            field: "memory_mb",
            declared: mb.to_string(),
            observed: (facts.memory_bytes / MIB).to_string(),
        });
    }
    if let Some(gb) = declared.storage_gb
        && let Some(root) = facts.disks.iter().find(|d| d.mount_point == "/")
        && root.total_bytes != 0
    {
        let observed_gb = root.total_bytes as f64 / GIB as f64;
        if !close(gb * GIB, root.total_bytes) {
            out.push(Mismatch {
                field: "storage_gb",
                declared: gb.to_string(),
                observed: format!("{observed_gb:.1}"),
            });
        }
    }
    // An agent that reports no mounts at all (older than this field) is not compared.
    if !facts.mounts.is_empty() {
        for want in &declared.mounts {
            if let Some(observed) = mount_mismatch(want, &facts.mounts) {
                out.push(Mismatch {
                    field: "mount",
                    declared: format!("{} ({} {})", want.path, want.kind, want.source),
                    observed,
                });
            }
        }
    }
    if !facts.interfaces.is_empty() {
        let observed: Vec<IpAddr> = facts
            .interfaces
            .iter()
            .flat_map(|i| i.addresses.iter())
            .filter_map(|a| a.split('/').next().and_then(|ip| ip.parse().ok()))
            .collect();
        for ip in &declared.ips {
            let Some(addr) = ip.split('/').next().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue; // "dhcp": nothing to compare
            };
            if !observed.contains(&addr) {
                let mut seen: Vec<String> = observed
                    .iter()
                    .filter(|a| !a.is_loopback())
                    .map(|a| a.to_string())
                    .collect();
                seen.dedup();
                out.push(Mismatch {
                    field: "ip",
                    declared: ip.clone(),
                    observed: if seen.is_empty() {
                        "none".into()
                    } else {
                        seen.join(", ")
                    },
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Disk, Interface};

    fn mismatches_of_101(facts: &Facts) -> Vec<String> {
        compare(&lxc_101(), facts)
            .iter()
            .map(|m| m.to_string())
            .collect()
    }

    fn lxc_101() -> Declared {
        Declared {
            cores: Some(4),
            memory_mb: Some(4096),
            storage_gb: Some(32),
            ips: vec!["10.0.0.153/24".into()],
            mounts: Vec::new(),
        }
    }

    #[test]
    fn the_issue_example_reports_cores_and_memory() {
        let facts = Facts {
            cpus: 2,
            memory_bytes: 2048 * MIB,
            ..Facts::default()
        };
        let m = mismatches_of_101(&facts);
        assert_eq!(
            m,
            [
                "cores: declared 4, observed 2",
                "memory_mb: declared 4096, observed 2048"
            ]
        );
    }

    #[test]
    fn matching_guest_has_no_mismatch_and_unset_facts_are_skipped() {
        let facts = Facts {
            cpus: 4,
            memory_bytes: 4000 * MIB,
            disks: vec![Disk {
                mount_point: "/".into(),
                total_bytes: 31 * GIB,
                available_bytes: 1,
            }],
            interfaces: vec![Interface {
                name: "eth0".into(),
                addresses: vec!["10.0.0.153/24".into(), "fe80::1/64".into()],
            }],
            ..Facts::default()
        };
        assert_eq!(compare(&lxc_101(), &facts), []);
        assert_eq!(compare(&lxc_101(), &Facts::default()), []);
    }

    #[test]
    fn wrong_ip_and_small_disk_are_reported() {
        let facts = Facts {
            disks: vec![Disk {
                mount_point: "/".into(),
                total_bytes: 16 * GIB,
                available_bytes: 1,
            }],
            interfaces: vec![Interface {
                name: "eth0".into(),
                addresses: vec!["10.0.0.99/24".into()],
            }],
            ..Facts::default()
        };
        let m = mismatches_of_101(&facts);
        assert_eq!(
            m,
            [
                "storage_gb: declared 32, observed 16.0",
                "ip: declared 10.0.0.153/24, observed 10.0.0.99"
            ]
        );
    }

    #[test]
    fn declared_mounts_are_compared_with_what_is_mounted() {
        let declared = Declared {
            mounts: vec![
                DeclaredMount {
                    path: "/data".into(),
                    kind: MountSource::Zfs,
                    source: "quickOS-tank/qdrant-data".into(),
                },
                DeclaredMount {
                    path: "/models".into(),
                    kind: MountSource::Bind,
                    source: "/mnt/pve/models".into(),
                },
                DeclaredMount {
                    path: "/shared".into(),
                    kind: MountSource::Nfs,
                    source: "10.0.0.13:/export/shared".into(),
                },
            ],
            ..Declared::default()
        };
        let mount = |p: &str, src: &str, fs: &str| Mount {
            mount_point: p.into(),
            source: src.into(),
            fs_type: fs.into(),
        };
        let good = Facts {
            mounts: vec![
                mount("/", "/dev/sda1", "ext4"),
                mount("/data", "quickOS-tank/subvol-950-disk-0/qdrant-data", "zfs"),
                mount("/models", "/dev/sdb1", "ext4"),
                mount("/shared", "10.0.0.13:/export/shared", "nfs4"),
            ],
            ..Facts::default()
        };
        assert_eq!(compare(&declared, &good), []);
        let bad = Facts {
            mounts: vec![
                mount("/", "/dev/sda1", "ext4"),
                mount("/data", "/dev/sda1", "ext4"),
            ],
            ..Facts::default()
        };
        let m: Vec<String> = compare(&declared, &bad)
            .iter()
            .map(|m| m.to_string())
            .collect();
        assert_eq!(
            m,
            [
                "mount: declared /data (zfs quickOS-tank/qdrant-data), observed ext4 /dev/sda1",
                "mount: declared /models (bind /mnt/pve/models), observed nothing mounted",
                "mount: declared /shared (nfs 10.0.0.13:/export/shared), observed nothing mounted",
            ]
        );
        // No mount facts at all: an older agent, nothing compared.
        assert_eq!(compare(&declared, &Facts::default()), []);
    }
}
