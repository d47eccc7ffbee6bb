//! Connection exhaustion on the agent port, against the real `phoenix serve` under a
//! 1024 open-file limit: idle TLS connections (no client certificate, no HTTP/2 preface)
//! neither lock out the admin CLI nor real agents, and are closed by their deadline.

use phoenix_pki::tls::{self, TrustStore};
use phoenix_tests::spine::{Agent, Coordinator, converged, files_spec, write_spec};
use phoenix_tests::wait_for;
use rustls_pki_types::ServerName;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const ATTACK: usize = 2000;
/// `phoenix serve --help`: the default --handshake-timeout and --max-pending-connections.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_PENDING: usize = 256;
const SLACK: Duration = Duration::from_secs(5);

fn raise_own_fd_limit(need: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        hard >= need,
        "the test needs {need} descriptors, hard limit is {hard}"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

/// `Max open files` soft and hard of a process.
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

enum Attempt {
    /// Handshake completed at this instant; the stream is kept idle.
    Idle(Instant, Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// The server closed it during the handshake: how long after the TCP connect.
    Refused(Duration),
    /// Neither served nor refused: stuck in the backlog or the handshake.
    Hung,
}

async fn attempt(addr: String, connector: TlsConnector) -> Attempt {
    tokio::time::timeout(HANDSHAKE_TIMEOUT + SLACK, try_handshake(addr, connector))
        .await
        .unwrap_or(Attempt::Hung)
}

async fn try_handshake(addr: String, connector: TlsConnector) -> Attempt {
    let name = ServerName::try_from("coordinator.phoenix.lab").expect("name");
    let tcp = match TcpStream::connect(&addr).await {
        Ok(t) => t,
        Err(_) => return Attempt::Refused(Duration::ZERO),
    };
    let connected = Instant::now();
    match connector.connect(name, tcp).await {
        Ok(tls) => Attempt::Idle(Instant::now(), Box::new(tls)),
        Err(_) => Attempt::Refused(connected.elapsed()),
    }
}

/// Reads until the server closes the stream; when that happened.
async fn closed_at(mut tls: Box<tokio_rustls::client::TlsStream<TcpStream>>) -> Instant {
    let mut buf = [0u8; 1024];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

/// `phoenix status`, killed (and the test failed) if it has not answered within `limit`.
fn status_within(c: &Coordinator, limit: Duration) -> std::process::Output {
    let mut child = std::process::Command::new(phoenix_tests::bin("phoenix"))
        .arg("--admin-socket")
        .arg(c.socket())
        .args(["status", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn phoenix status");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("phoenix status did not answer within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_connections_lock_out_neither_admin_nor_agents() {
    raise_own_fd_limit(ATTACK as u64 + 500);
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start_under(
        &tmp.path().join("c"),
        &[],
        &["prlimit", "--nofile=1024:1024", "--"],
    );
    let pid = c.pid().expect("pid");
    assert_eq!(nofile(pid), (1024, 1024), "the limit the attack needs");

    let roots = std::fs::read_to_string(c.dir.join("state/ca/ca.crt")).expect("root");
    let cfg = tls::server_auth_config(
        TrustStore::from_pem(&roots).expect("roots"),
        "spiffe://phoenix.lab/coordinator",
    )
    .expect("cfg");
    let connector = TlsConnector::from(cfg);

    // The attack: 2000 connections at once, each completing TLS if the server lets it,
    // then sending nothing (no client certificate, no HTTP/2 preface).
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ATTACK {
        tasks.spawn(attempt(c.addr.clone(), connector.clone()));
    }
    let mut idle = Vec::new();
    let mut refused = Vec::new();
    let mut hung = 0;
    while let Some(a) = tasks.join_next().await {
        match a.expect("attempt task") {
            Attempt::Idle(at, tls) => idle.push((at, tls)),
            Attempt::Refused(at) => refused.push(at),
            Attempt::Hung => hung += 1,
        }
    }
    eprintln!(
        "{} idle, {} refused, {hung} hung, all settled after {:?}",
        idle.len(),
        refused.len(),
        started.elapsed()
    );
    assert_eq!(hung, 0, "connections neither served nor refused");
    assert!(
        !idle.is_empty() && idle.len() <= MAX_PENDING,
        "{} connections completed TLS while at most {MAX_PENDING} may be pending",
        idle.len()
    );
    // Refused ones were closed at once, not queued until some deadline.
    let slowest = refused.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < HANDSHAKE_TIMEOUT - Duration::from_secs(2),
        "a refused connection was held for {slowest:?}"
    );

    // The idle ones are still held: the admin CLI answers regardless, and quickly.
    let out = status_within(&c, Duration::from_secs(5));
    assert!(
        out.status.success(),
        "phoenix status under the attack: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every idle connection is closed by the server within the documented timeout.
    let closers: Vec<_> = idle
        .into_iter()
        .map(|(at, tls)| tokio::spawn(async move { (at, closed_at(tls).await) }))
        .collect();
    for t in closers {
        let (handshake_done, closed) = tokio::time::timeout(HANDSHAKE_TIMEOUT + SLACK * 2, t)
            .await
            .expect("an idle connection was never closed")
            .expect("closer task");
        let held = closed.duration_since(handshake_done);
        assert!(
            held <= HANDSHAKE_TIMEOUT + SLACK,
            "idle connection held for {held:?}"
        );
        assert!(
            closed.duration_since(started) >= HANDSHAKE_TIMEOUT - Duration::from_secs(1),
            "closed after {:?}, before the handshake timeout",
            closed.duration_since(started)
        );
    }
    let log = c.log();
    assert!(log.contains("agent port full"), "{log}");
    assert!(log.contains("no request after TLS"), "{log}");

    // A real agent enrolls, connects and converges an apply on the same daemon.
    let mut a = Agent::new(tmp.path(), 101);
    let out = a.join(&c.token(101), &[]);
    assert!(
        out.status.success(),
        "join: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.start();
    let spec = tmp.path().join("spec.json");
    write_spec(
        &spec,
        &[(101, files_spec(&a.root, &[("motd", "still here\n")]))],
    );
    let out = c.cli(&[
        "apply",
        "-f",
        spec.to_str().expect("utf8"),
        "--timeout",
        "60s",
    ]);
    assert!(
        out.status.success(),
        "apply: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(Duration::from_secs(30), "converged", || {
        converged(&c.status(), 101).then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(a.root.join("motd")).expect("motd"),
        "still here\n"
    );
    // The daemon did not run out of descriptors on the way.
    assert!(!c.log().contains("accept on the"), "{}", c.log());
}

#[test]
fn the_daemon_raises_its_soft_open_file_limit_to_the_hard_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start_under(
        &tmp.path().join("c"),
        &[],
        &["prlimit", "--nofile=1024:4096", "--"],
    );
    assert_eq!(nofile(c.pid().expect("pid")), (4096, 4096));
    // The two lines are logged by different tasks; the second may follow the first a little.
    wait_for(
        Duration::from_secs(10),
        "the connection cap in the log",
        || c.log().contains("max_connections=3968").then_some(()),
    );
    assert!(
        c.log().contains("raised the open-file limit"),
        "{}",
        c.log()
    );
}
