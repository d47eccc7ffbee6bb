//! A private 3-member etcd cluster on loopback per test, so a test may kill members
//! without disturbing others. The binaries come from tests/setup/40-etcd.sh
//! ($PHOENIX_ETCD_BIN, $PHOENIX_ETCDCTL_BIN; Debian's etcd-server 3.4 here).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

pub struct EtcdCluster {
    dir: PathBuf,
    etcd: String,
    etcdctl: String,
    token: String,
    members: Vec<Member>,
}

/// A port nobody listens on right now (the kernel's pick; etcd binds it moments later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

impl EtcdCluster {
    /// Starts three members in `dir` and waits until all are healthy; `None` (after a
    /// loud skip) when the setup did not provide etcd.
    pub fn start(dir: &Path) -> Option<EtcdCluster> {
        let (Ok(etcd), Ok(etcdctl)) = (
            std::env::var("PHOENIX_ETCD_BIN"),
            std::env::var("PHOENIX_ETCDCTL_BIN"),
        ) else {
            crate::require(
                "etcd (run tests/run-all.sh, whose setup installs and exports it)",
                false,
            );
            return None;
        };
        std::fs::create_dir_all(dir).expect("create the etcd test directory");
        let members = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let mut c = EtcdCluster {
            dir: dir.to_path_buf(),
            etcd,
            etcdctl,
            token: format!("phoenix-test-{}", std::process::id()),
            members,
        };
        for i in 0..3 {
            c.spawn(i);
        }
        c.wait_healthy(&[0, 1, 2]);
        Some(c)
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let m = &self.members[i];
        let log = std::fs::File::create(self.dir.join(format!("{}.log", m.name)))
            .expect("create etcd log");
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(&self.etcd)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// `http://127.0.0.1:<port>` of every member, for the store's configuration.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// `kill -9` member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_healthy(&[i]);
    }

    /// Runs etcdctl against the members that are up; returns stdout, panics on failure.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let eps: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect();
        let out = Command::new(&self.etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", eps.join(",")))
            .args(args)
            .output()
            .expect("run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_healthy(&self, which: &[usize]) {
        for &i in which {
            let ep = format!(
                "--endpoints=http://127.0.0.1:{}",
                self.members[i].client_port
            );
            crate::wait_for(
                Duration::from_secs(30),
                &format!("etcd member {} healthy", self.members[i].name),
                || {
                    Command::new(&self.etcdctl)
                        .env("ETCDCTL_API", "3")
                        .args([ep.as_str(), "endpoint", "health"])
                        .output()
                        .ok()
                        .filter(|o| o.status.success())
                },
            );
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
