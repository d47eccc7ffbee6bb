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

/// The agent's report of one `apply`, with its exit status and stderr.
pub struct Applied {
    pub ok: bool,
    pub report: Value,
    pub stderr: String,
}

impl Applied {
    /// resource id -> status ("changed", "unchanged", …).
    pub fn statuses(&self) -> BTreeMap<String, String> {
        self.report["results"]
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

impl Guest {
    /// Boots a guest, or returns `None` (after `require`'s loud skip) when the image or
    /// Docker is missing. `mounts` are (host path, container path) read-only binds.
    pub fn boot(test: &str, mounts: &[(&Path, &str)]) -> Option<Guest> {
        Self::boot_on(test, mounts, "none")
    }

    /// As `boot`, on Docker network `network` ("host" lets an agent inside reach a
    /// coordinator on the host's loopback).
    pub fn boot_on(test: &str, mounts: &[(&Path, &str)], network: &str) -> Option<Guest> {
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
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            network,
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
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
