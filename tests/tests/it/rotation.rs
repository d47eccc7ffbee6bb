//! Identity rotation against a real step-ca, observed as a peer observes it: the serial of
//! the certificate the coordinator presents on a new TLS handshake, the agent's certificate
//! on disk and in `phoenix certs`, and the agent's one TCP connection to the coordinator
//! staying established while pushes keep succeeding. No log lines are counted.

use phoenix_pki::x509::{self, CertInfo};
use phoenix_tests::spine::{Agent, Coordinator, converged, files_spec, write_spec};
use phoenix_tests::stepca::StepCa;
use phoenix_tests::wait_for;
use std::time::{Duration, Instant, SystemTime};

const SERVER: &str = "coordinator.phoenix.lab";

/// The agent's current certificate, from its state directory.
fn agent_cert(a: &Agent) -> CertInfo {
    let pem = std::fs::read_to_string(a.state().join("cert.pem")).expect("read agent cert.pem");
    let chain = x509::parse_chain(&pem, "agent cert.pem").expect("parse agent cert.pem");
    x509::inspect(&chain[0]).expect("inspect agent cert")
}

/// The certificate the coordinator presents to a new handshake, verified against the roots
/// the agent pinned.
fn presented(rt: &tokio::runtime::Runtime, c: &Coordinator, a: &Agent) -> CertInfo {
    let roots = std::fs::read_to_string(a.state().join("roots.pem")).expect("roots.pem");
    rt.block_on(phoenix_tests::raw::presented_certificate(
        &c.addr, SERVER, &roots,
    ))
    .expect("a TLS handshake with the coordinator")
}

/// The serial `phoenix certs -o json` lists for `kind` ("coordinator", "identity") of `guest`.
fn listed_serial(c: &Coordinator, guest: u32, kind: &str) -> Option<String> {
    let out = c.cli(&["certs", "-o", "json"]);
    let certs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    certs
        .as_array()?
        .iter()
        .find(|e| e["guest"] == guest && e["kind"] == kind)
        .and_then(|e| e["serial"].as_str().map(String::from))
}

fn port(c: &Coordinator) -> u16 {
    c.addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("coordinator port")
}

/// The local port of the agent's one session connection.
fn session_port(c: &Coordinator, a: &Agent) -> u16 {
    wait_for(
        Duration::from_secs(10),
        "the agent's session connection",
        || match a.connections_to(port(c))[..] {
            [p] => Some(p),
            _ => None,
        },
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
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
    let rt = runtime();
    // The identities come from step-ca: the agent pinned step-ca's root.
    let roots = std::fs::read_to_string(a.state().join("roots.pem")).expect("roots.pem");
    let root = x509::parse_chain(&roots, "roots.pem").expect("roots");
    assert!(
        root.iter().any(
            |r| x509::fingerprint(r).eq_ignore_ascii_case(ca.get("PHOENIX_STEPCA_FINGERPRINT"))
        ),
        "the agent's roots are not step-ca's"
    );
    let session = session_port(&c, &a);
    let spec = tmp.path().join("spec.json");
    let started = Instant::now();
    let (mut agent_serials, mut coordinator_serials) = (Vec::new(), Vec::new());
    let mut pushes = 0;
    loop {
        let mine = agent_cert(&a).serial_hex;
        if agent_serials.last() != Some(&mine) {
            agent_serials.push(mine);
        }
        let theirs = presented(&rt, &c, &a).serial_hex;
        if coordinator_serials.last() != Some(&theirs) {
            coordinator_serials.push(theirs);
        }
        if agent_serials.len() > 3 && coordinator_serials.len() > 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "fewer than 3 rotations in 120 s: agent serials {agent_serials:?}, coordinator serials {coordinator_serials:?}"
        );
        pushes += 1;
        push(&c, &a, &spec, pushes);
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!(
        "after {:?} and {pushes} pushes: agent serials {agent_serials:?}, coordinator serials {coordinator_serials:?}",
        started.elapsed()
    );
    // Every rotation was a new certificate, never a return to an old one.
    for serials in [&agent_serials, &coordinator_serials] {
        let mut unique = serials.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(&unique.len(), &serials.len(), "{serials:?}");
    }
    assert!(
        a.connections_to(port(&c)).contains(&session),
        "the session connection (local port {session}) did not stay open"
    );
    assert!(converged(&c.status(), 301));
    // What `phoenix certs` lists is what the peers present (a renewal may land between two
    // reads, so the two sides are compared until they agree).
    wait_for(
        Duration::from_secs(10),
        "`phoenix certs` to list the agent's serial",
        || (listed_serial(&c, 301, "identity")? == agent_cert(&a).serial_hex).then_some(()),
    );
    wait_for(
        Duration::from_secs(10),
        "`phoenix certs` to list the coordinator's presented serial",
        || {
            (listed_serial(&c, 0, "coordinator")? == presented(&rt, &c, &a).serial_hex)
                .then_some(())
        },
    );
}

/// With step-ca down past the renewal point, the agent keeps its certificate and the stream
/// keeps working; once step-ca is back the agent renews, on the same connection.
#[test]
fn renewal_survives_a_step_ca_outage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(ca) = StepCa::start(&tmp.path().join("ca")) else {
        return;
    };
    let (c, a) = start(tmp.path(), &ca, "30s");
    let session = session_port(&c, &a);
    let spec = tmp.path().join("spec.json");
    push(&c, &a, &spec, 1);
    ca.ctl("stop");
    let before = agent_cert(&a);
    // Past the latest jittered renewal point (71.7 % of the lifetime) but before expiry.
    let lifetime = before.lifetime();
    let overdue = before.not_before + lifetime.mul_f64(0.75);
    assert!(
        SystemTime::now() < overdue,
        "the test started too late to see a renewal fail: {:?} of {lifetime:?} gone",
        SystemTime::now().duration_since(before.not_before)
    );
    wait_for(Duration::from_secs(40), "the renewal point to pass", || {
        (SystemTime::now() > overdue).then_some(())
    });
    assert_eq!(
        agent_cert(&a).serial_hex,
        before.serial_hex,
        "the agent renewed while step-ca was down"
    );
    push(&c, &a, &spec, 2);
    ca.ctl("start");
    let renewed = wait_for(
        Duration::from_secs(40),
        "renewal after the CA returned",
        || Some(agent_cert(&a)).filter(|now| now.serial_hex != before.serial_hex),
    );
    assert!(renewed.not_after > before.not_after);
    push(&c, &a, &spec, 3);
    assert!(
        a.connections_to(port(&c)).contains(&session),
        "the session connection (local port {session}) did not stay open"
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
