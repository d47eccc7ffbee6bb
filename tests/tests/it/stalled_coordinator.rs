//! A coordinator that completes TLS and HTTP/2 but never answers a session's opening (as a
//! fresh-machine CI run once saw tonic leave a request unanswered) must not hold the real
//! agent forever: the agent gives up after `session-open-timeout` (here from agent.toml),
//! logs it naming the coordinator, reconnects, and converges once a real coordinator
//! answers on that address.
//!
//! The stand-in is a tonic server on the coordinator's address presenting a certificate the
//! coordinator's own CA issued for the coordinator identity, so the agent's TCP connect,
//! TLS handshake (with its identity check) and HTTP/2 handshake all succeed and only the
//! opening stalls. A SIGSTOPped coordinator would not do: its kernel still accepts TCP, but
//! the TLS handshake then stalls, which the connect timeout already bounds.

use phoenix_ca::CertAuthority;
use phoenix_pki::San;
use phoenix_pki::tls::{self, IdentityStore, TrustStore};
use phoenix_proto::v1;
use phoenix_tests::spine::{Agent, Coordinator, files_spec, guest_status, write_spec};
use phoenix_tests::standin::{COORDINATOR, COORDINATOR_URI, Opening, StandIn, mint};
use phoenix_tests::wait_for;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The agent's `session-open-timeout` in this test (seconds).
const OPEN_TIMEOUT: u64 = 3;

/// Serves a stalling stand-in on `listener`. The accept loop is the returned task's own, so aborting it
/// frees the address at once (pki's `tls_incoming` keeps its listener until the next accept).
fn serve_stall(
    listener: tokio::net::TcpListener,
    cfg: Arc<rustls::ServerConfig>,
    openings: Arc<AtomicUsize>,
) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let accept = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(tls) = acceptor.accept(tcp).await
                && tx.send(Ok::<_, std::io::Error>(tls)).await.is_err()
            {
                break;
            }
        }
    });
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .serve_with_incoming(
                v1::agent_server::AgentServer::new(StandIn {
                    opening: Opening::Stall,
                    openings,
                }),
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )
            .await;
    });
    (accept, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_session_opening_times_out_and_the_agent_converges_on_a_real_coordinator() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = Coordinator::start(&tmp.path().join("c"), &[]);
    let mut agent = Agent::new(tmp.path(), 301);
    let joined = agent.join(&c.token(301), &[]);
    assert!(
        joined.status.success(),
        "{}",
        String::from_utf8_lossy(&joined.stderr)
    );
    let config = tmp.path().join("agent.toml");
    std::fs::write(&config, format!("session-open-timeout = {OPEN_TIMEOUT}\n")).expect("config");
    agent.env.push((
        "PHOENIX_AGENT_CONFIG".into(),
        config.to_str().expect("utf8").into(),
    ));

    let ca =
        phoenix_ca::embedded::EmbeddedCa::load_or_create(&c.dir.join("state/ca"), "phoenix.lab")
            .expect("the coordinator's CA");
    let identity = IdentityStore::new(
        mint(
            &ca,
            vec![
                San::Dns(COORDINATOR.into()),
                San::Uri(COORDINATOR_URI.into()),
            ],
        )
        .await,
    );
    let roots = ca.roots_pem().await.expect("roots");
    let cfg = tls::server_config(identity, TrustStore::from_pem(&roots).expect("trust"))
        .expect("server config");
    let addr = c.addr.clone();
    c.kill9();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("take over the coordinator's address");
    let openings = Arc::new(AtomicUsize::new(0));
    let (accept, server) = serve_stall(listener, cfg, openings.clone());

    let started = Instant::now();
    agent.start();
    let gave_up =
        format!("coordinator {addr} did not answer the session's opening within {OPEN_TIMEOUT}s");
    // Two openings given up on: the agent reconnected after the first, and again after the
    // second. Without the bound the first opening is never answered and this times out.
    wait_for(Duration::from_secs(60), "two openings given up on", || {
        (agent.log().matches(&gave_up).count() >= 2).then_some(())
    });
    let elapsed = started.elapsed();
    assert!(
        openings.load(Ordering::SeqCst) >= 2,
        "the stand-in saw {} openings: {}",
        openings.load(Ordering::SeqCst),
        agent.log()
    );
    // Each attempt waited the bound, not less (the connect did not simply fail).
    assert!(
        elapsed >= Duration::from_secs(2 * OPEN_TIMEOUT),
        "gave up twice in {elapsed:?}"
    );
    assert!(!agent.log().contains("session open"), "{}", agent.log());

    // A real coordinator on that address: the agent's next attempt is answered.
    accept.abort();
    server.abort();
    let _ = accept.await;
    c.restart();
    wait_for(Duration::from_secs(60), "agent connected", || {
        guest_status(&c.status(), 301).filter(|g| g["connected"] == true)
    });
    let spec = tmp.path().join("spec.json");
    write_spec(
        &spec,
        &[(
            301,
            files_spec(&agent.root, &[("motd", "after the stall\n")]),
        )],
    );
    c.apply_ok(&spec);
    let written = wait_for(Duration::from_secs(60), "the desired state applied", || {
        std::fs::read_to_string(agent.root.join("motd")).ok()
    });
    assert_eq!(written, "after the stall\n");
    agent.kill9();
}

/// How many refused openings `refused_session_openings_are_each_answered` makes
/// (`PHOENIX_REFUSED_OPENINGS` raises it for a hunt).
fn refused_openings() -> usize {
    std::env::var("PHOENIX_REFUSED_OPENINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120)
}

/// The CI hang: a session opened with an expired (or revoked) certificate, which the
/// coordinator refuses with a TLS alert right after the handshake, while the client's
/// HTTP/2 preface and request are already on their way. Many of them at once, so the alert
/// races every stage of the client's connection; each must come back as a refusal, never as
/// silence (`session_attempt` panics after 30 s without an answer).
#[tokio::test(flavor = "multi_thread")]
async fn refused_session_openings_are_each_answered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(
        &tmp.path().join("c"),
        &["--agent-cert-ttl", "2s", "--renew-after-expiry", "0s"],
    );
    let read = |a: &Agent, f: &str| std::fs::read_to_string(a.state().join(f)).expect("read");
    let expired = Agent::new(tmp.path(), 302);
    assert!(expired.join(&c.token(302), &[]).status.success());
    let revoked = Agent::new(tmp.path(), 303);
    assert!(revoked.join(&c.token(303), &[]).status.success());
    assert!(c.cli(&["revoke", "--guest", "303"]).status.success());
    let ids: Vec<(u32, String, String, String)> = [(302, &expired), (303, &revoked)]
        .into_iter()
        .map(|(g, a)| {
            (
                g,
                read(a, "cert.pem"),
                read(a, "key.pem"),
                read(a, "roots.pem"),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let total = refused_openings();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let (guest, chain, key, roots) = ids[i % ids.len()].clone();
        let addr = c.addr.clone();
        tasks.spawn(async move {
            phoenix_tests::raw::session_attempt(&addr, COORDINATOR, &chain, &key, &roots, guest)
                .await
        });
        // At most 24 in flight: enough to load both cores, not enough to hit the
        // coordinator's handshake limits.
        if tasks.len() >= 24 {
            let r = tasks
                .join_next()
                .await
                .expect("task")
                .expect("attempt answered");
            assert!(r.is_err(), "a refused identity opened a session");
        }
    }
    while let Some(r) = tasks.join_next().await {
        assert!(
            r.expect("attempt answered").is_err(),
            "a refused identity opened a session"
        );
    }
    eprintln!(
        "{total} refused openings answered in {:?}",
        started.elapsed()
    );
}

/// A coordinator that stops answering in the middle of a session (SIGSTOP: its sockets stay
/// open, nothing is read or sent) is noticed by the channel's HTTP/2 keepalive (a ping every
/// 20 s, 10 s for its answer), not never; once it runs again the agent is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_gone_silent_mid_session_is_noticed_by_keepalive() {
    use nix::sys::signal::{Signal, kill};
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let agent = phoenix_tests::spine::enrolled(&c, tmp.path(), 304);
    wait_for(Duration::from_secs(30), "session open", || {
        agent.log().contains("session open").then_some(())
    });
    let ended = |log: &str| log.matches("coordinator session ended").count();
    let before = ended(&agent.log());
    let pid = nix::unistd::Pid::from_raw(i32::try_from(c.pid().expect("pid")).expect("pid"));
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let stopped = Instant::now();
    let noticed = wait_for(Duration::from_secs(60), "the agent to notice", || {
        (ended(&agent.log()) > before).then(|| stopped.elapsed())
    });
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let resumed = Instant::now();
    eprintln!("silent coordinator noticed after {noticed:?}");
    // Keepalive interval + timeout is 30 s; a few seconds more for the ping schedule.
    assert!(
        noticed <= Duration::from_secs(35),
        "noticed after {noticed:?}"
    );
    let opens = |log: &str| log.matches("session open").count();
    let opened = opens(&agent.log());
    wait_for(Duration::from_secs(60), "the session back", || {
        (opens(&agent.log()) > opened).then_some(())
    });
    eprintln!("session back {:?} after SIGCONT", resumed.elapsed());
    wait_for(Duration::from_secs(30), "agent connected", || {
        guest_status(&c.status(), 304).filter(|g| g["connected"] == true)
    });
}
