//! Declared (what the configs say about the guest itself) vs observed (the agent's
//! sysinfo facts). Proxmox, not the agent, sets these, so a mismatch is reported, never
//! "fixed" by the agent.
//!
//! Layer 1 (used by the server, not by the compiler): imports only `types`.

use super::types::Declared;
use phoenix_proto::v1::Facts;
use std::fmt;
use std::net::IpAddr;

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
    use phoenix_proto::v1::{Disk, Interface};

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
}
