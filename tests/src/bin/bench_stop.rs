//! Stop benchmark: what `systemctl stop phoenix` costs with N agents connected. N simulated
//! agents (real enrollments, real mTLS sessions, answering every desired state with a
//! report, several per process) hold sessions to one real `phoenix serve`; then SIGTERM
//! (what systemd sends) and the time until the process has exited, and how each agent saw
//! its session end. Twice per run: idle, and right after an apply was pushed (reports in
//! flight). Each run is a fresh coordinator.
//!
//! Run: `cargo build --release -p phoenix-coordinator -p phoenix-tests --bins &&
//! target/release/bench_stop 100 5` (agents, runs).

use phoenix_coordinator::admin_client;
use phoenix_proto::token::JoinToken;
use phoenix_proto::v1;
use phoenix_tests::bin;
use phoenix_tests::sim::{self, Daemon, Res};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// How a simulated agent's session ended.
#[derive(Debug)]
enum Ended {
    /// The coordinator ended the stream with a status (`Code: message`).
    Status(String),
    /// The stream closed without a status.
    Closed,
}

/// One simulated agent: enroll, hold a session, answer every desired state with a report;
/// says when its session is open and how it ended.
async fn sim_agent(
    guest: u32,
    token: String,
    ready: UnboundedSender<u32>,
    ended: UnboundedSender<Ended>,
) -> Res<()> {
    let addr = JoinToken::decode(&token)?.addr;
    let agent = sim::enroll(guest, &token, &addr).await?;
    let mut session = sim::open_session(&mut agent.client(&addr).await?, guest).await?;
    let _ = ready.send(guest);
    let end = match session.answer(sim::Results::Unchanged, |_| {}).await {
        Ok(()) => Ended::Closed,
        Err(s) => Ended::Status(format!("{:?}: {}", s.code(), s.message())),
    };
    let _ = ended.send(end);
    Ok(())
}

/// One stop: a fresh coordinator, `n` agents connected, SIGTERM (after pushing an apply
/// when `in_flight`). Returns (time to exit, exit status, how the sessions ended).
async fn one_stop(
    n: u32,
    in_flight: bool,
    dir: &Path,
) -> Res<(Duration, String, BTreeMap<String, usize>)> {
    std::fs::create_dir_all(dir)?;
    let socket = dir.join("admin.sock");
    let child = Command::new(bin("phoenix"))
        .arg("--admin-socket")
        .arg(&socket)
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.join("state"))
        .env("PHOENIX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut admin = admin_client::connect(&socket).await?;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    for g in 1..=n {
        let token = admin
            .create_token(v1::CreateTokenRequest {
                guest_id: g,
                ttl_seconds: 600,
                replace: false,
            })
            .await?
            .into_inner()
            .token;
        let (r, e, sem) = (ready_tx.clone(), ended_tx.clone(), sem.clone());
        tokio::spawn(async move {
            // Enrollment and handshakes are what the permit limits; the session stays open.
            let Ok(permit) = sem.acquire_owned().await else {
                return;
            };
            let (gate_tx, mut gate_rx) = tokio::sync::mpsc::unbounded_channel();
            let agent = tokio::spawn(sim_agent(g, token, gate_tx, e));
            if gate_rx.recv().await.is_some() {
                let _ = r.send(g);
            }
            drop(permit);
            if let Ok(Err(err)) = agent.await {
                eprintln!("  simulated agent {g}: {err}");
            }
        });
    }
    drop(ended_tx);
    let mut up = 0;
    while up < n {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(_)) => up += 1,
            _ => return Err(format!("only {up} of {n} sessions opened").into()),
        }
    }
    let held = admin_client::status(&mut admin)
        .await?
        .iter()
        .filter(|g| g.connected)
        .count();
    if held != n as usize {
        return Err(format!("the coordinator holds {held} of {n} sessions").into());
    }
    if in_flight {
        let spec =
            r#"{"resources":[{"kind":"file","path":"/srv/phoenix-bench/f","content":"x\n"}]}"#;
        let guests = (1..=n).map(|g| (g, spec.as_bytes().to_vec())).collect();
        admin_client::apply(&mut admin, guests, BTreeMap::new(), false).await?;
    }
    drop(admin);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.0.id())?);
    let t = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let status = loop {
        if let Some(st) = daemon.0.try_wait()? {
            break st;
        }
        if t.elapsed() > Duration::from_secs(90) {
            return Err("still running 90 s after SIGTERM".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let took = t.elapsed();
    let mut ends = BTreeMap::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(5), ended_rx.recv()).await {
        let key = match e {
            Ended::Status(s) => s,
            Ended::Closed => "closed without status".into(),
        };
        *ends.entry(key).or_default() += 1;
    }
    Ok((took, format!("{status}"), ends))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Res<()> {
    phoenix_pki::tls::install_default_provider();
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(100);
    let runs = args.get(1).copied().unwrap_or(5);
    let work = tempfile::tempdir()?;
    for in_flight in [false, true] {
        let mut times = Vec::new();
        for run in 0..runs {
            let dir = work.path().join(format!("{in_flight}-{run}"));
            let (took, status, ends) = one_stop(n, in_flight, &dir).await?;
            eprintln!(
                "  N={n} {} run {run}: exited in {:.0} ms ({status}); sessions ended: {ends:?}",
                if in_flight { "apply in flight" } else { "idle" },
                ms(took)
            );
            times.push(ms(took));
        }
        times.sort_by(f64::total_cmp);
        println!(
            "SIGTERM -> exit with {n} agents connected{}: min {:.0} ms, median {:.0} ms, max {:.0} ms over {runs} runs",
            if in_flight {
                ", an apply to all of them in flight"
            } else {
                ", idle"
            },
            times[0],
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    Ok(())
}
