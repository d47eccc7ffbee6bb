//! Failover benchmark (issue 15, docs/design/0010): N simulated agents (real mTLS
//! sessions, many per process) against three real `phoenix serve --store etcd` replicas
//! on a real 3-member etcd cluster on loopback.
//!
//! Measures: apply to all acked across the three replicas; the time from `kill -9` of one
//! replica to each of its agents holding a session on another (p50/p99/all), with the
//! agents' own reconnect policy (full-jitter backoff from 500 ms, another replica picked
//! at random); apply to all acked on the two survivors; etcd's database size per 1,000
//! agents; and, in the same run, apply latency (RPC and to all acked) on one redb
//! coordinator with the same agents.
//!
//! Needs PHOENIX_ETCD_BIN and PHOENIX_ETCDCTL_BIN (tests/setup/40-etcd.sh).
//! Run: `cargo build -p phoenix-coordinator -p phoenix-tests --bins && target/debug/bench_failover 1000`

use phoenix_agent::runtime::backoff::Backoff;
use phoenix_coordinator::admin_client;
use phoenix_proto::model::GuestSpec;
use phoenix_proto::token::JoinToken;
use phoenix_proto::v1;
use phoenix_tests::bin;
use phoenix_tests::etcd::EtcdCluster;
use phoenix_tests::sim::{self, Daemon, Res, pct, raise_nofile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Starts `phoenix serve` in `dir` with `extra`; returns it and its admin socket and
/// agent address once both are up.
async fn serve(dir: &Path, extra: &[&str]) -> Res<(Daemon, PathBuf, String)> {
    std::fs::create_dir_all(dir)?;
    let socket = dir.join("admin.sock");
    let child = Command::new(bin("phoenix"))
        .arg("--admin-socket")
        .arg(&socket)
        .args(["serve", "--listen", "127.0.0.1:0", "--ping-interval", "15s"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra)
        .env("PHOENIX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("serve.log"))?)
        .spawn()?;
    let daemon = Daemon(child);
    let addr_file = dir.join("state/coordinator.addr");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let (true, Ok(addr)) = (socket.exists(), std::fs::read_to_string(&addr_file)) {
            return Ok((daemon, socket, addr));
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not start", dir.display()).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the simulated agents tell the benchmark.
#[derive(Clone)]
struct Events {
    /// A session is open: guest, replica address.
    connected: UnboundedSender<(u32, String, Instant)>,
}

/// One simulated agent: enroll through its token's first address, then hold a session,
/// answering every desired state with a report; when the session breaks, wait as the
/// real agent does (full jitter, 500 ms base) and try another replica.
async fn sim_agent(
    guest: u32,
    token: String,
    ev: Events,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Res<()> {
    let addrs = JoinToken::decode(&token)?.addrs();
    // As `phoenix-agent join`: a coordinator briefly too busy is waited for.
    let mut attempt = 0;
    let agent = loop {
        match sim::enroll(guest, &token, &addrs[0]).await {
            Ok(a) => break a,
            Err(e) if attempt < 5 => {
                attempt += 1;
                eprintln!("agent {guest}: enroll attempt {attempt}: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    drop(permit);
    let cfg = agent.client_config()?;
    let mut preferred = 0usize;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let addr = &addrs[preferred % addrs.len()];
        let result = session(&agent, addr, cfg.clone(), &ev, &mut backoff).await;
        if result.is_err() {
            // As the agent's `fail_over`: another replica, at random.
            if addrs.len() > 1 {
                preferred += rand::Rng::random_range(&mut rand::rng(), 1..addrs.len());
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn session(
    agent: &sim::Enrolled,
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
    ev: &Events,
    backoff: &mut Backoff,
) -> Res<()> {
    let mut client = agent.client_with(addr, cfg).await?;
    let mut session = sim::open_session(&mut client, agent.guest).await?;
    backoff.reset();
    let _ = ev
        .connected
        .send((agent.guest, addr.to_string(), Instant::now()));
    session.answer(sim::Results::None, |_| {}).await?;
    Ok(())
}

fn spec_for(guest: u32, round: u32) -> Vec<u8> {
    let json = format!(
        r#"{{"resources":[{{"kind":"file","path":"/srv/phoenix-bench/{guest}/a","content":"round {round}\n"}}]}}"#
    );
    GuestSpec::from_json(json.as_bytes())
        .unwrap_or_default()
        .to_json()
}

/// Tokens for guests 1..=n, minted round-robin by the replicas behind `admins`.
async fn tokens(
    admins: &mut [v1::admin_client::AdminClient<tonic::transport::Channel>],
    n: u32,
) -> Res<Vec<(u32, String)>> {
    let mut out = Vec::new();
    for g in 1..=n {
        let k = (g as usize) % admins.len();
        let tok = admins[k]
            .create_token(v1::CreateTokenRequest {
                guest_id: g,
                ttl_seconds: 3600,
                replace: false,
            })
            .await?
            .into_inner()
            .token;
        out.push((g, tok));
    }
    Ok(out)
}

/// Starts the simulated agents and waits until each holds a session; their addresses.
async fn start_agents(
    tokens: Vec<(u32, String)>,
    ev_rx: &mut tokio::sync::mpsc::UnboundedReceiver<(u32, String, Instant)>,
    ev: &Events,
) -> Res<BTreeMap<u32, String>> {
    let n = tokens.len();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    for (g, tok) in tokens {
        let (ev, sem) = (ev.clone(), sem.clone());
        tokio::spawn(async move {
            let Ok(permit) = sem.acquire_owned().await else {
                return;
            };
            if let Err(e) = sim_agent(g, tok, ev, permit).await {
                eprintln!("agent {g}: {e}");
            }
        });
    }
    let mut at = BTreeMap::new();
    while at.len() < n {
        match tokio::time::timeout(Duration::from_secs(120), ev_rx.recv()).await {
            Ok(Some((g, addr, _))) => {
                at.insert(g, addr);
            }
            _ => return Err(format!("only {}/{n} agents connected", at.len()).into()),
        }
    }
    Ok(at)
}

/// One apply of every guest through `admin`; (RPC time, time until every guest's report
/// of that revision reached `admin`'s replica), in ms.
async fn apply_round(
    admin: &mut v1::admin_client::AdminClient<tonic::transport::Channel>,
    n: u32,
    round: u32,
) -> Res<(f64, f64)> {
    let mut watch = admin
        .watch_reports(v1::WatchReportsRequest { guest_ids: vec![] })
        .await?
        .into_inner();
    let guests = (1..=n).map(|g| (g, spec_for(g, round))).collect();
    let t0 = Instant::now();
    let resp = admin_client::apply(admin, guests, BTreeMap::new(), false).await?;
    let rpc = t0.elapsed().as_secs_f64() * 1000.0;
    let rev = resp.first().map(|g| g.revision).unwrap_or(0);
    let mut got = std::collections::HashSet::new();
    while got.len() < n as usize {
        match tokio::time::timeout(Duration::from_secs(60), watch.message()).await {
            Ok(Ok(Some(ev))) if ev.report.as_ref().is_some_and(|r| r.revision == rev) => {
                got.insert(ev.guest_id);
            }
            Ok(Ok(Some(_))) => {}
            _ => {
                return Err(
                    format!("round {round}: {}/{n} reports of rev {rev}", got.len()).into(),
                );
            }
        }
    }
    Ok((rpc, t0.elapsed().as_secs_f64() * 1000.0))
}

async fn redb_run(n: u32, work: &Path) -> Res<Vec<(f64, f64)>> {
    let (daemon, socket, _) = serve(&work.join("redb"), &[]).await?;
    let mut admin = admin_client::connect(&socket).await?;
    let toks = tokens(std::slice::from_mut(&mut admin), n).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    start_agents(toks, &mut rx, &Events { connected: tx }).await?;
    let mut rounds = Vec::new();
    for round in 1..=3 {
        rounds.push(apply_round(&mut admin, n, round).await?);
    }
    drop(daemon);
    Ok(rounds)
}

async fn run(n: u32, work: &Path) -> Res<()> {
    // redb first, alone on the machine, then etcd.
    let redb = redb_run(n, work).await?;
    let cluster = EtcdCluster::start(&work.join("etcd")).ok_or("etcd is not installed")?;
    let eps = cluster.endpoints().join(",");
    let secret = work.join("ca.secret");
    std::fs::write(&secret, "bench-secret-0123456789abcdef0123456789")?;
    let secret = secret.to_str().ok_or("path")?.to_string();
    let mut daemons = Vec::new();
    let mut admins = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..3 {
        let name = format!("r{i}");
        let (d, socket, addr) = serve(
            &work.join(&name),
            &[
                "--store",
                "etcd",
                "--etcd-endpoints",
                &eps,
                "--etcd-lease-ttl",
                "3s",
                "--replica-name",
                &name,
                "--ca-secret-file",
                &secret,
            ],
        )
        .await?;
        daemons.push(Some(d));
        admins.push(admin_client::connect(&socket).await?);
        addrs.push(addr);
    }
    let toks = tokens(&mut admins, n).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let t = Instant::now();
    let at = start_agents(toks, &mut rx, &Events { connected: tx }).await?;
    let per: Vec<usize> = addrs
        .iter()
        .map(|a| at.values().filter(|x| *x == a).count())
        .collect();
    println!(
        "N={n}: {n} agents enrolled and connected in {:.1}s, sessions per replica {per:?}",
        t.elapsed().as_secs_f64()
    );
    let mut etcd_rounds = Vec::new();
    for round in 1..=3 {
        etcd_rounds.push(apply_round(&mut admins[0], n, round).await?);
    }
    let status = cluster.etcdctl(&["endpoint", "status", "-w", "json"]);
    let db: u64 = serde_json::from_str::<serde_json::Value>(&status)?
        .as_array()
        .and_then(|a| a.first())
        .and_then(|m| m["Status"]["dbSize"].as_u64())
        .unwrap_or(0);
    let keys = cluster.etcdctl(&["get", "/phoenix/", "--prefix", "--keys-only"]);
    println!(
        "N={n}: etcd database {:.1} MiB after enrolling and 3 applies ({:.2} MiB per 1,000 agents), {} keys",
        db as f64 / 1048576.0,
        db as f64 / 1048576.0 * 1000.0 / n as f64,
        keys.lines().filter(|l| !l.is_empty()).count()
    );

    // Kill the replica with the most sessions; time each of its agents back.
    let victim = (0..3).max_by_key(|i| per[*i]).unwrap_or(1);
    let moved: Vec<u32> = at
        .iter()
        .filter(|(_, a)| **a == addrs[victim])
        .map(|(g, _)| *g)
        .collect();
    while rx.try_recv().is_ok() {}
    let killed = Instant::now();
    daemons[victim] = None;
    let mut back: BTreeMap<u32, f64> = BTreeMap::new();
    while back.len() < moved.len() {
        match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
            Ok(Some((g, _, when))) => {
                back.entry(g)
                    .or_insert(when.duration_since(killed).as_secs_f64() * 1000.0);
            }
            _ => break,
        }
    }
    let mut lat: Vec<f64> = back.values().copied().collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "N={n}: kill -9 of r{victim} ({} sessions): {}/{} reconnected to the others, p50 {:.0} ms, p99 {:.0} ms, all {:.0} ms",
        moved.len(),
        back.len(),
        moved.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    let survivor = (victim + 1) % 3;
    let after = apply_round(&mut admins[survivor], n, 10).await?;

    let show = |rs: &[(f64, f64)]| {
        rs.iter()
            .map(|(rpc, all)| format!("{rpc:.0}/{all:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "N={n}: apply, ms RPC/all acked per round: redb (1 coordinator) {}; etcd (3 replicas) {}; etcd after failover (2 replicas) {:.0}/{:.0}",
        show(&redb),
        show(&etcd_rounds),
        after.0,
        after.1
    );
    drop(daemons);
    Ok(())
}

fn main() -> Res<()> {
    raise_nofile();
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let work = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(n, work.path()))
}
