//! Real LXC containers for `phoenix guest install` over the plain-LXC transport: privileged,
//! systemd as init, a copy of the guest rootfs tarball from tests/setup/30-guest.sh in
//! /var/lib/lxc/<id> (where `lxc-attach -n <id>` finds it, as Proxmox keeps its containers).
//!
//! Networking: `lxc.net.0.type = none`, the container shares the host's network namespace.
//! The agent must reach the coordinator the test starts on 127.0.0.1, and this is the one
//! setup that needs no bridge, veth, addresses or lxc-net (dnsmasq) on a machine shared with
//! other tests; what is under test is the transport and the install, not guest networking.
//! Stopped and removed on drop, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub const LXC_ROOT: &str = "/var/lib/lxc";

/// The rootfs tarball: $PHOENIX_GUEST_TARBALL (35-lxc.sh) or 30-guest.sh's cache path.
pub fn tarball() -> PathBuf {
    std::env::var_os("PHOENIX_GUEST_TARBALL")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/phoenix/guest-bookworm-1.tar".into())
}

/// True when this machine can run the containers (the tools, the tarball, root).
pub fn available() -> bool {
    let tool = Command::new("lxc-attach")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    tool && tarball().is_file() && nix::unistd::geteuid().is_root()
}

pub struct LxcGuest {
    pub id: u32,
    dir: PathBuf,
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl LxcGuest {
    /// Unpacks the rootfs, writes the config and boots the container.
    pub fn create(id: u32) -> Self {
        let dir = Path::new(LXC_ROOT).join(id.to_string());
        // A container left by a killed earlier run.
        let _ = run("lxc-stop", &["-n", &id.to_string(), "-k"]);
        let _ = std::fs::remove_dir_all(&dir);
        let guest = LxcGuest { id, dir };
        let rootfs = guest.rootfs();
        std::fs::create_dir_all(&rootfs).expect("mkdir rootfs");
        ok(
            "tar",
            &[
                "-C",
                &rootfs.to_string_lossy(),
                "-xf",
                &tarball().to_string_lossy(),
            ],
        );
        let config = format!(
            "lxc.uts.name = guest{id}\n\
             lxc.rootfs.path = dir:{}\n\
             lxc.apparmor.profile = unconfined\n\
             lxc.net.0.type = none\n\
             lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed\n\
             lxc.init.cmd = /lib/systemd/systemd\n\
             lxc.tty.max = 0\n\
             lxc.pty.max = 16\n",
            rootfs.display()
        );
        std::fs::write(guest.dir.join("config"), config).expect("write lxc config");
        guest.start();
        guest
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Boots and waits for systemd to answer (its units may still be starting).
    pub fn start(&self) {
        ok("lxc-start", &["-n", &self.id.to_string(), "-d"]);
        crate::wait_for(Duration::from_secs(60), "guest systemd to answer", || {
            let out = self.attach(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            matches!(state.as_str(), "starting" | "running" | "degraded").then_some(())
        });
    }

    /// A clean shutdown: systemd in the guest stops its units.
    pub fn stop(&self) {
        ok("lxc-stop", &["-n", &self.id.to_string(), "-t", "30"]);
    }

    pub fn attach(&self, argv: &[&str]) -> Output {
        let id = self.id.to_string();
        let mut args = vec![
            "-n",
            &id,
            "--clear-env",
            "--set-var",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "--",
        ];
        args.extend(argv);
        run("lxc-attach", &args)
    }

    /// stdout of `argv` in the guest, which must succeed.
    pub fn sh(&self, argv: &[&str]) -> String {
        let out = self.attach(argv);
        assert!(
            out.status.success(),
            "guest {}: {argv:?}: {}",
            self.id,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for LxcGuest {
    fn drop(&mut self) {
        let _ = run("lxc-stop", &["-n", &self.id.to_string(), "-k"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
