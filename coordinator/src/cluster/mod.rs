//! Running as one replica of several (docs/design/0010-ha-on-etcd.md): every replica
//! serves agents and the admin API over the shared store; this module holds what makes
//! them one coordinator.
//!
//! - [`leader`]: the leader loop. Work that must happen once (pruning join tokens, any
//!   scheduled job) runs only on the elected replica, each run claimed in the store
//!   under the leader's fence, so a deposed leader does nothing and a new one does not
//!   repeat what the old one just did. With redb the one process always leads.
//! - [`feed`]: etcd only. Pushes what other replicas wrote to this replica's agents
//!   (desired states, revocations) and report watchers (reports), from an etcd watch;
//!   and notices when etcd is lost, ending this replica's sessions so its agents move
//!   to a replica that still has it.
//! - [`sessions`]: etcd only. Registers this replica's agent sessions under its lease,
//!   so "connected" is cluster-wide, and returns the reports of plans forwarded here.
//! - [`ca`]: the embedded CA's root and key, sealed in etcd, shared by every replica.

pub mod ca;
pub mod feed;
pub mod leader;
pub mod sessions;

use std::time::Duration;

/// A replica's name in the cluster: the leader key and the replica registry hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaName(String);

#[derive(Debug, thiserror::Error)]
#[error("replica name {0:?}: use 1 to 63 of a-z, 0-9, '-' and '.' (a host name)")]
pub struct ReplicaNameError(String);

impl TryFrom<String> for ReplicaName {
    type Error = ReplicaNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if ok {
            Ok(ReplicaName(s))
        } else {
            Err(ReplicaNameError(s))
        }
    }
}

impl ReplicaName {
    /// This machine's host name (lower-cased), or "coordinator" when it is not a
    /// valid replica name.
    pub fn from_host() -> Self {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_ascii_lowercase())
            .and_then(|h| ReplicaName::try_from(h).ok())
            .unwrap_or_else(|| ReplicaName("coordinator".into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ReplicaName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How this replica takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub replica: ReplicaName,
    /// How often the leader prunes expired join tokens.
    pub prune_every: Duration,
    /// How often a replica campaigns (and a leader renews its claim to lead): well
    /// within the etcd lease, so a leader notices it was deposed before it acts.
    pub lead_every: Duration,
    /// Seals the embedded CA's key in etcd (`ca`); required with etcd and the embedded CA.
    pub ca_secret_file: Option<std::path::PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            replica: ReplicaName("coordinator".into()),
            prune_every: Duration::from_secs(3600),
            lead_every: Duration::from_secs(2),
            ca_secret_file: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_names_are_host_names() {
        for ok in ["pve1", "node-2.lab", "a"] {
            assert!(ReplicaName::try_from(ok.to_string()).is_ok(), "{ok}");
        }
        for bad in ["", "PVE1", "a b", "x/y", "../leader", &"a".repeat(64)] {
            assert!(ReplicaName::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
    }
}
