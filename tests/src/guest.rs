//! A Debian bookworm container booted with systemd as PID 1 on the machine's Docker engine
//! (image from tests/setup/30-guest.sh), with the built `phoenix-agent` mounted in. The
//! agent converges specs inside it with `phoenix-agent apply -f … --json`, so apt, dpkg and
//! systemd are the real ones. The container runs with `--network none`: nothing is fetched
//! from outside. Removed on drop, also when the test fails.

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub struct Guest {
    name: String,
}

/// resource id -> status of every result in an agent's report (a report as the agent
/// prints it, or the payload of a `report` event).
pub fn result_statuses(report: &Value) -> BTreeMap<String, String> {
    report["results"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    (
                        r["resource"].as_str().unwrap_or_default().to_owned(),
                        r["status"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The agent's report of one `apply`, with its exit status and stderr.
pub struct Applied {
    pub ok: bool,
    pub report: Value,
    pub stderr: String,
}

impl Applied {
    /// resource id -> status ("changed", "unchanged", …).
    pub fn statuses(&self) -> BTreeMap<String, String> {
        result_statuses(&self.report)
    }

    pub fn status(&self, id: &str) -> String {
        self.statuses().get(id).cloned().unwrap_or_default()
    }

    pub fn message(&self, id: &str) -> String {
        self.report["results"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["resource"] == id))
            .map(|r| format!("{} {}", r["message"], r["diff"]))
            .unwrap_or_default()
    }

    /// Asserts every resource converged; `expect` gives the status of each listed one.
    pub fn assert(&self, expect: &[(&str, &str)]) {
        assert!(self.ok, "apply failed: {}\n{}", self.stderr, self.report);
        let st = self.statuses();
        for (id, want) in expect {
            assert_eq!(
                st.get(*id).map(String::as_str),
                Some(*want),
                "{id}: {}",
                self.message(id)
            );
        }
    }

    pub fn assert_all_unchanged(&self) {
        assert!(self.ok, "apply failed: {}\n{}", self.stderr, self.report);
        let st = self.statuses();
        assert!(!st.is_empty());
        for (id, s) in &st {
            assert_eq!(s, "unchanged", "{id}: {}", self.message(id));
        }
    }
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

/// True when Docker answers and has the systemd guest image (tests/setup/30-guest.sh), for
/// a test that must know before it creates anything else (a [`Network`]).
pub fn available() -> bool {
    let image = std::env::var("PHOENIX_GUEST_IMAGE").unwrap_or_default();
    !image.is_empty()
        && Command::new("docker")
            .args(["image", "inspect", &image])
            .output()
            .is_ok_and(|o| o.status.success())
}

impl Guest {
    /// Boots a guest, or returns `None` (after `require`'s loud skip) when the image or
    /// Docker is missing. `mounts` are (host path, container path) read-only binds.
    pub fn boot(test: &str, mounts: &[(&Path, &str)]) -> Option<Guest> {
        Self::boot_on(test, mounts, "none")
    }

    /// As `boot`, on Docker network `network` ("host" lets an agent inside reach a
    /// coordinator on the host's loopback).
    pub fn boot_on(test: &str, mounts: &[(&Path, &str)], network: &str) -> Option<Guest> {
        Self::boot_with(test, mounts, &["--network", network])
    }

    /// As `boot`, with `run_args` (at least a `--network`) given to `docker run`, e.g.
    /// `["--network", net.name(), "--ip", "10.231.7.10"]` for a fixed address on a
    /// [`Network`].
    pub fn boot_with(test: &str, mounts: &[(&Path, &str)], run_args: &[&str]) -> Option<Guest> {
        let image = std::env::var("PHOENIX_GUEST_IMAGE").unwrap_or_default();
        let have = !image.is_empty() && docker(&["image", "inspect", &image]).status.success();
        if !crate::require(
            "the systemd guest image (tests/setup/30-guest.sh, PHOENIX_GUEST_IMAGE)",
            have,
        ) {
            return None;
        }
        let name = format!("phoenix-test-{test}-{}", std::process::id());
        let _ = docker(&["rm", "-f", &name]);
        let agent = crate::bin("phoenix-agent");
        let mut args: Vec<String> = ["run", "-d", "--name", &name]
            .iter()
            .chain(run_args)
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(
            [
                "--tmpfs",
                "/run",
                "--tmpfs",
                "/run/lock",
                "-v",
                "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        args.push("-v".into());
        args.push(format!(
            "{}:/usr/local/bin/phoenix-agent:ro",
            agent.display()
        ));
        for (host, guest) in mounts {
            args.push("-v".into());
            args.push(format!("{}:{guest}:ro", host.display()));
        }
        args.extend([image, "/sbin/init".to_owned()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = docker(&refs);
        let guest = Guest { name };
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        crate::wait_for(
            Duration::from_secs(90),
            "systemd in the guest to boot",
            || {
                let o = guest.sh("systemctl is-system-running");
                let s = String::from_utf8_lossy(&o.stdout).trim().to_owned();
                (s == "running" || s == "degraded").then_some(())
            },
        );
        Some(guest)
    }

    /// The container's name, for `docker` commands of the test's own.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn sh(&self, script: &str) -> Output {
        docker(&["exec", &self.name, "/bin/sh", "-c", script])
    }

    /// Runs `script`, asserts it succeeded, returns its trimmed stdout.
    pub fn ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(
            o.status.success(),
            "in guest: {script}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    pub fn write(&self, path: &str, content: &[u8]) {
        let mut child = Command::new("docker")
            .args([
                "exec",
                "-i",
                &self.name,
                "/bin/sh",
                "-c",
                &format!("cat > '{path}'"),
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("docker exec");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(content)
            .expect("write to docker exec");
        assert!(
            child.wait().expect("wait").success(),
            "write {path} in guest"
        );
    }

    /// `phoenix-agent apply -f <spec> --json` inside the guest.
    pub fn apply(&self, spec: &Value) -> Applied {
        self.write("/root/spec.json", spec.to_string().as_bytes());
        let o = self.sh("/usr/local/bin/phoenix-agent apply -f /root/spec.json --json");
        let stdout = String::from_utf8_lossy(&o.stdout);
        Applied {
            ok: o.status.success(),
            report: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stderr: format!("{stdout}{}", String::from_utf8_lossy(&o.stderr)),
        }
    }

    /// `systemctl show -p <prop> --value <unit>`.
    pub fn unit_prop(&self, unit: &str, prop: &str) -> String {
        self.ok(&format!("systemctl show -p {prop} --value {unit}"))
    }

    /// Modification times (ns) of `paths`, for "touched nothing" checks; "-" if missing.
    pub fn mtimes(&self, paths: &[&str]) -> Vec<String> {
        paths
            .iter()
            .map(|p| self.ok(&format!("stat -c %.9Y '{p}' 2>/dev/null || echo -")))
            .collect()
    }
}

/// A self-signed certificate and its private key (PEM) for DNS name `cn`, made with openssl;
/// `None` when openssl is missing.
pub fn self_signed(cn: &str) -> Option<(String, String)> {
    let dir = tempfile::tempdir().ok()?;
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "2", "-subj", &format!("/CN={cn}"), "-addext"])
        .arg(format!("subjectAltName=DNS:{cn}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .ok()?
        .status
        .success();
    if !ok {
        return None;
    }
    Some((
        std::fs::read_to_string(cert).ok()?,
        std::fs::read_to_string(key).ok()?,
    ))
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
}

/// A private Docker bridge network for guests that need their own addresses and ports (a
/// gateway listening on 80 and 443 would collide with the host's on `--network host`). The
/// host is its gateway (`<prefix>.1`), so a daemon the test starts on that address is
/// reachable from the guests. Removed on drop.
pub struct Network {
    name: String,
    prefix: String,
}

impl Network {
    /// Creates a /24 in 10.231.0.0/16 that no other network on the engine uses (an
    /// overlapping subnet is refused by Docker, so the next one is tried).
    pub fn create(test: &str) -> Network {
        let name = format!("phoenix-test-{test}-{}", std::process::id());
        let _ = docker(&["network", "rm", &name]);
        let start = std::process::id() % 250;
        let mut last = String::new();
        for i in 0..250 {
            let third = (start + i) % 250 + 1;
            let prefix = format!("10.231.{third}");
            let out = docker(&[
                "network",
                "create",
                "--subnet",
                &format!("{prefix}.0/24"),
                "--gateway",
                &format!("{prefix}.1"),
                &name,
            ]);
            if out.status.success() {
                return Network { name, prefix };
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        panic!("no free subnet in 10.231.0.0/16 for network {name}: {last}");
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first three octets, e.g. `10.231.7`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.<host>`.
    pub fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }

    /// The host's address on the network.
    pub fn gateway(&self) -> String {
        self.ip(1)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}
