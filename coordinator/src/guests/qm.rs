//! Proxmox VMs through the QEMU guest agent: files by the agent's `file-write` (through
//! `pvesh`, the node's API client), commands by `qm guest exec` and polled
//! `qm guest exec-status`.
//!
//! PVE caps `file-write`'s `content` at 61440 characters. Like Ansible's
//! `community.proxmox` QEMU connection, a file goes in 45000-byte parts (60000 base64
//! characters, sent with `encode 0` because they already are base64), each to its own
//! part file, then one `cat` in the guest joins them into a temporary name and renames it.
//! `pvesh` takes the content as an argument, visible in the host's process list, so files
//! up to one part (the unit, the join token) go instead on the stdin of one
//! `qm guest exec --pass-stdin 1` (PVE caps that at 1 MiB).
//! No Proxmox runs on the test machine: the unit tests pin the exact command lines, the
//! chunking and the polling.

use super::transport::{Exec, GuestTransport, Host, TransportError, pushed, write_stdin_argv};
use async_trait::async_trait;
use base64::Engine;
use phoenix_proto::model::GuestId;
use std::time::{Duration, Instant};

/// Raw bytes per `file-write`: base64 makes 60000 characters, under PVE's 61440.
pub const CHUNK_BYTES: usize = 45000;

/// Joins the parts (`$3…`) into `$1` with mode `$2` through a temporary name; removes them.
const ASSEMBLE: &str = r#"d=$1; m=$2; shift 2; umask 077; t="$d.phoenix-tmp"; cat "$@" > "$t" && chmod "$m" "$t" && mv -f "$t" "$d"; s=$?; rm -f "$@"; exit $s"#;

pub struct Qm<H> {
    pub host: H,
    /// The node name `pvesh` addresses; `localhost` is the node it runs on.
    pub node: String,
    /// Between two `exec-status` polls.
    pub poll: Duration,
    /// A guest command still running after this long is reported as failed.
    pub timeout: Duration,
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

impl<H: Host> Qm<H> {
    fn write_argv(&self, guest: GuestId, file: &str, b64: &str) -> Vec<String> {
        s(&[
            "pvesh",
            "create",
            &format!("/nodes/{}/qemu/{guest}/agent/file-write", self.node),
            "--file",
            file,
            "--content",
            b64,
            "--encode",
            "0",
        ])
    }

    fn guest_err(guest: GuestId, action: &str, reason: String) -> TransportError {
        TransportError::Guest {
            action: action.into(),
            guest,
            reason,
        }
    }

    /// Starts `argv` (with `stdin` passed to it, if any) and returns the guest agent's pid.
    async fn start(
        &self,
        guest: GuestId,
        argv: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<u64, TransportError> {
        let mut cmd = s(&["qm", "guest", "exec", &guest.to_string()]);
        if stdin.is_some() {
            cmd.extend(s(&["--pass-stdin", "1"]));
        }
        cmd.extend(s(&["--synchronous", "0", "--"]));
        cmd.extend(s(argv));
        let out = self.host.run(&cmd, stdin.unwrap_or_default()).await?;
        let what = format!("start {}", argv.join(" "));
        if !out.success() {
            return Err(Self::guest_err(guest, &what, out.reason()));
        }
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["pid"].as_u64())
            .ok_or_else(|| {
                Self::guest_err(guest, &what, format!("no pid in {:?}", out.stdout.trim()))
            })
    }
}

#[async_trait]
impl<H: Host> GuestTransport for Qm<H> {
    async fn push(
        &self,
        guest: GuestId,
        dest: &str,
        mode: u32,
        content: &[u8],
    ) -> Result<(), TransportError> {
        // A small file (the unit, the join token) goes in one call on stdin: nothing of it
        // appears in an argv. Only what is larger takes the file-write parts.
        if content.len() <= CHUNK_BYTES {
            let argv = write_stdin_argv(dest, mode);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            return pushed(guest, dest, self.run(guest, &argv, Some(content)).await?);
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut parts = Vec::new();
        for (i, chunk) in content.chunks(CHUNK_BYTES).enumerate() {
            let part = format!("{dest}.phoenix-part-{i}");
            let out = self
                .host
                .run(&self.write_argv(guest, &part, &b64.encode(chunk)), &[])
                .await?;
            pushed(guest, &part, out)?;
            parts.push(part);
        }
        let mode = format!("{mode:04o}");
        let mut argv = vec!["sh", "-c", ASSEMBLE, "sh", dest, &mode];
        argv.extend(parts.iter().map(String::as_str));
        pushed(guest, dest, self.run(guest, &argv, None).await?)
    }

    async fn exec(&self, guest: GuestId, argv: &[&str]) -> Result<Exec, TransportError> {
        self.run(guest, argv, None).await
    }
}

impl<H: Host> Qm<H> {
    /// Starts `argv` and polls `exec-status` until it exits or the timeout passes.
    async fn run(
        &self,
        guest: GuestId,
        argv: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Exec, TransportError> {
        let pid = self.start(guest, argv, stdin).await?;
        let status = s(&[
            "qm",
            "guest",
            "exec-status",
            &guest.to_string(),
            &pid.to_string(),
        ]);
        let what = format!("wait for {}", argv.join(" "));
        let deadline = Instant::now() + self.timeout;
        loop {
            let out = self.host.run(&status, &[]).await?;
            if !out.success() {
                return Err(Self::guest_err(guest, &what, out.reason()));
            }
            let v: serde_json::Value = serde_json::from_str(&out.stdout).map_err(|e| {
                Self::guest_err(guest, &what, format!("exec-status is not JSON: {e}"))
            })?;
            if v["exited"].as_u64() == Some(1) || v["exited"] == true {
                let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                return Ok(Exec {
                    status: v["exitcode"].as_i64().unwrap_or(-1) as i32,
                    stdout: text("out-data"),
                    stderr: text("err-data"),
                });
            }
            if Instant::now() >= deadline {
                return Err(Self::guest_err(
                    guest,
                    &what,
                    format!(
                        "still running after {:?} (guest agent pid {pid})",
                        self.timeout
                    ),
                ));
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::attach::tests::Recorder;
    use super::*;

    fn qm(r: &Recorder) -> Qm<&Recorder> {
        Qm {
            host: r,
            node: "localhost".into(),
            poll: Duration::ZERO,
            timeout: Duration::from_secs(5),
        }
    }

    fn answer(r: &Recorder, stdout: &str) {
        r.answers.lock().expect("lock").push_back(Exec {
            status: 0,
            stdout: stdout.into(),
            stderr: String::new(),
        });
    }

    #[tokio::test]
    async fn exec_starts_asynchronously_and_polls_until_exited() {
        let r = Recorder::default();
        answer(&r, r#"{"pid": 42}"#);
        answer(&r, r#"{"exited": 0}"#);
        answer(
            &r,
            r#"{"exited": 1, "exitcode": 3, "out-data": "o", "err-data": "e"}"#,
        );
        let out = qm(&r)
            .exec(
                GuestId::try_from(200).expect("id"),
                &["systemctl", "is-active", "x"],
            )
            .await
            .expect("exec");
        assert_eq!(
            out,
            Exec {
                status: 3,
                stdout: "o".into(),
                stderr: "e".into()
            }
        );
        assert_eq!(
            r.argv(0),
            [
                "qm",
                "guest",
                "exec",
                "200",
                "--synchronous",
                "0",
                "--",
                "systemctl",
                "is-active",
                "x"
            ]
        );
        assert_eq!(r.argv(1), ["qm", "guest", "exec-status", "200", "42"]);
        assert_eq!(r.argv(2), r.argv(1));
        assert_eq!(r.calls.lock().expect("lock").len(), 3);
    }

    #[tokio::test]
    async fn a_command_that_never_exits_times_out_naming_it() {
        let r = Recorder::default();
        answer(&r, r#"{"pid": 7}"#);
        for _ in 0..1000 {
            answer(&r, r#"{"exited": 0}"#);
        }
        let mut t = qm(&r);
        t.timeout = Duration::from_millis(30);
        t.poll = Duration::from_millis(5);
        let e = t
            .exec(GuestId::try_from(200).expect("id"), &["sleep", "9"])
            .await
            .expect_err("times out");
        assert!(
            e.to_string()
                .starts_with("wait for sleep 9 in guest 200: still running after 30ms"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_small_file_goes_on_stdin_never_in_an_argv() {
        let r = Recorder::default();
        answer(&r, r#"{"pid": 5}"#);
        answer(&r, r#"{"exited": 1, "exitcode": 0}"#);
        qm(&r)
            .push(
                GuestId::try_from(300).expect("id"),
                "/run/phoenix-agent-join.token",
                0o600,
                b"tok3n",
            )
            .await
            .expect("push");
        let calls = r.calls.lock().expect("lock").clone();
        assert_eq!(
            calls[0].0,
            [
                "qm",
                "guest",
                "exec",
                "300",
                "--pass-stdin",
                "1",
                "--synchronous",
                "0",
                "--",
                "sh",
                "-c",
                super::super::transport::WRITE_STDIN,
                "sh",
                "/run/phoenix-agent-join.token",
                "0600",
            ]
        );
        assert_eq!(calls[0].1, b"tok3n");
        assert!(
            calls
                .iter()
                .all(|(argv, _)| !argv.iter().any(|a| a.contains("tok3n")))
        );
    }

    #[tokio::test]
    async fn push_writes_45000_byte_parts_under_the_61440_character_limit_then_assembles() {
        let r = Recorder::default();
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        // Three part writes answer with the default success; then the assembling exec.
        for _ in 0..3 {
            answer(&r, "");
        }
        answer(&r, r#"{"pid": 9}"#);
        answer(&r, r#"{"exited": 1, "exitcode": 0}"#);
        qm(&r)
            .push(
                GuestId::try_from(300).expect("id"),
                "/usr/local/bin/phoenix-agent",
                0o755,
                &content,
            )
            .await
            .expect("push");
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut joined = Vec::new();
        for i in 0..3 {
            let mut argv = r.argv(i);
            let content = std::mem::replace(&mut argv[6], "<content>".into());
            let part = format!("/usr/local/bin/phoenix-agent.phoenix-part-{i}");
            assert_eq!(
                argv,
                [
                    "pvesh",
                    "create",
                    "/nodes/localhost/qemu/300/agent/file-write",
                    "--file",
                    &part,
                    "--content",
                    "<content>",
                    "--encode",
                    "0"
                ]
            );
            assert!(
                content.len() <= 61440,
                "part {i}: {} characters",
                content.len()
            );
            joined.extend(b64.decode(&content).expect("base64"));
        }
        assert_eq!(r.argv(0)[6].len(), 60000);
        assert_eq!(joined, content, "the parts are the file, in order");
        assert_eq!(
            r.argv(3),
            [
                "qm",
                "guest",
                "exec",
                "300",
                "--synchronous",
                "0",
                "--",
                "sh",
                "-c",
                ASSEMBLE,
                "sh",
                "/usr/local/bin/phoenix-agent",
                "0755",
                "/usr/local/bin/phoenix-agent.phoenix-part-0",
                "/usr/local/bin/phoenix-agent.phoenix-part-1",
                "/usr/local/bin/phoenix-agent.phoenix-part-2",
            ]
        );
    }
}
