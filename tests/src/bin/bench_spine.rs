//! Spine benchmark: N simulated agents (real mTLS sessions, many per process) against one
//! real `phoenix serve`, then the idle RSS of one real `phoenix-agent`. Per N it prints
//! what issue 14 asks for: sessions held; per watcher (one reading at once, one reading
//! about 2,000 reports a second) the recorded (guest, revision) reports it saw, missed or
//! got twice; apply→report p50/p99 per guest and the all-acked time per round; the
//! coordinator's RSS idle, with sessions and after the applies and the rotation; the
//! rotation of every identity at once (time, failed RPCs) with an apply in flight; the
//! events the coordinator dropped and how often a watcher fell behind (its metrics); the
//! load average, since ratios within one run are what a shared machine can show.
//!
//! Run: `cargo build --release -p phoenix-coordinator --bin phoenix && cargo build-agent &&
//! cargo build --release -p phoenix-tests --bin bench_spine && target/release/bench_spine
//! 1000 10000`. The real agent is the shipped build (`cargo build-agent`; `BENCH_AGENT=PATH`
//! runs another). `BENCH_PHOENIX=PATH` runs another coordinator
//! binary (before/after), `BENCH_COORDINATOR_WRAP="heaptrack -o FILE"` a profiler.

use phoenix_coordinator::admin_client;
use phoenix_pki::keys;
use phoenix_pki::tls::Identity;
use phoenix_proto::model::GuestSpec;
use phoenix_proto::token::JoinToken;
use phoenix_proto::v1;
use phoenix_tests::bin;
use phoenix_tests::sim::{self, Daemon, Res, pct, raise_nofile};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
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

/// Sockets `pid` holds open: agent connections, plus a few listeners and the admin socket.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| {
        d.flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            })
            .count()
    })
}

/// The coordinator binary: `BENCH_PHOENIX` (e.g. an older build, to compare two in one
/// session), else the `phoenix` beside this benchmark.
fn coordinator_bin() -> PathBuf {
    std::env::var_os("BENCH_PHOENIX").map_or_else(|| bin("phoenix"), PathBuf::from)
}

/// The process running `phoenix` with `socket` on its command line (under a wrapper).
fn coordinator_pid(socket: &Path) -> Option<u32> {
    let want = socket.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (exe == coordinator_bin() && String::from_utf8_lossy(&cmdline).contains(&want))
            .then_some(pid)
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

/// What one report watcher has seen. Seen (issue 14): the watcher received a report of
/// guest g for revision r; each (g, r) counts once, at the time it first arrived.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<SeenLog>>);

#[derive(Default)]
struct SeenLog {
    /// Per revision, per guest: when its report first arrived.
    first: BTreeMap<u64, HashMap<u32, Instant>>,
    /// Reports received again for a (guest, revision) already seen.
    again: u64,
}

impl Seen {
    fn lock(&self) -> std::sync::MutexGuard<'_, SeenLog> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn guests(&self, rev: u64) -> usize {
        self.lock().first.get(&rev).map_or(0, HashMap::len)
    }

    /// When each guest's report of `rev` arrived.
    fn times(&self, rev: u64) -> Vec<Instant> {
        self.lock()
            .first
            .get(&rev)
            .map(|m| m.values().copied().collect())
            .unwrap_or_default()
    }

    /// The recorded reports this watcher has not seen.
    fn missing(&self, recorded: &Recorded) -> usize {
        let log = self.lock();
        recorded
            .iter()
            .map(|(r, guests)| {
                let seen = log.first.get(r);
                guests
                    .iter()
                    .filter(|g| !seen.is_some_and(|s| s.contains_key(g)))
                    .count()
            })
            .sum()
    }

    /// "rev R: seen/recorded" per revision, the recorded (guest, revision) reports not
    /// seen, and the reports received twice.
    fn summary(&self, recorded: &Recorded) -> (String, usize, u64) {
        let per = {
            let log = self.lock();
            recorded
                .iter()
                .map(|(r, guests)| {
                    let k = log.first.get(r).map_or(0, HashMap::len);
                    format!("rev {r}: {k}/{}", guests.len())
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        (per, self.missing(recorded), self.lock().again)
    }
}

/// Per revision, the guests whose report of it the coordinator's event log records
/// (`Applied`, `ApplyFailed`): what every watcher must have seen.
type Recorded = BTreeMap<u64, std::collections::HashSet<u32>>;

async fn recorded_reports(
    admin: &mut v1::admin_client::AdminClient<tonic::transport::Channel>,
    revs: &[u64],
) -> Res<Recorded> {
    let mut stream = admin
        .events(v1::EventsRequest {
            topics: vec!["Report".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out: Recorded = revs.iter().map(|r| (*r, Default::default())).collect();
    while let Some(ev) = stream.message().await? {
        if ev.r#type != "Applied" && ev.r#type != "ApplyFailed" {
            continue;
        }
        let payload: serde_json::Value = serde_json::from_str(&ev.payload_json)?;
        let rev = payload["revision"].as_u64().unwrap_or(0);
        if let (Some(guests), Ok(g)) = (out.get_mut(&rev), ev.key.parse::<u32>()) {
            guests.insert(g);
        }
    }
    Ok(out)
}

/// Opens a report watch and records what it receives. `slow`: reads about 2,000 reports
/// a second, so it falls behind the coordinator's live broadcast at 10,000 guests and
/// must catch up from the store.
async fn watcher(
    mut admin: v1::admin_client::AdminClient<tonic::transport::Channel>,
    slow: bool,
) -> Res<Seen> {
    let mut stream = admin
        .watch_reports(v1::WatchReportsRequest { guest_ids: vec![] })
        .await?
        .into_inner();
    let seen = Seen::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let mut k = 0u64;
        while let Ok(Some(ev)) = stream.message().await {
            if let Some(r) = ev.report {
                let mut log = log.lock();
                let first = log.first.entry(r.revision).or_default();
                if first.insert(ev.guest_id, Instant::now()).is_some() {
                    log.again += 1;
                }
            }
            k += 1;
            if slow && k.is_multiple_of(100) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    Ok(seen)
}

/// Waits until `seen` has every one of `held` guests' reports of `rev`, or `deadline`.
async fn all_seen(seen: &Seen, rev: u64, held: usize, deadline: Instant) {
    while seen.guests(rev) < held && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The coordinator's counters from its `/metrics` listener: (name with labels, value)
/// for every series whose name starts with one of `prefixes`.
async fn scrape(addr: std::net::SocketAddr, prefixes: &[&str]) -> Res<Vec<(String, f64)>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    tcp.read_to_string(&mut body).await?;
    Ok(body
        .lines()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            Some((name.to_string(), v.parse().ok()?))
        })
        .collect())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
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
            c.args(args).arg(coordinator_bin());
            c
        }
        None => Command::new(coordinator_bin()),
    };
    let load_before = loadavg();
    // A free port for the coordinator's metrics (events dropped, watcher lag).
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let child = cmd
        .arg("--admin-socket")
        .arg(&socket)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ping-interval",
            "15s",
            "--metrics-listen",
            &metrics.to_string(),
            // Every event of the run is kept (about 15 per agent), so the reports seen
            // are checked against all that were recorded, not what retention left.
            "--events-max-count",
            "10000000",
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .args(ca_args)
        // PHOENIX_LOG=info shows, among others, how long each apply took to store and push.
        .env(
            "PHOENIX_LOG",
            std::env::var("PHOENIX_LOG").unwrap_or_else(|_| "warn".into()),
        )
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
    let sockets_sessions = sockets(pid);
    let mut all_lat = Vec::new();
    let mut all_acked = Vec::new();
    let mut revs = Vec::new();
    // "Acked" means the coordinator has the agent's report: a watcher that reads at once
    // sees it. A second one reads slowly and must still see every report.
    let fast = watcher(admin.clone(), false).await?;
    let slow = watcher(admin.clone(), true).await?;
    for round in 1..=rounds {
        let guests = (1..=n).map(|g| (g, spec_for(g, round).to_json())).collect();
        let t0 = Instant::now();
        let resp = admin_client::apply(&mut admin, guests, BTreeMap::new(), false).await?;
        let answered = t0.elapsed().as_secs_f64() * 1000.0;
        let rev = resp.first().map(|g| g.revision).unwrap_or(0);
        revs.push(rev);
        all_seen(&fast, rev, held, t0 + Duration::from_secs(60)).await;
        let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1000.0;
        let mut lat: Vec<f64> = fast.times(rev).iter().map(|t| ms(*t)).collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        // When each simulated agent sent its report: splits the latency into the push
        // (apply → agent) and the report's way back (agent → watcher).
        let mut sent = Vec::new();
        while let Ok((_, r, t)) = ack_rx.try_recv() {
            if r == rev {
                sent.push(ms(t));
            }
        }
        sent.sort_by(|a, b| a.total_cmp(b));
        let max = lat.last().copied().unwrap_or(0.0);
        eprintln!(
            "  N={n} round {round}: {}/{held} reports at the coordinator, all within {max:.0} ms (p50 {:.0}); apply answered at {answered:.0} ms; agents sent reports p50 {:.0} p99 {:.0} max {:.0} ms",
            lat.len(),
            pct(&lat, 0.5),
            pct(&sent, 0.5),
            pct(&sent, 0.99),
            sent.last().copied().unwrap_or(0.0),
        );
        all_lat.extend(lat);
        all_acked.push(max);
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
    revs.push(rev);
    let (mut ok, mut failed, mut renew_lat) = (0u32, Vec::new(), Vec::new());
    let deadline = t0 + Duration::from_secs(120);
    while (ok + failed.len() as u32) < held as u32 {
        match tokio::time::timeout_at(deadline.into(), rotated_rx.recv()).await {
            Ok(Some(Ok(d))) => {
                ok += 1;
                renew_lat.push(d.as_secs_f64() * 1000.0);
            }
            Ok(Some(Err(e))) => failed.push(e),
            _ => break,
        }
    }
    all_seen(&fast, rev, held, deadline).await;
    let acked = fast.guests(rev);
    let rotate_time = t0.elapsed();
    renew_lat.sort_by(|a, b| a.total_cmp(b));
    let still = admin_client::status(&mut admin)
        .await?
        .iter()
        .filter(|g| g.connected)
        .count();
    println!(
        "N={n} rotation ({}): {ok} renewed, {} failed RPCs{}, {} renewals unanswered, in {:.1}s (renew p50 {:.0} ms p99 {:.0} ms); apply during rotation: {acked}/{held} reports; sessions still held {still}/{held}",
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
        (held as u32).saturating_sub(ok + failed.len() as u32),
        rotate_time.as_secs_f64(),
        pct(&renew_lat, 0.5),
        pct(&renew_lat, 0.99)
    );
    // "Seen" is checked against what the coordinator recorded: a guest whose session
    // broke sent no report, and no watcher can see it.
    let recorded = recorded_reports(&mut admin, &revs).await?;
    // The slow watcher has until 120 s after the last apply to catch up.
    let caught_up = Instant::now() + Duration::from_secs(120);
    while slow.missing(&recorded) > 0 && Instant::now() < caught_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slow_done = t0.elapsed();
    for (name, w) in [("fast", &fast), ("slow", &slow)] {
        let (per, missing, again) = w.summary(&recorded);
        println!(
            "N={n}: {name} watcher saw (of the reports recorded) {per}; {missing} recorded (guest, revision) reports not seen, {again} received twice"
        );
    }
    println!(
        "N={n}: the slow watcher {} {:.1}s after the last apply was sent",
        if slow.missing(&recorded) == 0 {
            "had every recorded report"
        } else {
            "gave up waiting"
        },
        slow_done.as_secs_f64()
    );
    all_lat.sort_by(|a, b| a.total_cmp(b));
    all_acked.sort_by(|a, b| a.total_cmp(b));
    // Let the coordinator take the reports in, then read RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kb(pid);
    let counters = scrape(
        metrics,
        &[
            "phoenix_events_dropped_total",
            "phoenix_report_watch_lagged_total",
        ],
    )
    .await
    .unwrap_or_else(|e| vec![(format!("metrics unreadable: {e}"), f64::NAN)]);
    let dropped: f64 = counters
        .iter()
        .filter(|(k, _)| k.starts_with("phoenix_events_dropped_total"))
        .fold(0.0, |sum, (_, v)| sum + v);
    println!(
        "N={n}: events dropped {dropped} ({})",
        counters
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "N={n}: sessions held {held}/{n}; enroll+connect {:.1}s (tokens {:.1}s); coordinator RSS idle {} MB, with sessions {} MB (anonymous {} MB, {sockets_sessions} sockets open), after {rounds} applies and the rotation {} MB; \
         apply→report at coordinator, per guest p50 {:.0} ms p99 {:.0} ms; all-acked p50 {:.0} ms max {:.0} ms over {rounds} rounds; load average before {load_before}, after {}",
        connect_time.as_secs_f64(),
        token_time.as_secs_f64(),
        idle_rss / 1024,
        rss_sessions / 1024,
        anon_sessions / 1024,
        rss_after / 1024,
        pct(&all_lat, 0.5),
        pct(&all_lat, 0.99),
        pct(&all_acked, 0.5),
        pct(&all_acked, 1.0),
        loadavg()
    );
    Ok(())
}

/// One real agent (the shipped `cargo build-agent` build), enrolled and connected, idle for
/// `secs`.
async fn agent_rss(work: &Path, secs: u64) -> Res<()> {
    let agent_bin = phoenix_tests::shipped_agent();
    let dir = work.join("agent-rss");
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("admin.sock");
    let daemon = Daemon(
        Command::new(bin("phoenix"))
            .arg("--admin-socket")
            .arg(&socket)
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir.join("state"))
            // PHOENIX_LOG=info shows, among others, how long each apply took to store and push.
            .env(
                "PHOENIX_LOG",
                std::env::var("PHOENIX_LOG").unwrap_or_else(|_| "warn".into()),
            )
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
    let ok = Command::new(&agent_bin)
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
        Command::new(&agent_bin)
            .arg("--state-dir")
            .arg(&st)
            .arg("run")
            .arg("--file-root")
            .arg(dir.join("root"))
            // PHOENIX_LOG=info shows, among others, how long each apply took to store and push.
            .env(
                "PHOENIX_LOG",
                std::env::var("PHOENIX_LOG").unwrap_or_else(|_| "warn".into()),
            )
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
    let size = std::fs::metadata(&agent_bin)?.len();
    println!(
        "real agent idle RSS: {early} kB after 5 s, {late} kB after {} s (RssAnon {anon} kB); phoenix-agent binary {size} bytes ({})",
        secs + 5,
        agent_bin.display()
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
