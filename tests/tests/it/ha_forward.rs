//! What an operator asks of one replica reaches agents whose sessions are on the others
//! (issue 15, docs/design/0010 phase 3), with real parts: a real 3-member etcd on
//! loopback, real `phoenix serve --store etcd` replicas and real agents spread over
//! them. `phoenix converge` and `phoenix apply --force` travel through etcd
//! (`converge/<guest>`); a plan's lease outlives the wait its asker announced; and a
//! guest's own identity cannot write the keys that make another agent run a pass.

use phoenix_tests::etcd::EtcdCluster;
use phoenix_tests::replicas::{agreed_holders, etcd_get, replica, replicas};
use phoenix_tests::spine::{Agent, Coordinator, files_spec, guest_status, write_spec};
use phoenix_tests::wait_for;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Agents for `guests` joined through tokens of the replicas in turn (so their sessions
/// spread) and started with a drift check so rare that only a push or a request runs a
/// pass within the test.
fn agents(rs: &[Coordinator], base: &Path, guests: &[u32]) -> Vec<Agent> {
    guests
        .iter()
        .enumerate()
        .map(|(n, g)| {
            let mut a = Agent::new(base, *g);
            let out = a.join(&rs[n % rs.len()].token(*g), &[]);
            assert!(out.status.success(), "join {g}: {}", text(&out));
            a.start_with_drift("3600");
            a
        })
        .collect()
}

fn motd(a: &Agent) -> String {
    std::fs::read_to_string(a.root.join("motd")).unwrap_or_default()
}

fn drift(agents: &[Agent]) {
    for a in agents {
        std::fs::write(a.root.join("motd"), "edited by hand\n").expect("drift");
    }
}

/// The lease TTL etcd granted the key's lease, in seconds (0: no lease).
fn granted_ttl(cluster: &EtcdCluster, key: &str) -> i64 {
    let got: Value =
        serde_json::from_str(&cluster.etcdctl(&["get", key, "-w", "json"])).expect("json");
    let lease = got["kvs"][0]["lease"].as_i64().unwrap_or(0);
    if lease == 0 {
        return 0;
    }
    let ttl: Value = serde_json::from_str(&cluster.etcdctl(&[
        "lease",
        "timetolive",
        &format!("{lease:x}"),
        "-w",
        "json",
    ]))
    .expect("json");
    ttl["granted-ttl"].as_i64().unwrap_or(0)
}

#[test]
fn converge_and_apply_force_through_one_replica_run_passes_on_the_others() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(&tmp.path().join("etcd")) else {
        return;
    };
    let rs = replicas(&cluster, tmp.path(), 3);
    let guests: Vec<u32> = (461..467).collect();
    let mut agents = agents(&rs, tmp.path(), &guests);
    let held = wait_for(T, "every replica to agree where every agent is", || {
        agreed_holders(&rs, &guests)
    });
    eprintln!("holders: {held:?}");
    // Everything is asked of r0; the guests held elsewhere are the point.
    let remote: Vec<usize> = (0..guests.len()).filter(|i| held[*i] != "r0").collect();
    let local: Vec<usize> = (0..guests.len()).filter(|i| held[*i] == "r0").collect();
    assert!(
        !remote.is_empty(),
        "tokens of three replicas, yet every session on r0: {held:?}"
    );
    let spec = tmp.path().join("spec.json");
    let gs: Vec<_> = agents
        .iter()
        .map(|a| (a.guest, files_spec(&a.root, &[("motd", "v1\n")])))
        .collect();
    write_spec(&spec, &gs);
    rs[0].apply_ok(&spec);

    // `phoenix converge` through r0: the replica holding the session runs it, r0 says
    // which, and the pass repairs the drift.
    drift(&agents);
    for i in remote.iter().chain(&local) {
        let (a, holder) = (&agents[*i], &held[*i]);
        let asked = std::time::Instant::now();
        let out = rs[0].cli(&["converge", "--guest", &a.guest.to_string()]);
        eprintln!(
            "converge {} (session on {holder}) through r0: {:?}",
            a.guest,
            asked.elapsed()
        );
        let t = text(&out);
        assert!(out.status.success(), "converge {}: {t}", a.guest);
        let via = format!("through replica {holder}");
        assert_eq!(t.contains(&via), holder != "r0", "guest {}: {t}", a.guest);
        assert_eq!(motd(a), "v1\n", "guest {} not repaired: {t}", a.guest);
    }

    // `phoenix apply --force` through r0, same configs: every guest runs a pass now,
    // wherever its session is, and the apply follows their reports to the end.
    drift(&agents);
    let lines = rs[0].apply_force(&spec);
    let spec_path = spec.to_str().expect("utf8");
    for (a, holder) in agents.iter().zip(&held) {
        let forced = lines
            .iter()
            .find(|l| l["event"] == "forced" && l["guest"] == a.guest)
            .unwrap_or_else(|| panic!("guest {} not forced: {lines:?}", a.guest));
        assert!(forced["refused"].is_null(), "{forced}");
        let via = (holder != "r0").then_some(holder.as_str());
        assert_eq!(forced["replica"].as_str(), via, "{forced}");
        let report = lines
            .iter()
            .find(|l| l["event"] == "report" && l["guest"] == a.guest)
            .unwrap_or_else(|| panic!("no report of guest {}: {lines:?}", a.guest));
        assert_eq!(report["trigger"], "converge", "{report}");
        assert_eq!(report["verdict"], "converged", "{report}");
        assert_eq!(report["counts"]["changed"], 1, "{report}");
        assert_eq!(motd(a), "v1\n", "guest {}", a.guest);
    }

    // A plan announced to wait 15 min keeps its forwarded keys longer than that (the
    // default 300 s would drop its reports midway); one that waits a minute gets 300 s.
    let far = &agents[remote[0]];
    let key = format!("/phoenix/plans/{:010}", far.guest);
    for (timeout, want) in [("900s", 960), ("60s", 300)] {
        let out = rs[0].cli(&["plan", "-f", spec_path, "--timeout", timeout, "-o", "json"]);
        // Exit 0: every connected guest's plan report came back.
        assert!(out.status.success(), "plan: {}", text(&out));
        assert_eq!(
            granted_ttl(&cluster, &key),
            want,
            "plan --timeout {timeout}"
        );
        let report = format!("/phoenix/plan_reports/{:010}", far.guest);
        assert_eq!(granted_ttl(&cluster, &report), want, "{report}");
    }

    // A guest connected nowhere is said so, as on a single coordinator.
    let gone = remote[0];
    agents[gone].kill9();
    let g = guests[gone];
    wait_for(T, "the killed agent shown disconnected", || {
        guest_status(&rs[0].status(), g).filter(|r| r["connected"] == false)
    });
    let out = rs[0].cli(&["converge", "--guest", &g.to_string()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not connected"), "{}", text(&out));
}

/// `etcdctl put key value` with the given client certificate and key; its output.
fn etcdctl_as(cluster: &EtcdCluster, cert: &Path, key: &Path, k: &str, v: &str) -> Output {
    let tls = cluster.tls().expect("TLS cluster");
    Command::new(std::env::var("PHOENIX_ETCDCTL_BIN").expect("etcdctl"))
        .env("ETCDCTL_API", "3")
        .arg("--cacert")
        .arg(&tls.ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg(format!("--endpoints={}", cluster.endpoints().join(",")))
        .args(["--dial-timeout", "3s", "--command-timeout", "5s"])
        .args(["put", k, v])
        .output()
        .expect("run etcdctl")
}

/// The attack: a guest holding its real identity (the key and certificate its agent
/// enrolled with) tries to make another guest's agent run a pass by writing
/// `converge/<other>` to etcd itself. etcd (mutual TLS, as the example setup runs it)
/// refuses the guest's certificate; the same write with a replica's etcd credentials
/// does run the other agent's pass, so the key is what a guest would need.
#[test]
fn a_guests_identity_cannot_write_the_keys_that_run_another_guests_pass() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start_tls(&tmp.path().join("etcd")) else {
        return;
    };
    let rs = [
        replica(&cluster, tmp.path(), "r0"),
        replica(&cluster, tmp.path(), "r1"),
    ];
    let (attacker, victim) = (471, 472);
    let agents = agents(&rs, tmp.path(), &[attacker, victim]);
    wait_for(T, "both agents connected", || {
        agreed_holders(&rs, &[attacker, victim])
    });
    let spec = tmp.path().join("spec.json");
    let gs: Vec<_> = agents
        .iter()
        .map(|a| (a.guest, files_spec(&a.root, &[("motd", "v1\n")])))
        .collect();
    write_spec(&spec, &gs);
    rs[0].apply_ok(&spec);
    let v = &agents[1];
    drift(std::slice::from_ref(v));
    let key = format!("/phoenix/converge/{victim:010}");

    // The guest's own identity, as its agent holds it: a live certificate naming the
    // guest, and its key.
    let state = agents[0].state();
    let pem = std::fs::read_to_string(state.join("cert.pem")).expect("the guest's cert.pem");
    let chain = phoenix_pki::x509::parse_chain(&pem, "cert").expect("chain");
    let info = phoenix_pki::x509::inspect(&chain[0]).expect("inspect");
    assert!(
        info.uris()
            .any(|u| u.ends_with(&format!("/guest/{attacker}"))),
        "not the attacker's identity: {:?}",
        info.sans
    );
    assert!(state.join("key.pem").is_file(), "the guest's key.pem");
    let out = etcdctl_as(
        &cluster,
        &state.join("cert.pem"),
        &state.join("key.pem"),
        &key,
        "r0",
    );
    assert!(
        !out.status.success(),
        "etcd took a write from a guest's identity: {}",
        text(&out)
    );
    // Refused by etcd's check of the client certificate, not by anything else.
    let refusals: Vec<String> = (0..3)
        .filter_map(|i| std::fs::read_to_string(tmp.path().join(format!("etcd/m{i}.log"))).ok())
        .flat_map(|log| {
            log.lines()
                .filter(|l| l.contains("rejected connection"))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        refusals.iter().any(|l| l.contains("unknown authority")),
        "no member refused the guest's certificate: {}\n{refusals:?}",
        text(&out)
    );
    assert_eq!(etcd_get(&cluster, &key), "", "the key was written");
    // Nothing ran: the drift is still there a while later (the agents check drift
    // only hourly here).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(motd(v), "edited by hand\n", "the victim ran a pass");

    // The same write with a replica's etcd credentials is a pass request: the replica
    // holding the victim's session has its agent run a pass.
    let tls = cluster.tls().expect("TLS").clone();
    let out = etcdctl_as(&cluster, &tls.client_cert, &tls.client_key, &key, "r0");
    assert!(out.status.success(), "{}", text(&out));
    wait_for(T, "the victim's pass after a replica's request", || {
        (motd(v) == "v1\n").then_some(())
    });
}
