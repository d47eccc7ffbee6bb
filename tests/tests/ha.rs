//! Coordinator high availability with real parts (issue 15, docs/design/0010): a real
//! 3-member etcd cluster on loopback, three real `phoenix serve --store etcd` replicas
//! sharing one embedded CA through etcd, and real agents that know all three.

use phoenix_proto::token::JoinToken;
use phoenix_tests::etcd::EtcdCluster;
use phoenix_tests::spine::{Agent, Coordinator, files_spec, guest_status, write_spec};
use phoenix_tests::wait_for;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(3);

/// Three replicas r0, r1, r2 on `cluster`, started one after the other (the first puts
/// the CA in etcd, the others unseal it).
fn replicas(cluster: &EtcdCluster, base: &Path, prune_every: &str) -> Vec<Coordinator> {
    let secret = base.join("ca.secret");
    std::fs::write(&secret, "k2VJ1Wq0y9n6e4Kx0c5mT7bLzQ8rUaHf3dGsPoYi\n").expect("secret");
    let eps = cluster.endpoints().join(",");
    (0..3)
        .map(|i| {
            let name = format!("r{i}");
            Coordinator::start(
                &base.join(&name),
                &[
                    "--store",
                    "etcd",
                    "--etcd-endpoints",
                    &eps,
                    "--etcd-lease-ttl",
                    &format!("{}s", LEASE.as_secs()),
                    "--replica-name",
                    &name,
                    "--ca-secret-file",
                    secret.to_str().expect("utf8"),
                    "--prune-every",
                    prune_every,
                ],
            )
        })
        .collect()
}

/// Guests connected to each replica (a replica's status says "connected" for its own
/// sessions only).
fn sessions(replicas: &[Coordinator], alive: &[usize], guests: &[u32]) -> Vec<usize> {
    (0..replicas.len())
        .map(|i| {
            if !alive.contains(&i) {
                return 0;
            }
            let s = replicas[i].status();
            guests
                .iter()
                .filter(|g| guest_status(&s, **g).is_some_and(|r| r["connected"] == true))
                .count()
        })
        .collect()
}

fn join(a: &Agent, token: &str) {
    let out = a.join(token, &[]);
    assert!(
        out.status.success(),
        "join {}: {}",
        a.guest,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The etcd value at `key` (empty when absent).
fn etcd_get(cluster: &EtcdCluster, key: &str) -> String {
    cluster
        .etcdctl(&["get", key, "--print-value-only"])
        .trim()
        .to_string()
}

#[test]
fn agents_of_a_killed_replica_move_to_the_others_and_the_apply_completes() {
    const AGENTS: u32 = 20;
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(&tmp.path().join("etcd")) else {
        return;
    };
    let mut rs = replicas(&cluster, tmp.path(), "1h");
    let guests: Vec<u32> = (401..401 + AGENTS).collect();
    // Each agent joins through a token of another replica, so sessions spread.
    let mut agents: Vec<Agent> = guests
        .iter()
        .enumerate()
        .map(|(n, g)| {
            let r = &rs[n % 3];
            let a = Agent::new(tmp.path(), *g);
            let token = r.token(*g);
            let addrs = JoinToken::decode(&token).expect("token").addrs();
            assert_eq!(addrs.len(), 3, "the token lists every replica: {addrs:?}");
            assert_eq!(addrs[0], r.addr, "the minting replica comes first");
            join(&a, &token);
            a
        })
        .collect();
    for a in &mut agents {
        a.start();
    }
    let all = [0, 1, 2];
    let per = wait_for(T, "every agent connected to some replica", || {
        let per = sessions(&rs, &all, &guests);
        (per.iter().sum::<usize>() == AGENTS as usize).then_some(per)
    });
    let victim = (0..3).max_by_key(|i| per[*i]).expect("three replicas");
    let survivor = (victim + 1) % 3;
    eprintln!("sessions per replica {per:?}; killing r{victim}");

    // Revision 1 everywhere, applied through the survivor: agents on the other replicas
    // get it from their replica's etcd watch.
    let spec = tmp.path().join("spec.json");
    let write = |v: &str| {
        let gs: Vec<_> = agents
            .iter()
            .map(|a| (a.guest, files_spec(&a.root, &[("motd", v)])))
            .collect();
        write_spec(&spec, &gs);
    };
    write("v1\n");
    rs[survivor].apply_ok(&spec);

    // Revision 2, and the busiest replica dies while it is being applied.
    write("v2\n");
    let apply = Command::new(phoenix_tests::bin("phoenix"))
        .arg("--admin-socket")
        .arg(rs[survivor].socket())
        .args([
            "apply",
            "-f",
            spec.to_str().expect("utf8"),
            "--timeout",
            "90s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start phoenix apply");
    wait_for(T, "revision 2 stored", || {
        (etcd_get(&cluster, "/phoenix/meta/revision") == "2").then_some(())
    });
    let killed = Instant::now();
    rs[victim].kill9();
    let alive: Vec<usize> = all.iter().copied().filter(|i| *i != victim).collect();
    let out = apply.wait_with_output().expect("wait for apply");
    assert!(
        out.status.success(),
        "the apply must complete on the surviving replicas:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let per = wait_for(T, "every agent reconnected to a surviving replica", || {
        let per = sessions(&rs, &alive, &guests);
        (per.iter().sum::<usize>() == AGENTS as usize).then_some(per)
    });
    eprintln!(
        "all agents on the survivors {per:?} {:?} after the kill",
        killed.elapsed()
    );

    // Every report recorded, at revision 2; revisions linear (1, 2, no gap, no repeat).
    assert_eq!(etcd_get(&cluster, "/phoenix/meta/revision"), "2");
    for a in &agents {
        let key = format!("/phoenix/reports/{:010}", a.guest);
        let report: serde_json::Value =
            serde_json::from_str(&etcd_get(&cluster, &key)).expect("report recorded");
        assert_eq!(report["report"]["revision"], 2, "guest {}", a.guest);
        let desired: serde_json::Value = serde_json::from_str(&etcd_get(
            &cluster,
            &format!("/phoenix/desired/{:010}", a.guest),
        ))
        .expect("desired");
        assert_eq!(desired["revision"], 2, "guest {}", a.guest);
        assert_eq!(
            std::fs::read_to_string(a.root.join("motd")).expect("motd"),
            "v2\n"
        );
    }
    // Reports stored by one replica reach the watchers of another: the survivor's status
    // (which reads the store) and a watch there both see revision 2 from every guest.
    let s = rs[alive[1]].status();
    for g in &guests {
        let row = guest_status(&s, *g).expect("guest in status");
        assert_eq!(row["applied_revision"], 2, "guest {g}: {row}");
    }

    // The same join token presented to two replicas at once: one enrollment.
    let token = rs[alive[0]].token(499);
    let mut other = JoinToken::decode(&token).expect("token");
    let second = rs[alive[1]].addr.clone();
    other.replicas.retain(|a| *a != second);
    let first = std::mem::replace(&mut other.addr, second);
    other.replicas.insert(0, first);
    let twin = other.encode();
    let (a1, a2) = (
        Agent::new(&tmp.path().join("twin1"), 499),
        Agent::new(&tmp.path().join("twin2"), 499),
    );
    let spawn = |a: &Agent, t: &str| {
        Command::new(phoenix_tests::bin("phoenix-agent"))
            .arg("--state-dir")
            .arg(a.state())
            .args(["join", t])
            .stderr(Stdio::piped())
            .spawn()
            .expect("join")
    };
    let (j1, j2) = (spawn(&a1, &token), spawn(&a2, &twin));
    let (o1, o2) = (
        j1.wait_with_output().expect("join 1"),
        j2.wait_with_output().expect("join 2"),
    );
    let stored: serde_json::Value =
        serde_json::from_str(&etcd_get(&cluster, "/phoenix/agents/0000000499")).expect("agent");
    let serial_of = |a: &Agent| {
        let pem = std::fs::read_to_string(a.state().join("cert.pem")).ok()?;
        let chain = phoenix_pki::x509::parse_chain(&pem, "cert").ok()?;
        Some(phoenix_pki::x509::inspect(&chain[0]).ok()?.serial_hex)
    };
    let holders: Vec<_> = [&a1, &a2]
        .into_iter()
        .filter(|a| serial_of(a).is_some_and(|s| stored["serial"] == s.as_str()))
        .collect();
    assert_eq!(
        holders.len(),
        1,
        "exactly one agent holds the enrolled identity; joins: {:?} {:?}\n{}\n{}",
        o1.status,
        o2.status,
        String::from_utf8_lossy(&o1.stderr),
        String::from_utf8_lossy(&o2.stderr)
    );
    assert_eq!(stored["confirmed"], true, "{stored}");
}

#[test]
fn a_new_leader_takes_over_within_the_lease_and_scheduled_work_runs_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(mut cluster) = EtcdCluster::start(&tmp.path().join("etcd")) else {
        return;
    };
    // Pruning every 4 s: several runs during the test, by two leaders.
    let mut rs = replicas(&cluster, tmp.path(), "4s");
    // An expired token (as a leader would find it a day later) for the leader to prune.
    let stale = serde_json::json!({"guest": 7, "expires_unix": 1, "used_unix": null});
    cluster.etcdctl(&["put", "/phoenix/tokens/stale", &stale.to_string()]);
    let leader = wait_for(T, "a leader", || {
        Some(etcd_get(&cluster, "/phoenix/leader")).filter(|l| !l.is_empty())
    });
    wait_for(T, "the expired token pruned", || {
        etcd_get(&cluster, "/phoenix/tokens/stale")
            .is_empty()
            .then_some(())
    });
    let idx: usize = leader[1..].parse().expect("replica name rN");
    // Let the schedule run at least once more, then kill the leader right after a run.
    std::thread::sleep(Duration::from_secs(5));
    rs[idx].kill9();
    let killed = Instant::now();
    let next = wait_for(T, "a new leader", || {
        Some(etcd_get(&cluster, "/phoenix/leader")).filter(|l| !l.is_empty() && *l != leader)
    });
    let took = killed.elapsed();
    eprintln!("{leader} killed; {next} leads {took:?} later (lease {LEASE:?})");
    // The lease expires at most LEASE after the last keep-alive; a replica campaigns every
    // LEASE/3 (at least 1 s here). Twice the lease is the generous bound on a busy host.
    assert!(took < LEASE * 2, "new leader after {took:?}");

    // Let the new leader run the job a few times; every run is recorded in etcd.
    std::thread::sleep(Duration::from_secs(10));
    let job: serde_json::Value =
        serde_json::from_str(&etcd_get(&cluster, "/phoenix/jobs/prune-tokens")).expect("job");
    let runs = job["history"].as_array().expect("history");
    let by: Vec<&str> = runs.iter().filter_map(|r| r["replica"].as_str()).collect();
    assert!(
        by.contains(&leader.as_str()) && by.contains(&next.as_str()),
        "both leaders ran the job: {job}"
    );
    assert!(
        !by.iter()
            .any(|r| *r != leader.as_str() && *r != next.as_str()),
        "only leaders ran it: {job}"
    );
    // Never twice within the interval, not even across the change of leader.
    let at: Vec<i64> = runs
        .iter()
        .filter_map(|r| r["at_unix_ms"].as_i64())
        .collect();
    for w in at.windows(2) {
        assert!(w[1] - w[0] >= 4000, "runs {}ms apart: {job}", w[1] - w[0]);
    }

    // The survivors lose etcd's quorum: writes stop with UNAVAILABLE naming etcd, and
    // resume when it is back.
    let alive = (idx + 1) % 3;
    cluster.kill(1);
    cluster.kill(2);
    let out = rs[alive].cli(&["token", "create", "--guest", "9"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a write without quorum succeeded");
    assert!(err.contains("etcd") && err.contains("unavailable"), "{err}");
    cluster.restart(1);
    cluster.restart(2);
    wait_for(T, "writes resume with the quorum back", || {
        rs[alive]
            .cli(&["token", "create", "--guest", "9"])
            .status
            .success()
            .then_some(())
    });
}
