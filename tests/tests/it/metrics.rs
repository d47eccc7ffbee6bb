//! `phoenix serve --metrics-listen`: a real Prometheus (Debian's package) scrapes the
//! coordinator with two real agents, and PromQL over its HTTP API sees the fleet.

use phoenix_tests::require;
use phoenix_tests::spine::{Agent, Coordinator, enrolled, files_spec, write_spec};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Prometheus starts, scrapes every second and answers queries within this.
const SCRAPED: Duration = Duration::from_secs(60);

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// A `prometheus` server with its own config and storage, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    fn start(bin: &Path, dir: &Path, target: &str) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: phoenix\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("create prometheus log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::from(out.try_clone().expect("clone log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, log }
    }

    /// The `result` vector of an instant query, or None while Prometheus is not up yet.
    fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let body = http_get(self.port, &path)?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned())?
    }

    /// Waits until `promql` returns a non-empty result that `ok` accepts.
    fn wait_for(&self, promql: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut last = None;
        let found = wait_for_or_none(SCRAPED, || {
            let r = self.query(promql)?;
            let accepted = !r.is_empty() && ok(&r);
            last = Some(r.clone());
            accepted.then_some(r)
        });
        found.unwrap_or_else(|| {
            panic!(
                "PromQL {promql}: last result {last:?}\nprometheus log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_or_none<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Everything but unreserved characters percent-encoded (RFC 3986), for a query value.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of a 200 answer to `GET path` on loopback `port`; None on any failure.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    (head.split(' ').nth(1) == Some("200")).then(|| body.to_string())
}

/// The sample value of one instant-query result.
fn value(r: &Value) -> f64 {
    r["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn prometheus_scrapes_agents_and_cert_expiry() {
    let bin = std::env::var_os("PHOENIX_PROMETHEUS_BIN").map(PathBuf::from);
    if !require(
        "prometheus (tests/setup/50-prometheus.sh)",
        bin.as_ref().is_some_and(|b| b.exists()),
    ) {
        return;
    }
    let bin = bin.expect("checked above");
    let tmp = tempfile::tempdir().expect("tempdir");
    let metrics = format!("127.0.0.1:{}", free_port());
    let c = Coordinator::start(&tmp.path().join("c"), &["--metrics-listen", &metrics]);
    let agents: Vec<Agent> = [101, 102]
        .into_iter()
        .map(|g| enrolled(&c, tmp.path(), g))
        .collect();
    let spec = tmp.path().join("spec.json");
    let guests: Vec<(u32, Value)> = agents
        .iter()
        .map(|a| (a.guest, files_spec(&a.root, &[("motd", "hello\n")])))
        .collect();
    write_spec(&spec, &guests);
    c.apply_ok(&spec);

    let prom = Prometheus::start(&bin, tmp.path(), &metrics);
    let up = prom.wait_for(r#"up{job="phoenix"}"#, |r| value(&r[0]) == 1.0);
    assert_eq!(up.len(), 1, "{up:?}");

    let connected = prom.wait_for("phoenix_agents_connected", |r| value(&r[0]) == 2.0);
    assert_eq!(connected.len(), 1, "{connected:?}");

    // One identity-expiry series per guest, in the future.
    let ttl = prom.wait_for(r#"phoenix_cert_ttl_seconds{kind="identity"}"#, |r| {
        r.len() == 2
    });
    let mut seen: Vec<&str> = ttl
        .iter()
        .map(|r| r["metric"]["guest"].as_str().unwrap_or(""))
        .collect();
    seen.sort();
    assert_eq!(seen, ["101", "102"], "{ttl:?}");
    for r in &ttl {
        assert!(value(r) > 0.0, "identity expires in the past: {r}");
    }
    // The coordinator's own identity carries no guest label.
    let own = prom.wait_for(r#"phoenix_cert_ttl_seconds{kind="coordinator"}"#, |_| true);
    assert!(own[0]["metric"].get("guest").is_none(), "{own:?}");
    assert!(value(&own[0]) > 0.0, "{own:?}");

    // The apply above: one resource per guest, converged, timed once per guest from
    // push to report.
    prom.wait_for("sum by (guest) (phoenix_resources)", |r| {
        r.len() == 2 && r.iter().all(|s| value(s) == 1.0)
    });
    prom.wait_for("phoenix_guest_last_apply_success", |r| {
        r.len() == 2 && r.iter().all(|s| value(s) == 1.0)
    });
    prom.wait_for("phoenix_apply_report_latency_seconds_count", |r| {
        value(&r[0]) == 2.0
    });
    prom.wait_for(
        r#"sum(phoenix_rpcs_total{service="phoenix.v1.Agent",method="Enroll",code="OK"})"#,
        |r| value(&r[0]) == 2.0,
    );
    let build = prom.wait_for("phoenix_build_info", |_| true);
    assert!(build[0]["metric"]["version"].is_string(), "{build:?}");
    drop(agents);
}
