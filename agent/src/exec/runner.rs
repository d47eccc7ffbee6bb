//! Running one program: argv only (never a shell), a fixed base environment, optional user
//! and working directory, a timeout that kills the whole process group, and output capped
//! while it is read so a chatty command cannot exhaust memory.

use super::ExecError;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

/// One program to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub argv: Vec<String>,
    /// Added to the base environment (PATH, LANG, HOME); the agent's own environment is not
    /// inherited, so a command behaves the same whoever started the agent.
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub user: Option<String>,
    pub timeout: Duration,
}

impl Invocation {
    pub fn new(argv: Vec<String>, timeout: Duration) -> Self {
        Invocation {
            argv,
            env: BTreeMap::new(),
            cwd: None,
            user: None,
            timeout,
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.to_owned(), v.to_owned());
        self
    }

    pub fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }
}

/// The first `cap` bytes of a stream and how long it really was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    pub bytes: Vec<u8>,
    pub total: usize,
}

impl Captured {
    pub fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.total > self.bytes.len() {
            s.push_str(&format!(
                "\n[{} more bytes not kept]",
                self.total - self.bytes.len()
            ));
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code; `None` when killed by a signal (including our timeout).
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: Captured,
    pub stderr: Captured,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// "exit 3", "killed after the 5 s timeout", "killed by a signal".
    pub fn status(&self) -> String {
        match (self.timed_out, self.code) {
            (true, _) => format!("killed after the {:.0?} timeout", self.elapsed),
            (false, Some(c)) => format!("exit {c}"),
            (false, None) => "killed by a signal".to_owned(),
        }
    }
}

/// Runs programs on the host. The real one is [`ProcessRunner`]; apt and systemctl are
/// driven through it too, so their timeouts and output caps behave alike.
#[async_trait::async_trait]
pub trait CommandRunner: Send + Sync {
    async fn run(&self, inv: &Invocation) -> Result<Outcome, ExecError>;
}

/// Spawns real processes.
#[derive(Debug, Clone)]
pub struct ProcessRunner {
    /// Bytes kept per stream; the rest is read and dropped.
    pub output_cap: usize,
}

impl Default for ProcessRunner {
    fn default() -> Self {
        ProcessRunner {
            output_cap: 256 * 1024,
        }
    }
}

const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[async_trait::async_trait]
impl CommandRunner for ProcessRunner {
    async fn run(&self, inv: &Invocation) -> Result<Outcome, ExecError> {
        let program = inv.program().to_owned();
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(inv.argv.iter().skip(1))
            .env_clear()
            .env("PATH", BASE_PATH)
            .env("LANG", "C.UTF-8")
            .env("HOME", "/root")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: the timeout kills `sh -c` and everything it started.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(user) = &inv.user {
            let account = nix::unistd::User::from_name(user)
                .map_err(|e| ExecError::User {
                    user: user.clone(),
                    reason: e.to_string(),
                })?
                .ok_or_else(|| ExecError::User {
                    user: user.clone(),
                    reason: "no such user".into(),
                })?;
            // std drops supplementary groups when switching uid as root.
            cmd.uid(account.uid.as_raw())
                .gid(account.gid.as_raw())
                .env("HOME", &account.dir)
                .env("USER", user);
        }
        cmd.envs(&inv.env);
        if let Some(cwd) = &inv.cwd {
            cmd.current_dir(cwd);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child.id();
        let out = tokio::spawn(capture(child.stdout.take(), self.output_cap));
        let err = tokio::spawn(capture(child.stderr.take(), self.output_cap));
        let (status, timed_out) = match tokio::time::timeout(inv.timeout, child.wait()).await {
            Ok(status) => (status, false),
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                (child.wait().await, true)
            }
        };
        let status = status.map_err(|source| ExecError::Wait {
            program: program.clone(),
            source,
        })?;
        // Pipes close once the group is gone; a daemonized grandchild that keeps them open
        // must not hang the pass, so the readers get a short grace period.
        let grace = Duration::from_secs(2);
        let stdout = tokio::time::timeout(grace, out)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let stderr = tokio::time::timeout(grace, err)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        Ok(Outcome {
            code: status.code(),
            timed_out,
            stdout,
            stderr,
            elapsed: started.elapsed(),
        })
    }
}

async fn capture(stream: Option<impl AsyncRead + Unpin>, cap: usize) -> Captured {
    let mut c = Captured::default();
    let Some(mut stream) = stream else {
        return c;
    };
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                c.total += n;
                let room = cap.saturating_sub(c.bytes.len()).min(n);
                c.bytes.extend_from_slice(&buf[..room]);
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Invocation {
        Invocation::new(
            vec!["/bin/sh".into(), "-c".into(), script.into()],
            Duration::from_secs(10),
        )
    }

    #[tokio::test]
    async fn captures_output_exit_code_env_and_cwd() {
        let r = ProcessRunner::default();
        let mut inv =
            sh("echo out; echo err >&2; echo \"$GREETING\"; pwd; exit 3").env("GREETING", "hello");
        inv.cwd = Some("/tmp".into());
        let o = r.run(&inv).await.expect("runs");
        assert_eq!(o.code, Some(3));
        assert!(!o.success());
        assert_eq!(o.stdout.text(), "out\nhello\n/tmp\n");
        assert_eq!(o.stderr.text(), "err\n");
    }

    #[tokio::test]
    async fn output_is_capped_while_read() {
        let r = ProcessRunner { output_cap: 10 };
        let o = r
            .run(&sh("head -c 100000 /dev/zero | tr '\\0' x"))
            .await
            .expect("runs");
        assert_eq!(o.stdout.bytes.len(), 10);
        assert_eq!(o.stdout.total, 100_000);
        assert!(o.stdout.text().ends_with("[99990 more bytes not kept]"));
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let r = ProcessRunner::default();
        let mut inv = sh("sleep 30 & sleep 30; echo never");
        inv.timeout = Duration::from_millis(300);
        let o = r.run(&inv).await.expect("runs");
        assert!(o.timed_out);
        assert!(o.elapsed < Duration::from_secs(5), "took {:?}", o.elapsed);
        assert!(o.status().starts_with("killed after"));
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error_naming_it() {
        let r = ProcessRunner::default();
        let e = r
            .run(&Invocation::new(
                vec!["/nonexistent/prog".into()],
                Duration::from_secs(1),
            ))
            .await
            .expect_err("fails");
        assert!(e.to_string().contains("/nonexistent/prog"), "{e}");
    }
}
