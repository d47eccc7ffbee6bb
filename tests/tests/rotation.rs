//! Identity rotation against a real step-ca: agent and coordinator certificates renewed in
//! memory while one session stays open and pushes keep succeeding.

use phoenix_tests::spine::{Agent, Coordinator, converged, files_spec, write_spec};
use phoenix_tests::stepca::StepCa;
use phoenix_tests::wait_for;
use std::time::{Duration, Instant};

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

fn start(tmp: &std::path::Path, ca: &StepCa, ttl: &str) -> (Coordinator, Agent) {
    let mut args = ca.serve_args();
    args.extend(["--agent-cert-ttl", ttl, "--coordinator-cert-ttl", ttl].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Coordinator::start(&tmp.join("c"), &refs);
    let mut a = Agent::new(tmp, 301);
    let out = a.join(&c.token(301), &[]);
    assert!(
        out.status.success(),
        "join: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.start();
    wait_for(Duration::from_secs(30), "agent connected", || {
        phoenix_tests::spine::guest_status(&c.status(), 301).filter(|g| g["connected"] == true)
    });
    (c, a)
}

fn push(c: &Coordinator, a: &Agent, spec: &std::path::Path, n: u32) {
    write_spec(
        spec,
        &[(301, files_spec(&a.root, &[("n", &format!("{n}\n"))]))],
    );
    let out = c.cli(&[
        "apply",
        "-f",
        spec.to_str().expect("utf8"),
        "--timeout",
        "20s",
    ]);
    assert!(
        out.status.success(),
        "push {n}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn identities_rotate_three_times_on_one_open_stream() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(ca) = StepCa::start(&tmp.path().join("ca")) else {
        return;
    };
    let (c, a) = start(tmp.path(), &ca, "15s");
    let spec = tmp.path().join("spec.json");
    let started = Instant::now();
    let mut pushes = 0;
    while count(&a.log(), "identity renewed") < 3
        || count(&c.log(), "coordinator identity renewed") < 3
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "fewer than 3 rotations in 120 s:\n{}",
            a.log()
        );
        pushes += 1;
        push(&c, &a, &spec, pushes);
        std::thread::sleep(Duration::from_secs(2));
    }
    let (alog, clog) = (a.log(), c.log());
    eprintln!(
        "after {:?}: agent rotations {}, coordinator rotations {}, pushes {pushes}",
        started.elapsed(),
        count(&alog, "identity renewed"),
        count(&clog, "coordinator identity renewed")
    );
    assert_eq!(
        count(&alog, "session open"),
        1,
        "the stream was re-opened:\n{alog}"
    );
    assert_eq!(count(&alog, "session ended"), 0, "{alog}");
    // One for `join` using its new identity once (which spends the token), one for `run`.
    assert_eq!(count(&clog, "agent connected"), 2, "{clog}");
    assert!(!alog.contains("renewal failed"), "{alog}");
    assert!(converged(&c.status(), 301));
    // The identities really come from step-ca.
    let certs = String::from_utf8_lossy(&c.cli(&["certs", "-o", "json"]).stdout).to_string();
    assert!(certs.contains("spiffe://phoenix.lab/guest/301"), "{certs}");
}

#[test]
fn renewal_survives_a_step_ca_outage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(ca) = StepCa::start(&tmp.path().join("ca")) else {
        return;
    };
    let (c, a) = start(tmp.path(), &ca, "30s");
    let spec = tmp.path().join("spec.json");
    push(&c, &a, &spec, 1);
    ca.ctl("stop");
    // Past the renewal point (about 20 s) but well before expiry (30 s).
    wait_for(
        Duration::from_secs(40),
        "a failed renewal while the CA is down",
        || a.log().contains("renewal failed").then_some(()),
    );
    push(&c, &a, &spec, 2);
    ca.ctl("start");
    let renewed_before = count(&a.log(), "identity renewed");
    wait_for(
        Duration::from_secs(40),
        "renewal after the CA returned",
        || (count(&a.log(), "identity renewed") > renewed_before).then_some(()),
    );
    push(&c, &a, &spec, 3);
    let alog = a.log();
    assert_eq!(
        count(&alog, "session open"),
        1,
        "the stream was re-opened:\n{alog}"
    );
    assert!(converged(&c.status(), 301));
}

#[test]
fn agent_expired_while_offline_recovers_with_step_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(ca) = StepCa::start(&tmp.path().join("ca")) else {
        return;
    };
    let mut args = ca.serve_args();
    args.extend(["--agent-cert-ttl", "12s"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Coordinator::start(&tmp.path().join("c"), &refs);
    phoenix_tests::spine::expired_while_offline_recovers(&c, tmp.path(), 302);
}
