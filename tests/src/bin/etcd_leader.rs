//! A coordinator replica reduced to its leadership, for tests that `kill -9` a leader
//! (tests/tests/it/etcd_store.rs): connects to etcd, campaigns until it leads, prints
//! `leading <fence>` and then holds the lease until it is killed.
//!
//! Run: `etcd_leader <endpoint,endpoint,…> <lease ttl seconds> <replica name>`

use phoenix_coordinator::store::{EtcdConfig, EtcdStore, Store};
use std::io::Write;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoints, ttl, name] = args.as_slice() else {
        return Err("usage: etcd_leader <endpoint,endpoint,…> <lease ttl seconds> <name>".into());
    };
    let mut cfg = EtcdConfig::new(endpoints.split(',').map(String::from).collect());
    cfg.lease_ttl = Duration::from_secs(ttl.parse()?);
    let store = EtcdStore::connect(cfg)?;
    let term = loop {
        if let Some(term) = store.try_lead(name)? {
            break term;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("leading {}", term.fence);
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
