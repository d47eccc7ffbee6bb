//! The coordinator's store contract (tests/src/store_checks.rs) against both backends:
//! the embedded redb store and a real 3-member etcd cluster.

use phoenix_coordinator::store::{EtcdConfig, EtcdStore, RedbStore, Store, StoreError};
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
    let open = |name: &str| {
        let mut cfg = EtcdConfig::new(cluster.endpoints());
        cfg.prefix = format!("/contract/{name}/");
        Box::new(EtcdStore::connect(cfg).expect("connect to etcd")) as Box<dyn Store>
    };
    store_checks::all(&open);

    // etcd refuses requests over 1.5 MiB with a bare "request is too large"; the store
    // refuses first and names the key.
    let s = open("limits");
    let err = s
        .put_declared(store_checks::g(1), &vec![b'x'; 2 << 20])
        .expect_err("a 2 MiB value");
    assert!(
        matches!(err, StoreError::TooLarge { .. })
            && err
                .to_string()
                .contains("/contract/limits/declared/0000000001"),
        "{err}"
    );
    let err = s
        .put_desired(&[(store_checks::g(1), "d".into(), vec![b'x'; 900 << 10])])
        .expect_err("a desired state over 1 MiB in base64");
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
}
