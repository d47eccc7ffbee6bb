//! Coordinator high availability with real parts (issue 15, docs/design/0010): a real
//! 3-member etcd cluster on loopback, three real `phoenix serve --store etcd` replicas
//! sharing one embedded CA through etcd, and real agents that know all three.

use phoenix_proto::token::JoinToken;
use phoenix_tests::etcd::EtcdCluster;
use phoenix_tests::replicas::{LEASE, etcd_get, holders, replica, replicas, replicas_pruning};
use phoenix_tests::spine::{Agent, Coordinator, files_spec, guest_status, write_spec};
use phoenix_tests::wait_for;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// Sessions per replica (`names`), once every replica in `alive` shows every guest
/// connected, and all of them agree on where.
fn sessions(replicas: &[Coordinator], alive: &[usize], guests: &[u32]) -> Option<Vec<usize>> {
    let views: Vec<Vec<String>> = alive
        .iter()
        .map(|i| holders(&replicas[*i], guests))
        .collect::<Option<_>>()?;
    if views.windows(2).any(|w| w[0] != w[1]) {
        return None;
    }
    Some(
        (0..replicas.len())
            .map(|i| {
                let name = format!("r{i}");
                views[0].iter().filter(|h| **h == name).count()
            })
            .collect(),
    )
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

#[test]
fn agents_of_a_killed_replica_move_to_the_others_and_the_apply_completes() {
    const AGENTS: u32 = 20;
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(&tmp.path().join("etcd")) else {
        return;
    };
    let mut rs = replicas(&cluster, tmp.path(), 3);
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
    // Connected is cluster-wide: every replica shows all 20, each at the replica that
    // holds its session, and the three agree.
    let per = wait_for(T, "every replica to show every agent connected", || {
        sessions(&rs, &all, &guests).filter(|per| per.iter().sum::<usize>() == AGENTS as usize)
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

    // A plan asked of one replica reaches the guests on the others (forwarded through
    // etcd) and their answers come back: one plan report per guest, nothing changed.
    write("v2\n");
    let out = rs[survivor].cli(&[
        "plan",
        "-f",
        spec.to_str().expect("utf8"),
        "--timeout",
        "60s",
        "-o",
        "json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "plan: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planned: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &serde_json::Value| e["event"] == "report" && e["verdict"] == "plan")
        .collect();
    for g in &guests {
        assert!(
            planned.iter().any(|e| e["guest"] == *g),
            "no plan report from guest {g} (sessions per replica {per:?}):\n{stdout}"
        );
    }
    for a in &agents {
        assert_eq!(
            std::fs::read_to_string(a.root.join("motd")).expect("motd"),
            "v1\n",
            "a plan changed guest {}",
            a.guest
        );
    }

    // Revision 2, and the busiest replica dies while it is being applied.
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
    // The dead replica's sessions went with its lease: the survivors show every agent
    // connected to one of them.
    let per = wait_for(T, "every agent reconnected to a surviving replica", || {
        sessions(&rs, &alive, &guests)
            .filter(|per| per.iter().sum::<usize>() == AGENTS as usize && per[victim] == 0)
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
    let mut rs = replicas_pruning(&cluster, tmp.path(), 3, "4s");
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

/// The replica addresses an agent keeps in its state directory.
fn kept_replicas(a: &Agent) -> Vec<String> {
    std::fs::read_to_string(a.state().join("agent.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .map(|v| {
            let mut all = vec![v["coordinator"].as_str().unwrap_or_default().to_string()];
            for r in v["replicas"].as_array().into_iter().flatten() {
                all.push(r.as_str().unwrap_or_default().to_string());
            }
            all
        })
        .unwrap_or_default()
}

#[test]
fn agents_learn_a_replica_added_after_they_joined_and_fail_over_to_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(&tmp.path().join("etcd")) else {
        return;
    };
    let mut rs = replicas(&cluster, tmp.path(), 3);
    let guests = [431, 432];
    let mut agents: Vec<Agent> = guests
        .iter()
        .map(|g| {
            let a = Agent::new(tmp.path(), *g);
            join(&a, &rs[0].token(*g));
            a
        })
        .collect();
    for a in &mut agents {
        a.start();
    }
    wait_for(T, "both agents connected", || {
        sessions(&rs, &[0, 1, 2], &guests).filter(|p| p.iter().sum::<usize>() == 2)
    });
    let known: Vec<String> = rs.iter().map(|r| r.addr.clone()).collect();
    for a in &agents {
        let kept = kept_replicas(a);
        assert_eq!(kept.len(), 3, "joined with three replicas: {kept:?}");
    }

    // A fourth replica joins the cluster after the agents did: no token of theirs
    // names it, their coordinator tells them.
    rs.push(replica(&cluster, tmp.path(), "r3"));
    let fourth = rs[3].addr.clone();
    assert!(!known.contains(&fourth));
    for a in &agents {
        wait_for(T, "the agent to keep the fourth replica's address", || {
            kept_replicas(a).contains(&fourth).then_some(())
        });
    }

    // Every replica it joined with dies: the agents reconnect to the fourth.
    for r in rs.iter_mut().take(3) {
        r.kill9();
    }
    let alive = [3];
    wait_for(T * 2, "both agents on the fourth replica", || {
        sessions(&rs, &alive, &guests).filter(|p| p[3] == 2)
    });
    // Written atomically and still valid JSON with every address.
    for a in &agents {
        let kept = kept_replicas(a);
        for addr in known.iter().chain([&fourth]) {
            assert!(kept.contains(addr), "{addr} not kept: {kept:?}");
        }
    }
}

#[test]
fn two_replicas_on_one_step_ca_enroll_and_renew_each_others_agents() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(ca) = phoenix_tests::stepca::StepCa::start(&tmp.path().join("ca")) else {
        return;
    };
    let Some(cluster) = EtcdCluster::start(&tmp.path().join("etcd")) else {
        return;
    };
    // Each replica is an RA of the one step-ca, with its own coordinator certificate;
    // agent identities live 15 s, so they renew within the test.
    let start = |name: &str| {
        let mut args = ca.serve_args();
        args.extend(
            [
                "--store",
                "etcd",
                "--etcd-endpoints",
                &cluster.endpoints().join(","),
                "--etcd-lease-ttl",
                &format!("{}s", LEASE.as_secs()),
                "--replica-name",
                name,
                "--agent-cert-ttl",
                "15s",
            ]
            .map(String::from),
        );
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Coordinator::start(&tmp.path().join(name), &refs)
    };
    let mut rs = [start("r0"), start("r1")];
    let serial_of = |pem: &str| {
        let chain = phoenix_pki::x509::parse_chain(pem, "chain").ok()?;
        Some(phoenix_pki::x509::inspect(&chain[0]).ok()?.serial_hex)
    };
    // Two coordinator certificates, both from step-ca.
    let certs: Vec<serde_json::Value> = rs
        .iter()
        .map(|r| {
            let out = r.cli(&["certs", "-o", "json"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).expect("certs json")
        })
        .collect();
    let coordinator_serial = |c: &serde_json::Value| {
        c.as_array()
            .into_iter()
            .flatten()
            .find(|e| e["kind"] == "coordinator")
            .map(|e| e["serial"].to_string())
            .expect("coordinator cert listed")
    };
    assert_ne!(
        coordinator_serial(&certs[0]),
        coordinator_serial(&certs[1]),
        "each replica has its own certificate"
    );

    // Guest 441 enrolls through r0 (first address of r0's token), guest 442 through r1.
    let mut a = Agent::new(tmp.path(), 441);
    join(&a, &rs[0].token(441));
    let mut b = Agent::new(tmp.path(), 442);
    join(&b, &rs[1].token(442));
    let roots = std::fs::read_to_string(a.state().join("roots.pem")).expect("roots");
    let fp = ca.get("PHOENIX_STEPCA_FINGERPRINT");
    assert!(
        phoenix_pki::x509::parse_chain(&roots, "roots")
            .expect("roots")
            .iter()
            .any(|r| phoenix_pki::x509::fingerprint(r).eq_ignore_ascii_case(fp)),
        "the agent pinned step-ca's root"
    );
    let enrolled_by = |r: &Coordinator, g: u32| {
        r.log()
            .lines()
            .any(|l| l.contains("agent enrolled") && l.contains(&format!("guest={g}")))
    };
    assert!(enrolled_by(&rs[0], 441), "r0 enrolled 441");
    assert!(enrolled_by(&rs[1], 442), "r1 enrolled 442");
    let enrolled = |g: u32| -> serde_json::Value {
        serde_json::from_str(&etcd_get(&cluster, &format!("/phoenix/agents/{g:010}")))
            .expect("agent record")
    };
    a.start();
    b.start();
    wait_for(T, "both agents connected", || {
        let s = rs[1].status();
        [441, 442]
            .iter()
            .all(|g| guest_status(&s, *g).is_some_and(|r| r["connected"] == true))
            .then_some(())
    });

    // r0 dies: the agent it enrolled moves to r1 and renews its identity there, from
    // the same step-ca, without a new token.
    rs[0].kill9();
    let killed_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let renewed = wait_for(T, "guest 441 renewed after r0 died", || {
        let rec = enrolled(441);
        (rec["renewed_unix"].as_i64() > Some(killed_unix)).then_some(rec)
    });
    wait_for(T, "the agent to hold the renewed identity", || {
        let cert = std::fs::read_to_string(a.state().join("cert.pem")).ok()?;
        (serial_of(&cert).as_deref() == renewed["serial"].as_str()).then_some(())
    });
    // Only r1 is up, and it says so.
    let log = rs[1].log();
    assert!(
        log.lines()
            .any(|l| l.contains("agent identity renewed") && l.contains("guest=441")),
        "r1 renewed it:\n{log}"
    );
    wait_for(
        T,
        "guest 441 connected to r1 with the renewed identity",
        || {
            guest_status(&rs[1].status(), 441)
                .filter(|r| r["connected"] == true && r["replica"] == "r1")
        },
    );
}

/// The attack: a guest sends dry-run reports nobody asked for, and answers one plan many
/// times, hoping its replica writes them all to etcd (or fills it). Only replicas hold
/// etcd credentials; a guest's words reach `plan_reports/` once per plan it was asked.
#[test]
fn a_guest_gets_one_plan_report_into_etcd_per_plan_it_was_asked() {
    use phoenix_proto::v1::{self, agent_message, coordinator_message};
    use phoenix_tests::sim;
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(&tmp.path().join("etcd")) else {
        return;
    };
    let r0 = replica(&cluster, tmp.path(), "r0");
    let r1 = replica(&cluster, tmp.path(), "r1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let guest = 451;
    let key = format!("/phoenix/plan_reports/{guest:010}");
    let dry = |digest: &str, word: &str| v1::AgentMessage {
        msg: Some(agent_message::Msg::Report(v1::ApplyReport {
            revision: 0,
            digest: digest.to_string(),
            dry_run: true,
            trigger: word.to_string(),
            ..Default::default()
        })),
    };
    // A hand-driven guest with a real identity, its session on r1.
    let token = r0.token(guest);
    let mut session = rt.block_on(async {
        let agent = sim::enroll(guest, &token, &r0.addr).await.expect("enroll");
        let mut client = agent.client(&r1.addr).await.expect("connect r1");
        sim::open_session(&mut client, guest)
            .await
            .expect("session")
    });
    wait_for(T, "the session registered cluster-wide", || {
        guest_status(&r0.status(), guest).filter(|r| r["replica"] == "r1")
    });
    rt.block_on(async {
        for _ in 0..20 {
            session
                .outbound
                .send(dry("unasked", "unasked"))
                .await
                .expect("send");
        }
    });

    // The operator plans through r0; the guest answers ten times.
    let spec = tmp.path().join("spec.json");
    write_spec(&spec, &[(guest, files_spec(tmp.path(), &[("motd", "x")]))]);
    let plan = Command::new(phoenix_tests::bin("phoenix"))
        .arg("--admin-socket")
        .arg(r0.socket())
        .args(["plan", "-f", spec.to_str().expect("utf8")])
        .args(["--timeout", "60s", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("phoenix plan");
    rt.block_on(async {
        loop {
            let m = session
                .inbound
                .message()
                .await
                .expect("session")
                .expect("open");
            if let Some(coordinator_message::Msg::Desired(d)) = m.msg
                && d.dry_run
            {
                for _ in 0..10 {
                    session
                        .outbound
                        .send(dry(&d.digest, "push"))
                        .await
                        .expect("send");
                }
                return;
            }
        }
    });
    let out = plan.wait_with_output().expect("plan");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value =
        serde_json::from_str(&cluster.etcdctl(&["get", &key, "-w", "json"])).expect("json");
    let kv = &got["kvs"][0];
    assert_eq!(
        kv["version"], 1,
        "one plan report written for one plan, none unasked: {got}"
    );
    assert_ne!(
        kv["lease"], 0,
        "the plan report lives under the plan's lease: {got}"
    );
    drop(session);
}
