//! Spine benchmark: N simulated agents (real mTLS sessions, many per process) against one
//! real `phoenix serve`; sessions held, coordinator RSS, apply-to-acked latency per guest,
//! and the reports a slow watcher saw per apply; then the idle RSS of one real
//! `phoenix-agent`.
//!
//! Run: `cargo build --release --workspace --bins && target/release/bench_spine 1000 10000`

use phoenix_coordinator::admin_client;
use phoenix_pki::keys;
use phoenix_pki::tls::Identity;
use phoenix_proto::model::GuestSpec;
use phoenix_proto::token::JoinToken;
use phoenix_proto::v1;
use phoenix_tests::bin;
use phoenix_tests::sim::{self, Daemon, Res, pct, raise_nofile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Private (anonymous) memory of `pid` in kB: the heap and stacks, without the binary's
/// and libraries' file-backed pages.
fn anon_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Anonymous:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The process running `phoenix` with `socket` on its command line (under a wrapper).
fn coordinator_pid(socket: &Path) -> Option<u32> {
    let want = socket.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (exe == bin("phoenix") && String::from_utf8_lossy(&cmdline).contains(&want)).then_some(pid)
    })
}

/// One simulated agent: enroll, hold a session, answer every desired state with a report.
async fn sim_agent(
    guest: u32,
    token: String,
    acks: tokio::sync::mpsc::UnboundedSender<(u32, u64, Instant)>,
    ready: tokio::sync::mpsc::UnboundedSender<u32>,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut rotate: tokio::sync::watch::Receiver<u32>,
    rotated: tokio::sync::mpsc::UnboundedSender<Result<Duration, String>>,
) -> Res<()> {
    let addr = JoinToken::decode(&token)?.addr;
    let agent = sim::enroll(guest, &token, &addr).await?;
    let mut client = agent.client(&addr).await?;
    let mut renewer = client.clone();
    let (id, trust) = (agent.identity.clone(), agent.trust.clone());
    // Renewal as the real agent does it: over the open channel, new key, swapped in memory.
    tokio::spawn(async move {
        while rotate.changed().await.is_ok() {
            let t = Instant::now();
            let result = async {
                let key = keys::generate().map_err(|e| e.to_string())?;
                let csr =
                    keys::csr(&key, &format!("guest-{guest}"), &[]).map_err(|e| e.to_string())?;
                let resp = renewer
                    .renew(v1::RenewRequest { csr_pem: csr })
                    .await
                    .map_err(|s| s.to_string())?
                    .into_inner();
                trust
                    .verify_chain(&resp.chain_pem)
                    .map_err(|e| e.to_string())?;
                id.swap(
                    Identity::from_pem(&resp.chain_pem, &key.serialize_pem())
                        .map_err(|e| e.to_string())?,
                );
                Ok(t.elapsed())
            }
            .await;
            let _ = rotated.send(result);
        }
    });
    let mut session = sim::open_session(&mut client, guest).await?;
    let _ = ready.send(guest);
    // Enrollment and handshakes are what the permit limits; the session stays open.
    drop(permit);
    session
        .answer(sim::Results::Unchanged, |rev| {
            let _ = acks.send((guest, rev, Instant::now()));
        })
        .await?;
    Ok(())
}

/// What a watcher that reads slowly has seen: reports per revision.
#[derive(Clone, Default)]
struct Seen(Arc<std::sync::Mutex<BTreeMap<u64, usize>>>);

impl Seen {
    fn seen(&self, rev: u64) -> usize {
        self.per_revision().get(&rev).copied().unwrap_or(0)
    }

    fn per_revision(&self) -> BTreeMap<u64, usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn slow_watcher(
    mut admin: v1::admin_client::AdminClient<tonic::transport::Channel>,
) -> Res<Seen> {
    let mut stream = admin
        .watch_reports(v1::WatchReportsRequest { guest_ids: vec![] })
        .await?
        .into_inner();
    let seen = Seen::default();
    let counts = seen.clone();
    tokio::spawn(async move {
        let mut k = 0u64;
        while let Ok(Some(ev)) = stream.message().await {
            if let Some(r) = ev.report {
                *counts
                    .0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(r.revision)
                    .or_default() += 1;
            }
            k += 1;
            if k.is_multiple_of(100) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    Ok(seen)
}

fn spec_for(guest: u32, round: u32) -> GuestSpec {
    let json = format!(
        r#"{{"resources":[{{"kind":"file","path":"/srv/phoenix-bench/{guest}/a","content":"round {round}\n"}},
            {{"kind":"file","path":"/srv/phoenix-bench/{guest}/b","content":"x"}}]}}"#
    );
    GuestSpec::from_json(json.as_bytes()).unwrap_or_default()
}

async fn run_n(n: u32, rounds: u32, work: &Path, ca_args: &[String]) -> Res<()> {
    let dir = work.join(format!("n{n}"));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("admin.sock");
    // BENCH_COORDINATOR_WRAP="heaptrack -o FILE" (any command, split on spaces) runs the
    // coordinator under a profiler; its RSS is then the wrapper's child's.
    let wrap: Vec<String> = std::env::var("BENCH_COORDINATOR_WRAP")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut cmd = match wrap.split_first() {
        Some((prog, args)) => {
            let mut c = Command::new(prog);
            c.args(args).arg(bin("phoenix"));
            c
        }
        None => Command::new(bin("phoenix")),
    };
    let child = cmd
        .arg("--admin-socket")
        .arg(&socket)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ping-interval",
            "15s",
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .args(ca_args)
        .env("PHOENIX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = if wrap.is_empty() {
        daemon.0.id()
    } else {
        coordinator_pid(&socket).unwrap_or(daemon.0.id())
    };
    let idle_rss = rss_kb(pid);
    let mut admin = admin_client::connect(&socket).await?;
    let t = Instant::now();
    let mut tokens = Vec::new();
    for g in 1..=n {
        let tok = admin
            .create_token(v1::CreateTokenRequest {
                guest_id: g,
                ttl_seconds: 600,
                replace: false,
            })
            .await?
            .into_inner()
            .token;
        tokens.push((g, tok));
    }
    let token_time = t.elapsed();
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
    let (rotate_tx, rotate_rx) = tokio::sync::watch::channel(0u32);
    let (rotated_tx, mut rotated_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    for (g, tok) in tokens {
        let (a, r, sem) = (ack_tx.clone(), ready_tx.clone(), sem.clone());
        let (rot, rotd) = (rotate_rx.clone(), rotated_tx.clone());
        tokio::spawn(async move {
            let Ok(permit) = sem.acquire_owned().await else {
                return;
            };
            // Errors after the run (the coordinator is killed at the end) are expected;
            // failures before it show up as missing sessions or acks in the figures.
            let _ = sim_agent(g, tok, a, r, permit, rot, rotd).await;
        });
    }
    let mut connected = 0;
    while connected < n {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(_)) => connected += 1,
            _ => break,
        }
    }
    let connect_time = t.elapsed();
    let held = admin_client::status(&mut admin)
        .await?
        .iter()
        .filter(|g| g.connected)
        .count();
    let (rss_sessions, anon_sessions) = (rss_kb(pid), anon_kb(pid));
    let mut all_lat = Vec::new();
    let mut all_acked = Vec::new();
    // "Acked" means the coordinator has the agent's report: watch what it receives.
    let mut watch = admin
        .watch_reports(v1::WatchReportsRequest { guest_ids: vec![] })
        .await?
        .into_inner();
    // A second watcher that reads slowly (about 2,000 reports/s): it falls behind the
    // coordinator's report broadcast and must still see every guest's report.
    let slow = slow_watcher(admin.clone()).await?;
    for round in 1..=rounds {
        let guests = (1..=n).map(|g| (g, spec_for(g, round).to_json())).collect();
        let t0 = Instant::now();
        let resp = admin_client::apply(&mut admin, guests, BTreeMap::new(), false).await?;
        let rev = resp.first().map(|g| g.revision).unwrap_or(0);
        let mut got = 0;
        let mut last = t0;
        while got < held {
            match tokio::time::timeout(Duration::from_secs(30), watch.message()).await {
                Ok(Ok(Some(ev))) if ev.report.as_ref().is_some_and(|r| r.revision == rev) => {
                    got += 1;
                    last = Instant::now();
                    all_lat.push(last.duration_since(t0).as_secs_f64() * 1000.0);
                }
                Ok(Ok(Some(_))) => {}
                _ => break,
            }
        }
        // Drain what the simulated agents counted, so the next round starts clean.
        while ack_rx.try_recv().is_ok() {}
        all_acked.push(last.duration_since(t0).as_secs_f64() * 1000.0);
        eprintln!(
            "  N={n} round {round}: {got}/{held} reports at the coordinator, all within {:.0} ms",
            last.duration_since(t0).as_secs_f64() * 1000.0
        );
    }
    // Every agent renews its identity at once, through the coordinator and its CA, while
    // an apply is in flight on the same open streams.
    let t0 = Instant::now();
    rotate_tx.send_replace(1);
    let guests = (1..=n)
        .map(|g| (g, spec_for(g, rounds + 1).to_json()))
        .collect();
    let resp = admin_client::apply(&mut admin, guests, BTreeMap::new(), false).await?;
    let rev = resp.first().map(|g| g.revision).unwrap_or(0);
    let (mut ok, mut failed, mut renew_lat) = (0u32, Vec::new(), Vec::new());
    let mut acked = 0;
    while (ok + failed.len() as u32) < held as u32 || acked < held {
        tokio::select! {
            r = rotated_rx.recv() => match r {
                Some(Ok(d)) => { ok += 1; renew_lat.push(d.as_secs_f64() * 1000.0); }
                Some(Err(e)) => failed.push(e),
                None => break,
            },
            m = watch.message() => match m {
                Ok(Some(ev)) if ev.report.as_ref().is_some_and(|r| r.revision == rev) => acked += 1,
                Ok(Some(_)) => {}
                _ => break,
            },
            _ = tokio::time::sleep(Duration::from_secs(60)) => break,
        }
    }
    let rotate_time = t0.elapsed();
    renew_lat.sort_by(|a, b| a.total_cmp(b));
    let still = admin_client::status(&mut admin)
        .await?
        .iter()
        .filter(|g| g.connected)
        .count();
    println!(
        "N={n} rotation ({}): {ok} renewed, {} failed RPCs{} in {:.1}s (renew p50 {:.0} ms p99 {:.0} ms); apply during rotation: {acked}/{held} reports; sessions still held {still}/{held}",
        if ca_args.is_empty() {
            "embedded CA"
        } else {
            "step-ca"
        },
        failed.len(),
        failed
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        rotate_time.as_secs_f64(),
        pct(&renew_lat, 0.5),
        pct(&renew_lat, 0.99)
    );
    // The slow watcher has until 60 s after the last apply to catch up.
    let last_rev = rev;
    let caught_up = Instant::now() + Duration::from_secs(60);
    while slow.seen(last_rev) < held && Instant::now() < caught_up {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let per_rev = slow.per_revision();
    println!(
        "N={n}: slow watcher saw, per apply, {} of {held} reports ({:.1}s after the last apply was sent)",
        per_rev
            .iter()
            .map(|(rev, k)| format!("rev {rev}: {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        t0.elapsed().as_secs_f64()
    );
    all_lat.sort_by(|a, b| a.total_cmp(b));
    all_acked.sort_by(|a, b| a.total_cmp(b));
    // Let the coordinator take the reports in, then read RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kb(pid);
    println!(
        "N={n}: sessions held {held}/{n}; enroll+connect {:.1}s (tokens {:.1}s); coordinator RSS idle {} MB, with sessions {} MB (anonymous {} MB), after {rounds} applies {} MB; \
         apply→report at coordinator, per guest p50 {:.0} ms p99 {:.0} ms; all-acked p50 {:.0} ms max {:.0} ms over {rounds} rounds",
        connect_time.as_secs_f64(),
        token_time.as_secs_f64(),
        idle_rss / 1024,
        rss_sessions / 1024,
        anon_sessions / 1024,
        rss_after / 1024,
        pct(&all_lat, 0.5),
        pct(&all_lat, 0.99),
        pct(&all_acked, 0.5),
        pct(&all_acked, 1.0)
    );
    Ok(())
}

/// One real agent, enrolled and connected, idle for `secs`.
async fn agent_rss(work: &Path, secs: u64) -> Res<()> {
    let dir = work.join("agent-rss");
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("admin.sock");
    let daemon = Daemon(
        Command::new(bin("phoenix"))
            .arg("--admin-socket")
            .arg(&socket)
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir.join("state"))
            .env("PHOENIX_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    while !socket.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut admin = admin_client::connect(&socket).await?;
    let token = admin
        .create_token(v1::CreateTokenRequest {
            guest_id: 7,
            ttl_seconds: 600,
            replace: false,
        })
        .await?
        .into_inner()
        .token;
    let st = dir.join("agent");
    let ok = Command::new(bin("phoenix-agent"))
        .arg("--state-dir")
        .arg(&st)
        .arg("join")
        .arg(&token)
        .status()?;
    if !ok.success() {
        return Err("join failed".into());
    }
    std::fs::create_dir_all(dir.join("root"))?;
    let agent = Daemon(
        Command::new(bin("phoenix-agent"))
            .arg("--state-dir")
            .arg(&st)
            .arg("run")
            .arg("--file-root")
            .arg(dir.join("root"))
            .env("PHOENIX_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let spec = format!(
        r#"{{"resources":[{{"kind":"file","path":"{}","content":"idle\n"}}]}}"#,
        dir.join("root/f").display()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    admin_client::apply(
        &mut admin,
        [(7, spec.into_bytes())].into_iter().collect(),
        BTreeMap::new(),
        false,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let early = rss_kb(agent.0.id());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let late = rss_kb(agent.0.id());
    let anon = std::fs::read_to_string(format!("/proc/{}/status", agent.0.id()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        .unwrap_or_default();
    let size = std::fs::metadata(bin("phoenix-agent"))?.len();
    println!(
        "real agent idle RSS: {early} kB after 5 s, {late} kB after {} s (RssAnon {anon} kB); phoenix-agent binary {size} bytes",
        secs + 5
    );
    drop(daemon);
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    phoenix_pki::tls::install_default_provider();
    raise_nofile();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sizes: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1000]
    } else {
        sizes
    };
    // `--step-ca DIR`: a running CA made by tests/stepca/init-ca.sh (reads DIR/stepca.env).
    let ca_args: Vec<String> = match args.iter().position(|a| a == "--step-ca") {
        Some(i) => {
            let dir = PathBuf::from(args.get(i + 1).ok_or("--step-ca needs a directory")?);
            let env: std::collections::HashMap<String, String> =
                std::fs::read_to_string(dir.join("stepca.env"))?
                    .lines()
                    .filter_map(|l| {
                        l.split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    })
                    .collect();
            let get = |k: &str| env.get(k).cloned().unwrap_or_default();
            vec![
                "--ca".into(),
                "step-ca".into(),
                "--step-ca-url".into(),
                get("PHOENIX_STEPCA_URL"),
                "--step-ca-fingerprint".into(),
                get("PHOENIX_STEPCA_FINGERPRINT"),
                "--step-ca-provisioner".into(),
                get("PHOENIX_STEPCA_PROVISIONER"),
                "--step-ca-jwk".into(),
                get("PHOENIX_STEPCA_JWK"),
            ]
        }
        None => vec![],
    };
    let work = tempfile::tempdir()?;
    for n in sizes {
        run_n(n, 5, work.path(), &ca_args).await?;
    }
    agent_rss(work.path(), 30).await?;
    Ok(())
}
