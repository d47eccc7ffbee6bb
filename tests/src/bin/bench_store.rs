//! Store benchmark: the same coordinator work on the embedded redb store and on a real
//! 3-member etcd cluster on loopback (tests/src/etcd.rs), in one run: N enrollments, one
//! apply to N guests, N reports, the listings `phoenix status` reads; then etcd's database
//! size for those N agents.
//!
//! Run: `source /work/testenv/env.sh; cargo build --release -p phoenix-tests --bin bench_store
//!  && target/release/bench_store 1000`

use phoenix_coordinator::store::{
    AgentRecord, EtcdConfig, EtcdStore, RedbStore, ReportRecord, Store,
};
use phoenix_proto::model::{ApplyReport, GuestId};
use phoenix_tests::etcd::EtcdCluster;
use phoenix_tests::store_checks::{g, token};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// A guest's desired state as JSON; a small stack of files and services is ~2 KB.
const SPEC_BYTES: usize = 2048;
/// Protobuf facts from a Hello: OS, interfaces, disks.
const FACTS_BYTES: usize = 512;

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn run(name: &str, s: &dyn Store, n: u32) -> Res<()> {
    let guests: Vec<GuestId> = (1..=n).map(g).collect();
    let mut enroll = Vec::with_capacity(n as usize);
    for guest in &guests {
        let hash = format!("token-{guest}");
        s.put_token(&hash, &token(guest.get(), i64::MAX))?;
        let rec = AgentRecord {
            serial: format!("{:040x}", guest.get()),
            facts: vec![7; FACTS_BYTES],
            ..AgentRecord::default()
        };
        let t0 = Instant::now();
        s.check_token(&hash, *guest, 1)?;
        s.enroll(&hash, *guest, 1, None, &rec)?;
        enroll.push(t0.elapsed());
    }
    enroll.sort();

    let states: Vec<(GuestId, String, Vec<u8>)> = guests
        .iter()
        .map(|guest| (*guest, format!("digest-{guest}"), vec![b'x'; SPEC_BYTES]))
        .collect();
    let t0 = Instant::now();
    let revision = s.put_desired(&states)?;
    let apply = t0.elapsed();

    let t0 = Instant::now();
    for guest in &guests {
        s.put_report(
            *guest,
            &ReportRecord {
                seq: 0,
                event: 0,
                received_unix: 1,
                report: ApplyReport {
                    revision,
                    digest: format!("digest-{guest}"),
                    dry_run: false,
                    results: vec![],
                    duration_micros: 1,
                    trigger: "push".into(),
                },
            },
        )?;
    }
    let reports = t0.elapsed();

    // Declared facts of the whole fleet (the first `phoenix apply` of the configs): one
    // put per guest, as apply stored them before, then one batch of new facts.
    let facts = |round: u8| -> Vec<(GuestId, Vec<u8>)> {
        guests
            .iter()
            .map(|guest| {
                (
                    *guest,
                    format!("{{\"round\":{round},\"guest\":{guest}}}").into_bytes(),
                )
            })
            .collect()
    };
    let t0 = Instant::now();
    for (guest, json) in facts(1) {
        s.put_declared(guest, &json)?;
    }
    let declared_each = t0.elapsed();
    let t0 = Instant::now();
    s.put_declared_many(&facts(2))?;
    let declared_batch = t0.elapsed();

    let t0 = Instant::now();
    let listed = s.agents()?.len() + s.all_desired()?.len();
    let list = t0.elapsed();
    assert_eq!(listed, 2 * n as usize);

    println!(
        "{name:5} n={n}: enroll p50 {:?} p99 {:?} | apply to all {:?} | {n} reports {:?} | declared facts one by one {:?}, batched {:?} | list agents+desired {:?}",
        pct(&enroll, 50),
        pct(&enroll, 99),
        apply,
        reports,
        declared_each,
        declared_batch,
        list
    );
    Ok(())
}

fn etcd_db_size(cluster: &EtcdCluster) -> Res<i64> {
    let out = cluster.etcdctl(&["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v[0]["Status"]["dbSize"].as_i64().unwrap_or(-1))
}

fn main() -> Res<()> {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    let redb = RedbStore::open(&dir.path().join("phoenix.redb"))?;
    run("redb", &redb, n)?;

    let Some(cluster) = EtcdCluster::start(dir.path()) else {
        return Err("etcd missing: source /work/testenv/env.sh (PHOENIX_ETCD_BIN)".into());
    };
    let before = etcd_db_size(&cluster)?;
    {
        let etcd = EtcdStore::connect(EtcdConfig::new(cluster.endpoints()))?;
        run("etcd", &etcd, n)?;
    }
    let after = etcd_db_size(&cluster)?;
    let status = cluster.etcdctl(&["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&status)?;
    let rev = v[0]["Status"]["header"]["revision"].as_i64().unwrap_or(0);
    cluster.etcdctl(&["compact", &rev.to_string()]);
    cluster.etcdctl(&["defrag"]);
    let compacted = etcd_db_size(&cluster)?;
    println!(
        "etcd db size for {n} agents (facts {FACTS_BYTES} B, spec {SPEC_BYTES} B, one report each): {} KiB as written, {} KiB after compact+defrag (empty: {} KiB)",
        (after - before) / 1024,
        (compacted - before) / 1024,
        before / 1024
    );
    Ok(())
}
