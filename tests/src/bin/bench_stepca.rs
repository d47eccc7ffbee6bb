//! Step-CA rotation benchmark: N agent rotations through `StepCa` against a real step-ca.
//!
//! One rotation is what the coordinator does as registration authority for one agent: the
//! agent's new key and CSR (made here, as the agent would), then `CertAuthority::issue`
//! (mint a one-time token with the granted SANs, `POST /1.0/sign`, check the answer against
//! the roots). A second pass renews the same N certificates over mTLS, the path that keeps
//! the key. The CA is a fresh one made by tests/stepca (built or cached like the tests do),
//! on loopback, stopped at the end.
//!
//! Run: `cargo run --release -p phoenix-tests --bin bench_stepca -- [N=1000] [CONCURRENCY=8]`

use phoenix_ca::stepca::{ProvisionerKeySource, StepCa, StepCaConfig};
use phoenix_ca::{CertAuthority, IssueRequest};
use phoenix_pki::{San, keys};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Ca {
    ctl: PathBuf,
    dir: PathBuf,
    env: HashMap<String, String>,
    _tmp: tempfile::TempDir,
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.ctl)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

fn run(cmd: &mut Command) -> Res<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn start_ca() -> Res<Ca> {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("stepca");
    let built = run(Command::new("bash").arg(scripts.join("build.sh")))?;
    let field = |name: &str| {
        built
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::to_string)
            .ok_or_else(|| format!("build.sh printed no {name}"))
    };
    let (bin, keytool) = (field("STEP_CA_BIN=")?, field("STEPCA_KEYTOOL=")?);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ca");
    run(Command::new("bash")
        .arg(scripts.join("init-ca.sh"))
        .arg(&dir)
        .arg(bin)
        .arg(keytool))?;
    let env = std::fs::read_to_string(dir.join("stepca.env"))?
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let ca = Ca {
        ctl: scripts.join("ctl.sh"),
        dir,
        env,
        _tmp: tmp,
    };
    run(Command::new("bash").arg(&ca.ctl).arg("start").arg(&ca.dir))?;
    Ok(ca)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn report(what: &str, n: usize, total: Duration, mut lat: Vec<Duration>, failed: usize) {
    lat.sort();
    println!(
        "{what}: {n} in {:.2} s ({:.0}/s), latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms, failed {failed}",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

/// Runs `n` jobs, `concurrency` at a time; returns wall time, per-job latencies, results.
async fn drive<T, F, Fut>(
    n: usize,
    concurrency: usize,
    job: F,
) -> (Duration, Vec<Duration>, Vec<Res<T>>)
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Res<T>> + Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await;
        let fut = job(i);
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let start = Instant::now();
            let r = fut.await;
            (start.elapsed(), r)
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        match t.await {
            Ok((d, r)) => {
                lat.push(d);
                results.push(r);
            }
            Err(e) => results.push(Err(e.to_string().into())),
        }
    }
    (t0.elapsed(), lat, results)
}

#[tokio::main]
async fn main() -> Res<()> {
    phoenix_pki::tls::install_default_provider();
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let concurrency: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(8);

    let ca_proc = start_ca()?;
    let get = |k: &str| ca_proc.env.get(k).cloned().unwrap_or_default();
    let ca = Arc::new(
        StepCa::connect(&StepCaConfig {
            url: get("PHOENIX_STEPCA_URL"),
            fingerprint: get("PHOENIX_STEPCA_FINGERPRINT"),
            provisioner: get("PHOENIX_STEPCA_PROVISIONER"),
            key: ProvisionerKeySource::Jwk(PathBuf::from(get("PHOENIX_STEPCA_JWK"))),
        })
        .await?,
    );
    println!(
        "step-ca at {} ; {n} rotations, {concurrency} concurrent",
        ca.url()
    );

    // Pass 1: issue through the RA path (new key + CSR + OTT + sign), as on enrollment or
    // rekeying rotation.
    let (total, lat, results) = drive(n, concurrency, |i| {
        let ca = ca.clone();
        async move {
            let cn = format!("guest-{i}.agents.phoenix.test");
            let sans = vec![
                San::Dns(cn.clone()),
                San::Uri(format!("spiffe://phoenix.test/guest/{i}")),
            ];
            let key = keys::generate()?;
            let csr = keys::csr(&key, &cn, &sans)?;
            let issued = ca
                .issue(IssueRequest {
                    csr_pem: csr,
                    common_name: cn,
                    sans,
                    ttl: Duration::from_secs(120),
                })
                .await?;
            Ok((issued.chain_pem, key.serialize_pem()))
        }
    })
    .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("first failure: {e}");
    }
    report("issue (keygen+CSR+OTT+sign)", n, total, lat, failed);
    let identities: Vec<(String, String)> = results.into_iter().filter_map(Result::ok).collect();

    // Pass 2: renew each of those over mTLS (same key, new serial).
    let identities = Arc::new(identities);
    let m = identities.len();
    let (total, lat, results) = drive(m, concurrency, |i| {
        let ca = ca.clone();
        let ids = identities.clone();
        async move {
            let (chain, key) = &ids[i];
            ca.renew(chain, key).await?;
            Ok(())
        }
    })
    .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("first failure: {e}");
    }
    report("renew over mTLS", m, total, lat, failed);

    let pid = std::fs::read_to_string(ca_proc.dir.join("step-ca.pid")).unwrap_or_default();
    let rss = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    println!("step-ca RSS after the run: {rss}");
    Ok(())
}
