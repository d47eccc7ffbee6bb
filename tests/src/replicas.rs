//! Coordinator replicas on one etcd cluster, as tests/tests/ha.rs starts them (copied
//! here for tests/tests/ha_forward.rs rather than shared by editing ha.rs): every
//! replica shares the embedded CA sealed in etcd under one secret, with a short lease.

use crate::etcd::EtcdCluster;
use crate::spine::{Coordinator, guest_status};
use std::path::Path;
use std::time::Duration;

/// The etcd lease of test replicas: a dead replica's sessions vanish this long after.
pub const LEASE: Duration = Duration::from_secs(3);

/// The flags of replica `name` on `cluster` sharing the embedded CA sealed under the
/// secret in `base` (the first replica puts the CA in etcd, the others unseal it).
pub fn replica_args(cluster: &EtcdCluster, base: &Path, name: &str) -> Vec<String> {
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
        "1h",
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

/// Replica `name` on `cluster`, its directory under `base`.
pub fn replica(cluster: &EtcdCluster, base: &Path, name: &str) -> Coordinator {
    let args = replica_args(cluster, base, name);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Coordinator::start(&base.join(name), &refs)
}

/// Replicas r0 … r(n-1) on `cluster`, started one after the other.
pub fn replicas(cluster: &EtcdCluster, base: &Path, n: usize) -> Vec<Coordinator> {
    (0..n)
        .map(|i| replica(cluster, base, &format!("r{i}")))
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
