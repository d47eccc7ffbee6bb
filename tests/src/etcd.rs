//! A private 3-member etcd cluster on loopback per test, so a test may kill members
//! without disturbing others. The binaries come from tests/setup/40-etcd.sh
//! ($PHOENIX_ETCD_BIN, $PHOENIX_ETCDCTL_BIN; Debian's etcd-server 3.4 here).
//!
//! [`EtcdCluster::start_tls`] runs it as the example setup recommends: clients over TLS
//! with client certificates required (`--client-cert-auth`), certificates from a CA made
//! with the project's own pki (the embedded CA's code), written next to the data.

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
    tls: Option<TlsFiles>,
}

/// PEM files of a TLS cluster: its CA, the members' server certificate (127.0.0.1) and a
/// client certificate for Phoenix and etcdctl.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// A CA and two leaf certificates (each valid for server and client use) in `dir`.
    fn issue(dir: &Path) -> TlsFiles {
        use phoenix_ca::{CertAuthority, IssueRequest};
        use phoenix_pki::{San, keys};
        let (ca, _) = phoenix_ca::embedded::EmbeddedCa::generate("etcd test").expect("etcd CA");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let leaf = |name: &str, sans: Vec<San>| {
            let key = keys::generate().expect("key");
            let csr = keys::csr(&key, name, &sans).expect("csr");
            let issued = rt
                .block_on(ca.issue(IssueRequest {
                    csr_pem: csr,
                    common_name: name.to_string(),
                    sans,
                    ttl: Duration::from_secs(24 * 3600),
                }))
                .expect("issue etcd certificate");
            (issued.chain_pem, key.serialize_pem())
        };
        let (server, server_key) = leaf(
            "etcd",
            vec![San::host("127.0.0.1"), San::Dns("localhost".into())],
        );
        let (client, client_key) = leaf("phoenix", vec![San::Dns("phoenix".into())]);
        let f = TlsFiles {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        };
        for (path, pem) in [
            (&f.ca, ca.root_pem().to_string()),
            (&f.server_cert, server),
            (&f.server_key, server_key),
            (&f.client_cert, client),
            (&f.client_key, client_key),
        ] {
            std::fs::write(path, pem).expect("write etcd TLS file");
        }
        f
    }
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
        Self::start_with(dir, false)
    }

    /// Like [`Self::start`], clients over mutual TLS ([`Self::tls`] has the files).
    pub fn start_tls(dir: &Path) -> Option<EtcdCluster> {
        Self::start_with(dir, true)
    }

    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    fn start_with(dir: &Path, tls: bool) -> Option<EtcdCluster> {
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
        let tls = tls.then(|| TlsFiles::issue(dir));
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
            tls,
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
        let client = format!("{}127.0.0.1:{}", self.scheme(), m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(&self.etcd);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
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

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https://"
        } else {
            "http://"
        }
    }

    /// `http(s)://127.0.0.1:<port>` of every member, for the store's configuration.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}127.0.0.1:{}", self.scheme(), m.client_port))
            .collect()
    }

    /// etcdctl with this cluster's client certificate, if it has TLS.
    fn etcdctl_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.etcdctl);
        cmd.env("ETCDCTL_API", "3");
        if let Some(t) = &self.tls {
            cmd.arg("--cacert")
                .arg(&t.ca)
                .arg("--cert")
                .arg(&t.client_cert)
                .arg("--key")
                .arg(&t.client_key);
        }
        cmd
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
            .map(|m| format!("{}127.0.0.1:{}", self.scheme(), m.client_port))
            .collect();
        let out = self
            .etcdctl_cmd()
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
                "--endpoints={}127.0.0.1:{}",
                self.scheme(),
                self.members[i].client_port
            );
            crate::wait_for(
                Duration::from_secs(30),
                &format!("etcd member {} healthy", self.members[i].name),
                || {
                    self.etcdctl_cmd()
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
