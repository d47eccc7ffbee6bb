//! The trait every way into a guest implements, and the host commands under it.
//!
//! Transports only build argv and feed stdin; [`Host`] runs them. Unit tests swap in a
//! recording host to pin the exact command lines (`pct`/`qm` cannot run on a machine
//! without Proxmox). Nothing here builds a shell string from a value: where a guest-side
//! shell is needed, the script is a constant and every value is a positional argument.

use async_trait::async_trait;
use phoenix_proto::model::GuestId;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

/// What one command in the guest (or on the host) returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exec {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Exec {
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// stderr, else stdout, trimmed: what to show when the command failed.
    pub fn reason(&self) -> String {
        let e = self.stderr.trim();
        if e.is_empty() {
            self.stdout.trim().to_owned()
        } else {
            e.to_owned()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("run {program} on the host: {reason}")]
    Spawn { program: String, reason: String },
    #[error("{action} in guest {guest}: {reason}")]
    Guest {
        action: String,
        guest: GuestId,
        reason: String,
    },
}

/// Runs a host command to completion with `stdin` fed to it.
#[async_trait]
pub trait Host: Send + Sync {
    async fn run(&self, argv: &[String], stdin: &[u8]) -> Result<Exec, TransportError>;
}

/// The real host: a child process per command.
pub struct ProcessHost;

#[async_trait]
impl Host for ProcessHost {
    async fn run(&self, argv: &[String], stdin: &[u8]) -> Result<Exec, TransportError> {
        let program = argv.first().cloned().unwrap_or_default();
        let err = |e: std::io::Error| TransportError::Spawn {
            program: program.clone(),
            reason: e.to_string(),
        };
        let mut child = tokio::process::Command::new(&program)
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(err)?;
        if let Some(mut input) = child.stdin.take() {
            // A command that exits without reading all of stdin reports through its status.
            let _ = input.write_all(stdin).await;
        }
        let out = child.wait_with_output().await.map_err(err)?;
        Ok(Exec {
            // Killed by a signal: no code; -1 is never a real exit status.
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A way into a guest. The guest's id names it on every transport (Proxmox's vmid, the
/// plain-LXC container name, the Docker container name).
#[async_trait]
pub trait GuestTransport: Send + Sync {
    /// Writes `content` to the absolute path `dest` in the guest with `mode`, atomically
    /// (a temporary file beside it, then a rename, so a running binary is replaced whole).
    async fn push(
        &self,
        guest: GuestId,
        dest: &str,
        mode: u32,
        content: &[u8],
    ) -> Result<(), TransportError>;

    /// Runs `argv` in the guest as root and returns its status and output.
    async fn exec(&self, guest: GuestId, argv: &[&str]) -> Result<Exec, TransportError>;
}

/// The guest-side writer: stdin to `$1` with mode `$2`, through a temporary file.
pub(super) const WRITE_STDIN: &str =
    r#"umask 077; t="$1.phoenix-tmp"; cat > "$t" && chmod "$2" "$t" && mv -f "$t" "$1""#;

/// `sh -c WRITE_STDIN sh <dest> <mode>`: the argv tail every stdin-fed push runs.
pub(super) fn write_stdin_argv(dest: &str, mode: u32) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        WRITE_STDIN.into(),
        "sh".into(),
        dest.into(),
        format!("{mode:04o}"),
    ]
}

/// Turns a failed push into the error naming the file.
pub(super) fn pushed(guest: GuestId, dest: &str, out: Exec) -> Result<(), TransportError> {
    if out.success() {
        Ok(())
    } else {
        Err(TransportError::Guest {
            action: format!("write {dest}"),
            guest,
            reason: out.reason(),
        })
    }
}
