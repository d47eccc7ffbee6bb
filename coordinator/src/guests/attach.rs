//! Transports that attach a process to a running container: plain LXC (`lxc-attach`),
//! Proxmox containers (`pct push` / `pct exec`, where `pct exec` is `lxc-attach` underneath)
//! and Docker (`docker exec`). All three run the guest's own tools; only how a command is
//! started differs, so a push is one stdin-fed `sh -c` writer except on `pct`, which has
//! its own `push` from a host file.

use super::transport::{Exec, GuestTransport, Host, TransportError, pushed, write_stdin_argv};
use async_trait::async_trait;
use phoenix_proto::model::GuestId;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

/// The environment a command sees in the guest: not the host's (an operator's shell
/// variables have no business in a guest's root process), but a PATH that finds `sh`.
const GUEST_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn strings(argv: &[&str]) -> Vec<String> {
    argv.iter().map(|s| s.to_string()).collect()
}

/// Plain LXC: the container named by the guest id, as Proxmox names its containers.
pub struct Lxc<H> {
    pub host: H,
}

impl<H> Lxc<H> {
    fn attach(guest: GuestId, tail: Vec<String>) -> Vec<String> {
        let mut argv = strings(&[
            "lxc-attach",
            "-n",
            &guest.to_string(),
            "--clear-env",
            "--set-var",
            GUEST_PATH,
            "--",
        ]);
        argv.extend(tail);
        argv
    }
}

#[async_trait]
impl<H: Host> GuestTransport for Lxc<H> {
    async fn push(
        &self,
        guest: GuestId,
        dest: &str,
        mode: u32,
        content: &[u8],
    ) -> Result<(), TransportError> {
        let argv = Self::attach(guest, write_stdin_argv(dest, mode));
        pushed(guest, dest, self.host.run(&argv, content).await?)
    }

    async fn exec(&self, guest: GuestId, argv: &[&str]) -> Result<Exec, TransportError> {
        self.host
            .run(&Self::attach(guest, strings(argv)), &[])
            .await
    }
}

/// Docker: the container named by the guest id.
pub struct Docker<H> {
    pub host: H,
}

impl<H> Docker<H> {
    fn exec_argv(guest: GuestId, interactive: bool, tail: Vec<String>) -> Vec<String> {
        let mut argv = strings(&["docker", "exec"]);
        if interactive {
            argv.push("-i".into());
        }
        argv.extend(strings(&["--env", GUEST_PATH, &guest.to_string()]));
        argv.extend(tail);
        argv
    }
}

#[async_trait]
impl<H: Host> GuestTransport for Docker<H> {
    async fn push(
        &self,
        guest: GuestId,
        dest: &str,
        mode: u32,
        content: &[u8],
    ) -> Result<(), TransportError> {
        let argv = Self::exec_argv(guest, true, write_stdin_argv(dest, mode));
        pushed(guest, dest, self.host.run(&argv, content).await?)
    }

    async fn exec(&self, guest: GuestId, argv: &[&str]) -> Result<Exec, TransportError> {
        let argv = Self::exec_argv(guest, false, strings(argv));
        self.host.run(&argv, &[]).await
    }
}

/// Proxmox containers: `pct push` from a host file in a private (0700) directory, removed
/// afterwards; `pct exec` for commands.
pub struct Pct<H> {
    pub host: H,
}

impl<H> Pct<H> {
    fn push_argv(guest: GuestId, src: &str, dest: &str, mode: u32) -> Vec<String> {
        strings(&[
            "pct",
            "push",
            &guest.to_string(),
            src,
            dest,
            "--perms",
            &format!("{mode:04o}"),
        ])
    }

    fn exec_argv(guest: GuestId, argv: &[&str]) -> Vec<String> {
        let mut v = strings(&["pct", "exec", &guest.to_string(), "--"]);
        v.extend(strings(argv));
        v
    }
}

/// Writes `content` into a fresh 0700 directory under the host's temp dir; removed on drop.
struct Staged {
    dir: std::path::PathBuf,
    file: std::path::PathBuf,
}

impl Staged {
    fn new(content: &[u8]) -> Result<Self, TransportError> {
        let dir = std::env::temp_dir().join(format!("phoenix-push-{:016x}", rand::random::<u64>()));
        let err = |e: std::io::Error| TransportError::Spawn {
            program: "pct push".into(),
            reason: format!("stage the file in {}: {e}", dir.display()),
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(err)?;
        let staged = Staged {
            file: dir.join("file"),
            dir: dir.clone(),
        };
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged.file)
            .and_then(|mut f| f.write_all(content))
            .map_err(err)?;
        Ok(staged)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[async_trait]
impl<H: Host> GuestTransport for Pct<H> {
    async fn push(
        &self,
        guest: GuestId,
        dest: &str,
        mode: u32,
        content: &[u8],
    ) -> Result<(), TransportError> {
        let staged = Staged::new(content)?;
        let src = staged.file.to_string_lossy().into_owned();
        // pct push writes in place; a temporary name and a rename keep a running binary whole.
        let tmp = format!("{dest}.phoenix-tmp");
        pushed(
            guest,
            dest,
            self.host
                .run(&Self::push_argv(guest, &src, &tmp, mode), &[])
                .await?,
        )?;
        let mv = Self::exec_argv(guest, &["mv", "-f", &tmp, dest]);
        pushed(guest, dest, self.host.run(&mv, &[]).await?)
    }

    async fn exec(&self, guest: GuestId, argv: &[&str]) -> Result<Exec, TransportError> {
        self.host.run(&Self::exec_argv(guest, argv), &[]).await
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records every command (argv, stdin) and answers from a script, in order.
    #[derive(Default)]
    pub struct Recorder {
        pub calls: Mutex<Vec<(Vec<String>, Vec<u8>)>>,
        pub answers: Mutex<std::collections::VecDeque<Exec>>,
    }

    #[async_trait]
    impl Host for &Recorder {
        async fn run(&self, argv: &[String], stdin: &[u8]) -> Result<Exec, TransportError> {
            self.calls
                .lock()
                .expect("lock")
                .push((argv.to_vec(), stdin.to_vec()));
            Ok(self
                .answers
                .lock()
                .expect("lock")
                .pop_front()
                .unwrap_or_default())
        }
    }

    impl Recorder {
        pub fn argv(&self, i: usize) -> Vec<String> {
            self.calls.lock().expect("lock")[i].0.clone()
        }
    }

    fn id(n: u32) -> GuestId {
        GuestId::try_from(n).expect("id")
    }

    const WRITER: &str =
        r#"umask 077; t="$1.phoenix-tmp"; cat > "$t" && chmod "$2" "$t" && mv -f "$t" "$1""#;

    #[tokio::test]
    async fn lxc_attach_passes_the_path_as_an_argument_and_the_content_on_stdin() {
        let r = Recorder::default();
        let t = Lxc { host: &r };
        t.push(id(101), "/usr/local/bin/x y", 0o755, b"bytes")
            .await
            .expect("push");
        t.exec(id(101), &["systemctl", "restart", "a b"])
            .await
            .expect("exec");
        let attach = [
            "lxc-attach",
            "-n",
            "101",
            "--clear-env",
            "--set-var",
            GUEST_PATH,
            "--",
        ];
        let mut push: Vec<&str> = attach.to_vec();
        push.extend(["sh", "-c", WRITER, "sh", "/usr/local/bin/x y", "0755"]);
        assert_eq!(r.argv(0), push);
        assert_eq!(r.calls.lock().expect("lock")[0].1, b"bytes");
        let mut exec: Vec<&str> = attach.to_vec();
        exec.extend(["systemctl", "restart", "a b"]);
        assert_eq!(r.argv(1), exec);
    }

    #[tokio::test]
    async fn docker_exec_is_interactive_only_for_a_push() {
        let r = Recorder::default();
        let t = Docker { host: &r };
        t.push(id(7), "/run/t", 0o600, b"secret")
            .await
            .expect("push");
        t.exec(id(7), &["true"]).await.expect("exec");
        assert_eq!(
            r.argv(0),
            [
                "docker", "exec", "-i", "--env", GUEST_PATH, "7", "sh", "-c", WRITER, "sh",
                "/run/t", "0600"
            ]
        );
        assert_eq!(
            r.argv(1),
            ["docker", "exec", "--env", GUEST_PATH, "7", "true"]
        );
    }

    #[tokio::test]
    async fn pct_pushes_a_private_host_file_to_a_temporary_name_then_renames() {
        let r = Recorder::default();
        let t = Pct { host: &r };
        t.push(
            id(105),
            "/etc/systemd/system/phoenix-agent.service",
            0o644,
            b"unit",
        )
        .await
        .expect("push");
        let push = r.argv(0);
        let src = push[3].clone();
        assert_eq!(
            push,
            [
                "pct",
                "push",
                "105",
                &src,
                "/etc/systemd/system/phoenix-agent.service.phoenix-tmp",
                "--perms",
                "0644"
            ]
        );
        assert!(!std::path::Path::new(&src).exists(), "staged copy removed");
        assert_eq!(
            r.argv(1),
            [
                "pct",
                "exec",
                "105",
                "--",
                "mv",
                "-f",
                "/etc/systemd/system/phoenix-agent.service.phoenix-tmp",
                "/etc/systemd/system/phoenix-agent.service"
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_write_names_the_file_and_the_guest() {
        let r = Recorder::default();
        r.answers.lock().expect("lock").push_back(Exec {
            status: 1,
            stdout: String::new(),
            stderr: "sh: 1: cannot create /x/y.phoenix-tmp: Directory nonexistent\n".into(),
        });
        let e = Lxc { host: &r }
            .push(id(3), "/x/y", 0o600, b"")
            .await
            .expect_err("fails");
        assert_eq!(
            e.to_string(),
            "write /x/y in guest 3: sh: 1: cannot create /x/y.phoenix-tmp: Directory nonexistent"
        );
    }
}
