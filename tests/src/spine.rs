//! Real `phoenix` and `phoenix-agent` processes on loopback.

use crate::{bin, wait_for};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let out = File::create(log).expect("create log");
    let err = out.try_clone().expect("clone log");
    cmd.stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .env("PHOENIX_LOG", "info")
        .spawn()
        .expect("spawn")
}

fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A coordinator daemon in its own directory.
pub struct Coordinator {
    pub dir: PathBuf,
    pub addr: String,
    pub extra: Vec<String>,
    /// A command the daemon runs under, e.g. `prlimit --nofile=1024:1024 --`.
    pub wrapper: Vec<String>,
    child: Option<Child>,
    runs: u32,
}

impl Coordinator {
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_under(dir, extra, &[])
    }

    /// Like `start`, with the daemon exec'd by `wrapper` (which must exec, not fork).
    pub fn start_under(dir: &Path, extra: &[&str], wrapper: &[&str]) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let mut c = Coordinator {
            dir: dir.to_path_buf(),
            addr: "127.0.0.1:0".into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            child: None,
            runs: 0,
        };
        c.spawn();
        c
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    fn spawn(&mut self) {
        let addr_file = self.dir.join("state/coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        // A socket left by a killed daemon stays: the daemon must replace it by itself.
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin("phoenix"));
                c
            }
            None => Command::new(bin("phoenix")),
        };
        cmd.arg("--admin-socket")
            .arg(self.socket())
            .arg("serve")
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--listen")
            .arg(&self.addr)
            .arg("--ping-interval")
            .arg("2s")
            .args(&self.extra);
        self.runs += 1;
        let log = self.dir.join(format!("coordinator.{}.log", self.runs));
        self.child = Some(spawn_logged(&mut cmd, &log));
        self.addr = wait_for(Duration::from_secs(20), "coordinator to listen", || {
            let a = std::fs::read_to_string(&addr_file).ok()?;
            self.socket().exists().then_some(a)
        });
    }

    /// `kill -9`, as a crash.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// SIGTERM, as `systemctl stop` sends it; waits at most `limit` for the exit (then
    /// kills). Returns the exit status if it exited in time, and how long it took.
    pub fn terminate(&mut self, limit: Duration) -> (Option<std::process::ExitStatus>, Duration) {
        let mut child = self.child.take().expect("coordinator running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let sent = std::time::Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        while sent.elapsed() < limit {
            if let Some(status) = child.try_wait().expect("wait") {
                return (Some(status), sent.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        (None, sent.elapsed())
    }

    /// Starts again on the same port and state.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("phoenix"))
            .arg("--admin-socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run phoenix")
    }

    /// `phoenix apply -f spec --timeout 30s`, which must exit 0 (every guest converged);
    /// returns its stdout.
    pub fn apply_ok(&self, spec: &Path) -> String {
        let out = self.cli(&[
            "apply",
            "-f",
            spec.to_str().expect("utf8"),
            "--timeout",
            "30s",
        ]);
        assert!(
            out.status.success(),
            "apply: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn token(&self, guest: u32) -> String {
        let out = self.cli(&["token", "create", "--guest", &guest.to_string()]);
        assert!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "-o", "json"]);
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    /// `phoenix apply -f <spec> --force -o json`: its JSON lines; panics if it fails.
    pub fn apply_force(&self, spec: &Path) -> Vec<serde_json::Value> {
        let spec = spec.to_str().expect("utf8 path");
        let out = self.cli(&[
            "apply",
            "-f",
            spec,
            "--force",
            "--timeout",
            "60s",
            "-o",
            "json",
        ]);
        assert!(
            out.status.success(),
            "apply --force: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// `phoenix events -o json <args>`, oldest first; panics if the command fails.
    pub fn events(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let out = self.cli(&[&["events", "-o", "json"][..], args].concat());
        assert!(
            out.status.success(),
            "events: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("coordinator.{}.log", self.runs)))
            .unwrap_or_default()
    }
}

/// Runs a `phoenix serve` that must fail at start; panics if it is still running after
/// 30 s (it is killed then).
pub fn serve_expecting_failure(state_dir: &Path, socket: &Path, extra: &[&str]) -> Output {
    let mut child = Command::new(bin("phoenix"))
        .arg("--admin-socket")
        .arg(socket)
        .arg("serve")
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn phoenix serve");
    let exited = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        child.try_wait().ok().flatten().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wait phoenix serve");
    assert!(
        exited,
        "phoenix serve kept running: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// A `phoenix-agent` with its own state dir and file root.
pub struct Agent {
    pub guest: u32,
    pub dir: PathBuf,
    pub root: PathBuf,
    /// Extra environment of the agent process (e.g. `DOCKER_HOST` of a private engine).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    runs: u32,
}

impl Agent {
    pub fn new(base: &Path, guest: u32) -> Self {
        let dir = base.join(format!("agent-{guest}"));
        let root = dir.join("root");
        std::fs::create_dir_all(&root).expect("mkdir");
        Agent {
            guest,
            dir,
            root,
            env: Vec::new(),
            child: None,
            runs: 0,
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn join(&self, token: &str, extra: &[&str]) -> Output {
        Command::new(bin("phoenix-agent"))
            .arg("--state-dir")
            .arg(self.state())
            .arg("join")
            .arg(token)
            .args(extra)
            .output()
            .expect("run phoenix-agent join")
    }

    pub fn start(&mut self) {
        self.start_with_drift("3");
    }

    /// Like `start`, with another `--drift-interval` (seconds), e.g. one so long that only
    /// an explicit request runs a pass.
    pub fn start_with_drift(&mut self, drift_interval: &str) {
        self.runs += 1;
        let mut cmd = Command::new(bin("phoenix-agent"));
        cmd.arg("--state-dir")
            .arg(self.state())
            .arg("run")
            .arg("--file-root")
            .arg(&self.root)
            .arg("--drift-interval")
            .arg(drift_interval)
            .arg("--backoff-max")
            .arg("2")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        self.child = Some(spawn_logged(
            &mut cmd,
            &self.dir.join(format!("agent.{}.log", self.runs)),
        ));
    }

    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends SIGTERM and waits up to `timeout` for the agent to exit; its exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).ok()?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).ok()?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("agent.{}.log", self.runs)))
            .unwrap_or_default()
    }

    /// Local ports of the agent's established TCP connections to port `port`, read from
    /// /proc as `ss -tnp` would show them: one that stays in this set is one stream that
    /// stayed open.
    pub fn connections_to(&self, port: u16) -> Vec<u16> {
        self.pid()
            .map(|p| tcp_connections(p, port))
            .unwrap_or_default()
    }
}

/// Local ports of `pid`'s established TCP connections to remote port `port`.
fn tcp_connections(pid: u32, port: u16) -> Vec<u16> {
    let sockets: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let port_of = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        // sl local_address rem_address st ... inode (10th field); st 01 = ESTABLISHED.
        for f in text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
        {
            if f.len() > 9 && f[3] == "01" && port_of(f[2]) == Some(port) && sockets.contains(f[9])
            {
                out.extend(port_of(f[1]));
            }
        }
    }
    out
}

impl Drop for Agent {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// An agent for `guest` joined with a fresh token, running, and seen connected.
pub fn enrolled(c: &Coordinator, base: &Path, guest: u32) -> Agent {
    let mut a = Agent::new(base, guest);
    let out = a.join(&c.token(guest), &[]);
    assert!(
        out.status.success(),
        "join {guest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.start();
    wait_for(Duration::from_secs(30), "agent connected", || {
        guest_status(&c.status(), guest).filter(|g| g["connected"] == true)
    });
    a
}

/// Writes `{"guests": {...}}` for `phoenix apply -f`.
pub fn write_spec(path: &Path, guests: &[(u32, serde_json::Value)]) {
    let mut map = serde_json::Map::new();
    for (g, spec) in guests {
        map.insert(g.to_string(), spec.clone());
    }
    let doc = serde_json::json!({ "guests": map });
    std::fs::write(path, serde_json::to_vec_pretty(&doc).expect("json")).expect("write spec");
}

/// A spec of plain files under `root`.
pub fn files_spec(root: &Path, files: &[(&str, &str)]) -> serde_json::Value {
    let resources: Vec<_> = files
        .iter()
        .map(|(name, content)| {
            serde_json::json!({"kind": "file", "path": root.join(name).display().to_string(), "content": content})
        })
        .collect();
    serde_json::json!({ "resources": resources })
}

/// The guest's row in `phoenix status -o json`.
pub fn guest_status(status: &serde_json::Value, guest: u32) -> Option<serde_json::Value> {
    status
        .as_array()?
        .iter()
        .find(|g| g["guest"] == guest)
        .cloned()
}

/// True when the guest reports the wanted revision applied and converged.
pub fn converged(status: &serde_json::Value, guest: u32) -> bool {
    guest_status(status, guest).is_some_and(|g| {
        g["wanted_revision"].as_u64().unwrap_or(0) > 0
            && g["wanted_revision"] == g["applied_revision"]
            && g["converged"] == true
    })
}

/// Enrolls `guest`, lets its identity expire with the agent stopped, then starts the agent:
/// it must renew by itself (proof of the old key) and converge a pushed state.
pub fn expired_while_offline_recovers(c: &Coordinator, base: &Path, guest: u32) {
    let mut a = Agent::new(base, guest);
    let out = a.join(&c.token(guest), &[]);
    assert!(
        out.status.success(),
        "join: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expired_at = wait_for(Duration::from_secs(30), "identity to expire", || {
        let pem = std::fs::read_to_string(a.state().join("cert.pem")).ok()?;
        let chain = phoenix_pki::x509::parse_chain(&pem, "cert").ok()?;
        let info = phoenix_pki::x509::inspect(&chain[0]).ok()?;
        (info.not_after + Duration::from_secs(1) < std::time::SystemTime::now())
            .then_some(info.not_after)
    });
    let spec = base.join(format!("spec-{guest}.json"));
    write_spec(
        &spec,
        &[(guest, files_spec(&a.root, &[("back", "online\n")]))],
    );
    let out = c.cli(&[
        "apply",
        "-f",
        spec.to_str().unwrap_or_default(),
        "--no-wait",
    ]);
    assert!(out.status.success());
    a.start();
    wait_for(
        Duration::from_secs(30),
        "converged after renewing the expired identity",
        || converged(&c.status(), guest).then_some(()),
    );
    assert!(a.log().contains("expired identity renewed"), "{}", a.log());
    let pem = std::fs::read_to_string(a.state().join("cert.pem")).expect("cert");
    let chain = phoenix_pki::x509::parse_chain(&pem, "cert").expect("chain");
    assert!(
        phoenix_pki::x509::inspect(&chain[0])
            .expect("inspect")
            .not_after
            > expired_at
    );
}
