//! The coordinator's store contract (tests/src/store_checks.rs) against both backends:
//! the embedded redb store and a real 3-member etcd cluster.

use phoenix_coordinator::store::{EtcdConfig, EtcdStore, RedbStore, Store};
use phoenix_tests::etcd::EtcdCluster;
use phoenix_tests::store_checks;

#[test]
fn redb_store_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_checks::all(&|name| {
        Box::new(RedbStore::open(&dir.path().join(name)).expect("open redb")) as Box<dyn Store>
    });
}

#[test]
fn etcd_store_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(dir.path()) else {
        return;
    };
    store_checks::all(&|name| {
        let mut cfg = EtcdConfig::new(cluster.endpoints());
        cfg.prefix = format!("/contract/{name}/");
        Box::new(EtcdStore::connect(cfg).expect("connect to etcd")) as Box<dyn Store>
    });
}
