//! The event log and `forget_guest` (tests/src/event_checks.rs) against both store
//! backends: the embedded redb store and a real 3-member etcd cluster.

use phoenix_coordinator::store::{EtcdConfig, EtcdStore, RedbStore, Store};
use phoenix_tests::etcd::EtcdCluster;
use phoenix_tests::event_checks;

#[test]
fn redb_event_log_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    event_checks::all(&|name| {
        Box::new(RedbStore::open(&dir.path().join(name)).expect("open redb")) as Box<dyn Store>
    });
}

#[test]
fn etcd_event_log_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(dir.path()) else {
        return;
    };
    event_checks::all(&|name| {
        let mut cfg = EtcdConfig::new(cluster.endpoints());
        cfg.prefix = format!("/events/{name}/");
        Box::new(EtcdStore::connect(cfg).expect("connect to etcd")) as Box<dyn Store>
    });
}
