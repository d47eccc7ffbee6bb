//! `phoenix serve --store etcd`: the real daemon and agents with their state in a real
//! 3-member etcd cluster (tests/src/etcd.rs) instead of the state directory's redb file.

use phoenix_tests::etcd::EtcdCluster;
use phoenix_tests::spine::{
    Agent, Coordinator, converged, enrolled, files_spec, guest_status, serve_expecting_failure,
    write_spec,
};
use phoenix_tests::wait_for;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[test]
fn a_coordinator_on_etcd_enrolls_applies_and_survives_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(&tmp.path().join("etcd")) else {
        return;
    };
    let eps = cluster.endpoints().join(",");
    let secret = tmp.path().join("ca.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").expect("secret");
    let mut c = Coordinator::start(
        &tmp.path().join("c"),
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &eps,
            "--ca-secret-file",
            secret.to_str().expect("utf8"),
        ],
    );
    let agents: Vec<Agent> = [201, 202]
        .into_iter()
        .map(|g| enrolled(&c, tmp.path(), g))
        .collect();
    let spec = tmp.path().join("spec.json");
    let guests: Vec<_> = agents
        .iter()
        .map(|a| (a.guest, files_spec(&a.root, &[("motd", "v1\n")])))
        .collect();
    write_spec(&spec, &guests);
    c.apply_ok(&spec);

    // The state is in etcd, not in the state directory; so is the CA, its key sealed.
    assert!(!c.dir.join("state/phoenix.redb").exists());
    assert!(!c.dir.join("state/ca/ca.key").exists());
    let sealed = cluster.etcdctl(&["get", "/phoenix/ca/embedded", "--print-value-only"]);
    assert!(
        sealed.contains("sealed_key") && !sealed.contains("PRIVATE KEY"),
        "{sealed}"
    );
    let keys = cluster.etcdctl(&["get", "/phoenix/", "--prefix", "--keys-only"]);
    for key in [
        "/phoenix/agents/0000000201",
        "/phoenix/desired/0000000202",
        "/phoenix/reports/0000000201",
        "/phoenix/meta/revision",
        "/phoenix/replicas/",
    ] {
        assert!(keys.contains(key), "{key} in etcd:\n{keys}");
    }

    // A crashed coordinator comes back from etcd: same agents, same revisions.
    c.restart();
    wait_for(T, "agents reconnected and converged at rev 1", || {
        let s = c.status();
        agents
            .iter()
            .all(|a| {
                converged(&s, a.guest)
                    && guest_status(&s, a.guest)
                        .is_some_and(|g| g["connected"] == true && g["applied_revision"] == 1)
            })
            .then_some(())
    });
    write_spec(
        &spec,
        &[(201, files_spec(&agents[0].root, &[("motd", "v2\n")]))],
    );
    let out = c.cli(&[
        "apply",
        "-f",
        spec.to_str().expect("utf8"),
        "--timeout",
        "30s",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("guest 201 rev 2"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(agents[0].root.join("motd")).expect("motd"),
        "v2\n"
    );
}

#[test]
fn serve_without_reachable_etcd_fails_naming_the_endpoints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dead = "http://127.0.0.1:1,http://127.0.0.1:2";
    let out = serve_expecting_failure(
        &tmp.path().join("state"),
        &tmp.path().join("admin.sock"),
        &["--store", "etcd", "--etcd-endpoints", dead],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(dead) && err.contains("unavailable"),
        "stderr: {err}"
    );
}

#[test]
fn the_embedded_ca_on_etcd_needs_its_secret_and_refuses_a_wrong_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(&tmp.path().join("etcd")) else {
        return;
    };
    let eps = cluster.endpoints().join(",");
    let serve = |n: &str, extra: &[&str]| {
        let args = [&["--store", "etcd", "--etcd-endpoints", &eps][..], extra].concat();
        serve_expecting_failure(
            &tmp.path().join(n).join("state"),
            &tmp.path().join(n).join("admin.sock"),
            &args,
        )
    };
    let out = serve("a", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ca-secret-file"), "{err}");
    let weak = tmp.path().join("weak");
    std::fs::write(&weak, "hunter2").expect("write");
    let out = serve("b", &["--ca-secret-file", weak.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 32"), "{err}");

    // One replica seals the CA with its secret; another with a different one cannot
    // unseal it (and does not make a CA of its own).
    let good = tmp.path().join("good");
    std::fs::write(&good, "0123456789abcdef0123456789abcdef").expect("write");
    let first = Coordinator::start(
        &tmp.path().join("c"),
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &eps,
            "--ca-secret-file",
            good.to_str().expect("utf8"),
        ],
    );
    let other = tmp.path().join("other");
    std::fs::write(&other, "1123456789abcdef0123456789abcdef").expect("write");
    let out = serve("d", &["--ca-secret-file", other.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot unseal the CA key"), "{err}");
    drop(first);
}

/// etcd as the example setup runs it: clients over TLS, client certificates required.
#[test]
fn a_coordinator_reaches_etcd_over_mutual_tls_and_one_without_a_client_cert_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start_tls(&tmp.path().join("etcd")) else {
        return;
    };
    let tls = cluster.tls().expect("TLS cluster").clone();
    let eps = cluster.endpoints().join(",");
    assert!(eps.starts_with("https://"), "{eps}");
    let secret = tmp.path().join("ca.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").expect("secret");
    let path = |p: &std::path::Path| p.to_str().expect("utf8").to_string();
    let base = [
        "--store".to_string(),
        "etcd".into(),
        "--etcd-endpoints".into(),
        eps.clone(),
        "--ca-secret-file".into(),
        path(&secret),
        "--etcd-ca".into(),
        path(&tls.ca),
    ];
    let with_cert = [
        "--etcd-cert".to_string(),
        path(&tls.client_cert),
        "--etcd-key".into(),
        path(&tls.client_key),
    ];
    let args: Vec<&str> = base.iter().chain(&with_cert).map(String::as_str).collect();
    let c = Coordinator::start(&tmp.path().join("c"), &args);
    let a = enrolled(&c, tmp.path(), 211);
    let spec = tmp.path().join("spec.json");
    write_spec(&spec, &[(211, files_spec(&a.root, &[("motd", "tls\n")]))]);
    c.apply_ok(&spec);
    let keys = cluster.etcdctl(&["get", "/phoenix/agents/", "--prefix", "--keys-only"]);
    assert!(keys.contains("/phoenix/agents/0000000211"), "{keys}");

    // No client certificate: etcd refuses the connection, the replica does not start.
    let no_cert: Vec<&str> = base.iter().map(String::as_str).collect();
    let out = serve_expecting_failure(
        &tmp.path().join("n/state"),
        &tmp.path().join("n/admin.sock"),
        &no_cert,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    // etcd 3.4 closes the handshake without a reason, so the client sees either a refused
    // handshake ("open store at etcd …") or a connection closed under its first request,
    // which looks like an unreachable etcd ("… is unavailable"); both name the endpoints.
    assert!(
        (err.contains("open store at etcd") || err.contains("is unavailable"))
            && err.contains(&eps),
        "{err}"
    );
    // https:// without the CA, and a client key without https, are refused at once.
    for (extra, says) in [
        (
            vec!["--store", "etcd", "--etcd-endpoints", eps.as_str()],
            "--etcd-ca",
        ),
        (
            vec![
                "--store",
                "etcd",
                "--etcd-endpoints",
                "http://127.0.0.1:2379",
                "--etcd-cert",
                with_cert[1].as_str(),
                "--etcd-key",
                with_cert[3].as_str(),
            ],
            "https://",
        ),
    ] {
        let out = serve_expecting_failure(
            &tmp.path().join("x/state"),
            &tmp.path().join("x/admin.sock"),
            &extra,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{extra:?}: {err}");
    }
}
