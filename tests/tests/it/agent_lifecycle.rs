//! The agent's lifecycle with real components: a SIGTERM mid-pass (files through the real
//! coordinator, and apt/dpkg in the systemd guest) finishes the resource in progress and
//! exits; a full state directory (a real tmpfs) fails the pass instead of applying what a
//! restart would roll back.

use phoenix_tests::aptrepo::{self, Repo};
use phoenix_tests::guest::Guest;
use phoenix_tests::spine::{Agent, Coordinator, converged, files_spec, guest_status, write_spec};
use phoenix_tests::wait_for;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn enroll(c: &Coordinator, a: &mut Agent) {
    let out = a.join(&c.token(a.guest), &[]);
    assert!(
        out.status.success(),
        "join {}: {}",
        a.guest,
        String::from_utf8_lossy(&out.stderr)
    );
    a.start();
    wait_for(T, "agent connected", || {
        guest_status(&c.status(), a.guest).filter(|g| g["connected"] == true)
    });
}

fn apply(c: &Coordinator, spec: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "apply",
        "-f",
        spec.to_str().expect("utf8"),
        "--timeout",
        "30s",
    ];
    args.extend_from_slice(extra);
    c.cli(&args)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn sigterm_mid_pass_finishes_the_command_in_progress_and_exits_zero() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let mut a = Agent::new(tmp.path(), 151);
    enroll(&c, &mut a);
    let root = a.root.display().to_string();
    let spec = tmp.path().join("spec.json");
    write_spec(
        &spec,
        &[(
            151,
            json!({"resources": [
                {"kind": "file", "path": format!("{root}/before"), "content": "1"},
                // Runs 3 s, so the signal surely comes while it runs.
                {"kind": "exec", "name": "slow",
                 "command": ["/bin/sh", "-c", format!("echo started > {root}/started; sleep 3; echo done > {root}/done")],
                 "creates": format!("{root}/done"), "depends_on": [format!("file:{root}/before")]},
                {"kind": "file", "path": format!("{root}/after"), "content": "2",
                 "depends_on": ["exec:slow"]},
            ]}),
        )],
    );
    let out = apply(&c, &spec, &["--no-wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(T, "the command to start", || {
        a.root.join("started").exists().then_some(())
    });
    let status = a.terminate(T).expect("the agent exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", a.log());
    // The command was not killed: it ran to its end, and the agent waited for it.
    assert_eq!(read(&a.root.join("done")), "done\n", "{}", a.log());
    // What came after it was never started.
    assert!(!a.root.join("after").exists());
    let log = a.log();
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("reconcile pass finished; exiting"), "{log}");
}

#[test]
fn sigterm_during_apt_lets_dpkg_finish_and_the_agent_exit() {
    if !phoenix_tests::require(
        "dpkg-deb, dpkg-scanpackages, apt-ftparchive and gpg",
        aptrepo::tools_present(),
    ) {
        return;
    }
    // A postinst long enough to be caught in the middle of.
    let repo = Repo::build_with_postinst(
        &[("phoenix-slow", "1.0")],
        &[(
            "phoenix-slow",
            "#!/bin/sh\nsleep 5\necho configured > /var/lib/phoenix-slow-done\n",
        )],
    );
    let Some(g) = Guest::boot("lifecycle-apt", &[(repo.path(), "/srv/repo")]) else {
        return;
    };
    let spec = json!({"resources": [
        {"kind": "apt_source", "name": "phoenix-test", "uris": ["file:///srv/repo"],
         "suites": ["./"], "signing_key": {"armored": repo.key}},
        {"kind": "package", "name": "phoenix-slow", "depends_on": ["apt_source:phoenix-test"]},
        {"kind": "file", "path": "/etc/phoenix-after", "content": "after\n",
         "depends_on": ["package:phoenix-slow"]},
    ]});
    g.write("/root/spec.json", spec.to_string().as_bytes());
    g.ok("setsid sh -c '/usr/local/bin/phoenix-agent apply -f /root/spec.json --json >/root/out.json 2>/root/err.log & echo $! >/root/pid; wait $!; echo $? >/root/rc' </dev/null >/dev/null 2>&1 &");
    wait_for(Duration::from_secs(180), "the postinst to run", || {
        // No procps in the guest: look through /proc ([.] keeps grep from finding itself).
        if g.sh("grep -qs 'phoenix-slow[.]postinst' /proc/[0-9]*/cmdline")
            .status
            .success()
        {
            return Some(());
        }
        let o = g.sh("cat /root/rc && cat /root/out.json");
        assert!(
            !o.status.success(),
            "the agent ended before the postinst ran: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        None
    });
    let before =
        g.ok("dpkg-query -W -f='${db:Status-Abbrev}' phoenix-slow 2>/dev/null || echo none");
    // Unpacked, being configured: the signal comes in the middle of dpkg's work.
    assert!(
        ["iU", "iF"].contains(&before.trim()),
        "dpkg status when the signal came: {before:?}"
    );
    g.ok("kill -TERM $(cat /root/pid)");
    let rc = wait_for(Duration::from_secs(60), "the agent to exit", || {
        let o = g.sh("cat /root/rc");
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    });
    let err = g.ok("cat /root/err.log");
    // Not converged (the file after the package was never started), not killed (143).
    assert_eq!(rc, "2", "{err}");
    assert_eq!(g.ok("cat /var/lib/phoenix-slow-done"), "configured");
    assert_eq!(
        g.ok("dpkg-query -W -f='${db:Status-Abbrev}' phoenix-slow")
            .trim(),
        "ii"
    );
    assert_eq!(g.ok("dpkg --audit"), "", "dpkg left mid-transaction");
    let report: serde_json::Value =
        serde_json::from_str(&g.ok("cat /root/out.json")).expect("report json");
    let result = |id: &str| {
        report["results"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["resource"] == id).cloned())
            .unwrap_or_default()
    };
    assert_eq!(
        result("package:phoenix-slow")["status"],
        "changed",
        "{report}"
    );
    let after = result("file:/etc/phoenix-after");
    assert_eq!(after["status"], "skipped", "{report}");
    assert!(
        after["message"]
            .as_str()
            .unwrap_or_default()
            .contains("shutting down"),
        "{report}"
    );
    assert!(!g.sh("test -e /etc/phoenix-after").status.success());
}

/// A tmpfs mounted on the agent's state directory for the test; unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        phoenix_tests::require("mounting a tmpfs (tests run as root)", ok)
            .then(|| Tmpfs(dir.into()))
    }

    /// Fills it to the last byte.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).expect("create filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let byte = [0u8; 1];
        while f.write_all(&byte).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).expect("remove filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_state_dir_fails_the_pass_and_a_restart_never_rolls_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let mut a = Agent::new(tmp.path(), 161);
    let Some(fs) = Tmpfs::mount(&a.state(), "1m") else {
        return;
    };
    enroll(&c, &mut a);
    let spec = tmp.path().join("spec.json");
    let conf = a.root.join("conf");
    // Big enough that the new desired state cannot fit where the old one was.
    let content = |v: &str| format!("{v}\n{}", "x".repeat(64 * 1024));
    write_spec(
        &spec,
        &[(161, files_spec(&a.root, &[("conf", &content("v1"))]))],
    );
    assert!(apply(&c, &spec, &[]).status.success());

    fs.fill();
    write_spec(
        &spec,
        &[(161, files_spec(&a.root, &[("conf", &content("v2"))]))],
    );
    let out = apply(&c, &spec, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "apply claimed success:\n{stdout}");
    assert!(
        stdout.contains("agent:desired-state")
            && stdout.contains(&a.state().join("desired.json").display().to_string())
            && stdout.contains("No space left on device"),
        "{stdout}"
    );
    assert!(
        read(&conf).starts_with("v1\n"),
        "revision 2 was applied without being saved"
    );
    let g = guest_status(&c.status(), 161).expect("row");
    assert_eq!(g["applied_revision"], 1, "{g}");
    assert_eq!(g["converged"], false, "{g}");
    assert_eq!(
        g["last_report"]["results"][0]["status"], "failed",
        "the coordinator shows the failure: {g}"
    );

    // Restarted with the disk still full: it enforces what it saved (revision 1).
    a.kill9();
    a.start();
    wait_for(T, "agent reconnected", || {
        guest_status(&c.status(), 161).filter(|g| g["connected"] == true)
    });
    std::thread::sleep(Duration::from_secs(4));
    assert!(read(&conf).starts_with("v1\n"));

    // Room again: a retry saves and applies revision 2, and no restart takes it back.
    fs.free();
    wait_for(
        Duration::from_secs(90),
        "revision 2 after the disk has room",
        || converged(&c.status(), 161).then_some(()),
    );
    assert!(read(&conf).starts_with("v2\n"));
    a.kill9();
    a.start();
    wait_for(T, "agent reconnected", || {
        guest_status(&c.status(), 161).filter(|g| g["connected"] == true)
    });
    // Past a drift tick (3 s in these tests) of the restarted agent.
    std::thread::sleep(Duration::from_secs(5));
    assert!(read(&conf).starts_with("v2\n"), "rolled back after restart");
    assert!(converged(&c.status(), 161));
}

/// `phoenix-agent run` on a guest nobody joined exits 78 (EX_CONFIG), the status its unit
/// lists in RestartPreventExitStatus, and says what to run; any other failure stays 1.
#[test]
fn run_without_enrollment_exits_78_with_the_join_advice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(phoenix_tests::bin("phoenix-agent"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("run")
        .output()
        .expect("run phoenix-agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("this agent is not enrolled") && stderr.contains("phoenix-agent join"),
        "{stderr}"
    );
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/debian/phoenix-agent.service"),
    )
    .expect("read the agent unit");
    assert!(unit.contains("RestartPreventExitStatus=78"), "{unit}");
}

/// The agent's config file: its `state-dir` is used (the not-enrolled error names it), a
/// flag wins over it, and an unknown key stops the agent with 78 naming file and key.
#[test]
fn the_agent_config_file_is_read_flags_win_and_typos_stop_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let from_file = dir.path().join("from-file");
    let from_flag = dir.path().join("from-flag");
    let conf = dir.path().join("agent.toml");
    std::fs::write(
        &conf,
        format!(
            "state-dir = \"{}\"\ndrift-interval = 60\n",
            from_file.display()
        ),
    )
    .expect("write config");
    let run = |extra: &[&str]| {
        let out = Command::new(phoenix_tests::bin("phoenix-agent"))
            .arg("--config")
            .arg(&conf)
            .args(extra)
            .arg("run")
            .output()
            .expect("run phoenix-agent");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains(&from_file.display().to_string()), "{err}");
    let flag = from_flag.display().to_string();
    let (code, err) = run(&["--state-dir", &flag]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains(&flag) && !err.contains("from-file"), "{err}");

    std::fs::write(&conf, "drift-intervall = 60\n").expect("write config");
    let (code, err) = run(&[]);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains(&conf.display().to_string())
            && err.contains("drift-intervall")
            && err.contains("unknown field"),
        "{err}"
    );
}
