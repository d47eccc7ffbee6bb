//! The etcd store as several coordinator replicas use it, against a real 3-member etcd
//! cluster (Debian's etcd 3.4, tests/setup/40-etcd.sh): races between replicas, leader
//! election with fencing, and members dying under it.

use phoenix_coordinator::store::{EtcdConfig, EtcdStore, Store, StoreError};
use phoenix_tests::etcd::EtcdCluster;
use phoenix_tests::store_checks::{agent, g, token};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn connect(cluster: &EtcdCluster, tune: impl FnOnce(&mut EtcdConfig)) -> EtcdStore {
    let mut cfg = EtcdConfig::new(cluster.endpoints());
    tune(&mut cfg);
    EtcdStore::connect(cfg).expect("connect to etcd")
}

/// Runs `f(replica index)` on one thread per store, all released at once.
fn race<T: Send + 'static>(
    stores: &[Arc<EtcdStore>],
    f: impl Fn(usize, &EtcdStore) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(stores.len()));
    let handles: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (s, f, barrier) = (s.clone(), f.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                f(i, &s)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("replica thread"))
        .collect()
}

#[test]
fn one_join_token_presented_to_two_replicas_enrolls_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(dir.path()) else {
        return;
    };
    let stores = [
        Arc::new(connect(&cluster, |_| {})),
        Arc::new(connect(&cluster, |_| {})),
    ];
    for round in 0..20u32 {
        let guest = 100 + round;
        let hash = format!("tok{round}");
        stores[0]
            .put_token(&hash, &token(guest, 1000))
            .expect("put token");
        let results = race(&stores, move |i, s| {
            s.enroll(&hash, g(guest), 10, None, &agent(&format!("serial-{i}")))
        });
        let won: Vec<usize> = (0..2).filter(|i| results[*i].is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        let lost = &results[1 - won[0]];
        assert!(
            matches!(
                lost,
                Err(StoreError::Changed { .. } | StoreError::TokenUsed { .. })
            ),
            "round {round}: the loser must see the winner's enrollment: {lost:?}"
        );
        let rec = stores[1 - won[0]]
            .agent(g(guest))
            .expect("read")
            .expect("enrolled");
        assert_eq!(rec.serial, format!("serial-{}", won[0]));
    }
}

#[test]
fn revisions_from_three_replicas_are_strictly_increasing_without_gaps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(dir.path()) else {
        return;
    };
    let stores: Vec<Arc<EtcdStore>> = (0..3)
        .map(|_| Arc::new(connect(&cluster, |_| {})))
        .collect();
    // Every replica applies to the same two guests, so their writes also collide.
    let per_replica = race(&stores, |i, s| {
        (0..15)
            .map(|n| {
                let digest = format!("r{i}-{n}");
                s.put_desired(&[
                    (g(1), digest.clone(), b"{}".to_vec()),
                    (g(2), digest, b"{}".to_vec()),
                ])
                .expect("put desired")
            })
            .collect::<Vec<u64>>()
    });
    for revs in &per_replica {
        assert!(
            revs.windows(2).all(|w| w[0] < w[1]),
            "one replica's revisions go up: {revs:?}"
        );
    }
    let mut all: Vec<u64> = per_replica.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=45).collect::<Vec<u64>>(), "no gap, no duplicate");
    // The newest apply wins for each guest, whichever replica wrote last.
    for guest in [1, 2] {
        let d = stores[0].desired(g(guest)).expect("read").expect("stored");
        assert_eq!(d.revision, 45, "guest {guest}");
    }
}

/// The lease id (hex, as etcdctl takes it) attached to the leader key.
fn leader_lease(cluster: &EtcdCluster) -> String {
    let out = cluster.etcdctl(&["get", "/phoenix/leader", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
    let lease = v["kvs"][0]["lease"]
        .as_i64()
        .expect("the leader key has a lease");
    format!("{lease:x}")
}

#[test]
fn a_new_leader_takes_over_and_the_deposed_one_is_fenced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(dir.path()) else {
        return;
    };
    let ttl = Duration::from_secs(3);
    let with_ttl = |c: &mut EtcdConfig| c.lease_ttl = ttl;
    let a = connect(&cluster, with_ttl);
    let b = connect(&cluster, with_ttl);
    let c = connect(&cluster, with_ttl);

    let term_a = a.try_lead("a").expect("campaign").expect("first leads");
    assert_eq!(b.try_lead("b").expect("campaign"), None);
    assert_eq!(c.try_lead("c").expect("campaign"), None);
    assert_eq!(
        a.try_lead("a").expect("campaign"),
        Some(term_a),
        "still leads"
    );
    assert_eq!(
        cluster
            .etcdctl(&["get", "/phoenix/leader", "--print-value-only"])
            .trim(),
        "a"
    );

    // The leader's client goes away: its lease is revoked and another replica leads
    // well within the lease TTL.
    drop(a);
    let t0 = Instant::now();
    let term_b = phoenix_tests::wait_for(ttl, "b to lead after a stopped", || {
        b.try_lead("b").expect("campaign")
    });
    assert!(t0.elapsed() < ttl);
    assert!(term_b.fence > term_a.fence);

    // b stalls past its lease (the lease expires in etcd: revoked here, so the test
    // does not wait): c takes over, and b's leader-only write is refused.
    b.put_token("stale", &token(1, 5)).expect("put token");
    cluster.etcdctl(&["lease", "revoke", &leader_lease(&cluster)]);
    let term_c = phoenix_tests::wait_for(ttl, "c to lead after b's lease ended", || {
        c.try_lead("c").expect("campaign")
    });
    assert!(matches!(
        b.prune_tokens(term_b, 100),
        Err(StoreError::NotLeader { .. })
    ));
    b.check_token("stale", g(1), 1)
        .expect("the deposed leader deleted nothing");
    assert_eq!(b.try_lead("b").expect("campaign"), None, "c leads now");
    assert_eq!(c.prune_tokens(term_c, 100).expect("leader prunes"), 1);

    // A resigning leader hands over at once.
    c.resign(term_c).expect("resign");
    assert!(b.try_lead("b").expect("campaign").is_some());
}

#[test]
fn a_killed_leader_is_replaced_once_its_lease_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(dir.path()) else {
        return;
    };
    let ttl = Duration::from_secs(3);
    let mut leader = std::process::Command::new(phoenix_tests::bin("etcd_leader"))
        .args([&cluster.endpoints().join(","), "3", "killed"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start etcd_leader");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(leader.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read etcd_leader");
    let old_fence: i64 = line
        .strip_prefix("leading ")
        .and_then(|f| f.trim().parse().ok())
        .unwrap_or_else(|| panic!("etcd_leader said {line:?}"));
    let b = connect(&cluster, |c| c.lease_ttl = ttl);
    assert_eq!(
        b.try_lead("b").expect("campaign"),
        None,
        "the process leads"
    );

    // kill -9: no resign, no revoke; etcd ends the lease after its TTL.
    leader.kill().expect("kill -9 etcd_leader");
    leader.wait().expect("reap etcd_leader");
    let t0 = Instant::now();
    let term = phoenix_tests::wait_for(ttl * 2, "b to lead after the leader died", || {
        std::thread::sleep(Duration::from_millis(100));
        b.try_lead("b").expect("campaign")
    });
    let took = t0.elapsed();
    // The bound is the wait above (twice the TTL): etcd expires leases on its own
    // schedule, slower on a loaded host (5.4 s once at load 20). The figure is measured
    // by bench_failover, not asserted here.
    eprintln!("takeover {took:?} after kill -9 (lease TTL {ttl:?})");
    assert!(term.fence > old_fence);
}

#[test]
fn writes_continue_with_quorum_stop_without_it_and_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut cluster) = EtcdCluster::start(dir.path()) else {
        return;
    };
    // Long enough for the survivors to elect a new leader when the killed member led,
    // also on a loaded 2-core machine (2 s was not: one CI run timed out here).
    let timeout = Duration::from_secs(6);
    let s = connect(&cluster, |c| c.request_timeout = timeout);
    let apply = |s: &EtcdStore| s.put_desired(&[(g(1), "d".into(), b"{}".to_vec())]);
    assert_eq!(apply(&s).expect("healthy"), 1);

    cluster.kill(0);
    for n in 2..=11 {
        assert_eq!(apply(&s).expect("one member down: quorum holds"), n);
    }
    s.put_token("t", &token(5, 1000)).expect("token");
    s.enroll("t", g(5), 1, None, &agent("s")).expect("enroll");

    cluster.kill(1);
    let t0 = Instant::now();
    let err = apply(&s).expect_err("two of three down: no quorum");
    assert!(
        matches!(err, StoreError::Unavailable { .. }),
        "without quorum: {err}"
    );
    assert!(
        t0.elapsed() < timeout * 4,
        "fails within the request timeout"
    );

    cluster.restart(0);
    cluster.restart(1);
    let rev = phoenix_tests::wait_for(Duration::from_secs(30), "writes to resume", || {
        apply(&s).ok()
    });
    assert!(rev >= 12, "no revision reused after the outage: {rev}");
    assert_eq!(
        s.agent(g(5)).expect("read").map(|a| a.serial),
        Some("s".into())
    );
}

#[test]
fn a_store_without_etcd_says_which_endpoints_are_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut cluster) = EtcdCluster::start(dir.path()) else {
        return;
    };
    let timeout = Duration::from_secs(2);
    let s = connect(&cluster, |c| c.request_timeout = timeout);
    for i in 0..3 {
        cluster.kill(i);
    }
    let t0 = Instant::now();
    let err = s.agent(g(1)).expect_err("etcd is gone");
    assert!(t0.elapsed() < timeout * 3, "bounded by the request timeout");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{msg}");
    assert!(msg.contains("unavailable"), "{msg}");
    for ep in cluster.endpoints() {
        assert!(msg.contains(&ep), "{msg} names {ep}");
    }
    // Starting a replica while etcd is down fails the same way, naming the endpoints.
    let err = EtcdStore::connect(EtcdConfig {
        request_timeout: timeout,
        ..EtcdConfig::new(cluster.endpoints())
    })
    .err()
    .expect("no etcd to connect to");
    let msg = err.to_string();
    assert!(
        msg.contains(&cluster.endpoints()[0]) && msg.contains("unavailable"),
        "{msg}"
    );
}

/// A report's pass number is stored with the report or not at all. The ha kill test lost
/// one guest's report now and then: the replica stored the agent record (with the pass
/// number) and the report in two writes, was killed between them, and the replica the
/// agent resent the report to recognised the number, acknowledged it and stored nothing.
/// Here the report fails etcd's value limit, which the old path met after the agent
/// record was written: the same window, made as wide as it gets.
#[test]
fn a_pass_number_is_never_stored_without_its_report() {
    use phoenix_coordinator::store::{ReportRecord, ReportWrite};
    use phoenix_proto::model::ApplyReport;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(dir.path()) else {
        return;
    };
    let s = connect(&cluster, |_| {});
    for n in [7, 8] {
        s.put_token(&format!("t{n}"), &token(n, 1000))
            .expect("token");
        s.enroll(&format!("t{n}"), g(n), 1, None, &agent(&format!("s{n}")))
            .expect("enroll");
    }
    let write = |guest: u32, digest: String, seq: u64| ReportWrite {
        guest: g(guest),
        record: ReportRecord {
            seq: 0,
            event: 1,
            received_unix: 20,
            report: ApplyReport {
                revision: 2,
                digest,
                dry_run: false,
                results: Vec::new(),
                duration_micros: 1,
                trigger: "push".into(),
            },
        },
        converged: true,
        pass_seq: Some(seq),
    };
    let out = s.put_reports(&[
        write(7, "x".repeat((1 << 20) + 1), 5),
        write(8, "d".into(), 9),
    ]);
    assert!(
        matches!(out[0], Err(StoreError::TooLarge { .. })),
        "{:?}",
        out[0]
    );
    assert!(
        out[1].is_ok(),
        "another guest's report of the batch: {:?}",
        out[1]
    );
    let rec = s.agent(g(7)).expect("read").expect("enrolled");
    assert_eq!(
        (rec.last_pass_seq, rec.applied_revision),
        (0, 0),
        "nothing of the refused report is in the agent record"
    );
    let stored = s.reports_since(0).expect("reports");
    assert!(stored.iter().all(|(guest, _)| *guest != g(7)));
    let rec8 = s.agent(g(8)).expect("read").expect("enrolled");
    assert_eq!((rec8.last_pass_seq, rec8.applied_revision), (9, 2));
    assert!(
        stored
            .iter()
            .any(|(guest, r)| *guest == g(8) && r.report.revision == 2)
    );

    // The agent sends it again (to any replica); now it fits and both are stored.
    let out = s.put_reports(&[write(7, "d".into(), 5)]);
    assert!(out[0].is_ok(), "{:?}", out[0]);
    let rec = s.agent(g(7)).expect("read").expect("enrolled");
    assert_eq!((rec.last_pass_seq, rec.applied_revision), (5, 2));
    assert!(
        s.reports_since(0)
            .expect("reports")
            .iter()
            .any(|(guest, r)| *guest == g(7) && r.report.revision == 2)
    );
}
