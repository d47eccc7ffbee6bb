//! Coordinator replicas on one etcd cluster, as the ha tests start them: every replica
//! shares the embedded CA sealed in etcd under one secret, with a short lease.

use crate::etcd::EtcdCluster;
use crate::spine::{Coordinator, guest_status};
use std::path::Path;
use std::time::Duration;

/// The etcd lease of test replicas: a dead replica's sessions vanish this long after.
pub const LEASE: Duration = Duration::from_secs(3);

/// The flags of replica `name` on `cluster` sharing the embedded CA sealed under the
/// secret in `base` (the first replica puts the CA in etcd, the others unseal it).
/// Leader-only work (pruning) runs every `prune_every`.
pub fn replica_args(
    cluster: &EtcdCluster,
    base: &Path,
    name: &str,
    prune_every: &str,
) -> Vec<String> {
    let secret = base.join("ca.secret");
    if !secret.exists() {
        std::fs::write(&secret, "k2VJ1Wq0y9n6e4Kx0c5mT7bLzQ8rUaHf3dGsPoYi\n").expect("secret");
    }
    let mut args: Vec<String> = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        &cluster.endpoints().join(","),
        "--etcd-lease-ttl",
        &format!("{}s", LEASE.as_secs()),
        "--replica-name",
        name,
        "--ca-secret-file",
        secret.to_str().expect("utf8"),
        "--prune-every",
        prune_every,
    ]
    .map(String::from)
    .to_vec();
    if let Some(tls) = cluster.tls() {
        for (flag, path) in [
            ("--etcd-ca", &tls.ca),
            ("--etcd-cert", &tls.client_cert),
            ("--etcd-key", &tls.client_key),
        ] {
            args.push(flag.into());
            args.push(path.to_str().expect("utf8").into());
        }
    }
    args
}

/// Replica `name` on `cluster`, its directory under `base`, pruning every `prune_every`.
pub fn replica_pruning(
    cluster: &EtcdCluster,
    base: &Path,
    name: &str,
    prune_every: &str,
) -> Coordinator {
    let args = replica_args(cluster, base, name, prune_every);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Coordinator::start(&base.join(name), &refs)
}

/// Replica `name` on `cluster`, its directory under `base` (no pruning within a test).
pub fn replica(cluster: &EtcdCluster, base: &Path, name: &str) -> Coordinator {
    replica_pruning(cluster, base, name, "1h")
}

/// Replicas r0 … r(n-1) on `cluster`, started one after the other.
pub fn replicas(cluster: &EtcdCluster, base: &Path, n: usize) -> Vec<Coordinator> {
    replicas_pruning(cluster, base, n, "1h")
}

/// As `replicas`, with leader-only work every `prune_every`.
pub fn replicas_pruning(
    cluster: &EtcdCluster,
    base: &Path,
    n: usize,
    prune_every: &str,
) -> Vec<Coordinator> {
    (0..n)
        .map(|i| replica_pruning(cluster, base, &format!("r{i}"), prune_every))
        .collect()
}

/// Which replica holds each guest's session, as `r`'s status says (cluster-wide); None
/// until every guest is connected somewhere.
pub fn holders(r: &Coordinator, guests: &[u32]) -> Option<Vec<String>> {
    let s = r.status();
    guests
        .iter()
        .map(|g| {
            let row = guest_status(&s, *g)?;
            (row["connected"] == true)
                .then(|| row["replica"].as_str().map(String::from))
                .flatten()
        })
        .collect()
}

/// The holder of each guest once every replica in `rs` shows every guest connected and
/// all of them agree on where.
pub fn agreed_holders(rs: &[Coordinator], guests: &[u32]) -> Option<Vec<String>> {
    let views: Vec<Vec<String>> = rs
        .iter()
        .map(|r| holders(r, guests))
        .collect::<Option<_>>()?;
    views
        .windows(2)
        .all(|w| w[0] == w[1])
        .then(|| views.into_iter().next())
        .flatten()
}

/// The etcd value at `key` (empty when absent).
pub fn etcd_get(cluster: &EtcdCluster, key: &str) -> String {
    cluster
        .etcdctl(&["get", key, "--print-value-only"])
        .trim()
        .to_string()
}
