//! The spine end to end: real `phoenix` and `phoenix-agent` binaries on loopback.

use phoenix_tests::spine::{
    Agent, Coordinator, converged, enrolled, files_spec, guest_status, write_spec,
};
use phoenix_tests::wait_for;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn apply(c: &Coordinator, spec: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["apply", "-f", spec.to_str().expect("utf8")];
    if !extra.contains(&"--timeout") {
        args.extend(["--timeout", "30s"]);
    }
    args.extend_from_slice(extra);
    c.cli(&args)
}

#[test]
fn three_agents_enroll_apply_change_and_converge() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let agents: Vec<Agent> = [101, 102, 103]
        .into_iter()
        .map(|g| enrolled(&c, tmp.path(), g))
        .collect();
    let spec = tmp.path().join("spec.json");
    let specs = |v: &str| -> Vec<(u32, serde_json::Value)> {
        agents
            .iter()
            .map(|a| {
                (
                    a.guest,
                    files_spec(&a.root, &[("motd", v), ("app.conf", "port=80\n")]),
                )
            })
            .collect()
    };
    write_spec(&spec, &specs("v1\n"));
    let out = apply(&c, &spec, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "apply: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for a in &agents {
        assert!(
            stdout.contains(&format!("guest {} rev 1: converged: 2 changed", a.guest)),
            "{stdout}"
        );
        assert_eq!(
            std::fs::read_to_string(a.root.join("motd")).expect("motd"),
            "v1\n"
        );
    }

    // Change one file on every guest: exactly that resource changes.
    write_spec(&spec, &specs("v2\n"));
    let out = apply(&c, &spec, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "apply v2: {stdout}");
    assert!(stdout.contains("1 changed, 1 unchanged"), "{stdout}");
    let status = c.status();
    for a in &agents {
        assert_eq!(
            std::fs::read_to_string(a.root.join("motd")).expect("motd"),
            "v2\n"
        );
        assert!(converged(&status, a.guest), "{status:#}");
        let g = guest_status(&status, a.guest).expect("row");
        assert_eq!(g["connected"], true);
        assert!(
            g["facts"]["cpus"].as_u64().unwrap_or(0) > 0,
            "facts reported: {g}"
        );
    }

    // Same state again: no new revision, nothing touched.
    let before = std::fs::metadata(agents[0].root.join("motd"))
        .expect("meta")
        .modified()
        .expect("mtime");
    let out = apply(&c, &spec, &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("unchanged"));
    let after = std::fs::metadata(agents[0].root.join("motd"))
        .expect("meta")
        .modified()
        .expect("mtime");
    assert_eq!(before, after);
}

#[test]
fn dry_run_shows_the_diff_and_mutates_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let a = enrolled(&c, tmp.path(), 201);
    std::fs::write(a.root.join("motd"), "hand edited\n").expect("write");
    let spec = tmp.path().join("spec.json");
    write_spec(
        &spec,
        &[(201, files_spec(&a.root, &[("motd", "managed\n")]))],
    );
    let out = apply(&c, &spec, &["--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("- hand edited") && stdout.contains("+ managed"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(a.root.join("motd")).expect("motd"),
        "hand edited\n"
    );
    let status = c.status();
    let row = guest_status(&status, 201).expect("row");
    assert_eq!(row["wanted_revision"], 0, "dry-run stored nothing");
    assert!(
        row["last_report"].is_null(),
        "a plan is not the guest's last report: {row:#}"
    );
}

fn signal(a: &Agent, sig: nix::sys::signal::Signal) {
    let pid = a.pid().expect("agent running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("signal agent");
}

/// The coordinator crashes after storing a revision and before every agent has it: one
/// agent is frozen (SIGSTOP) so the push is still in flight for it at kill time, asserted
/// by the others having converged while its files are absent. After the restart the
/// frozen agent gets the stored revision and every guest converges; nothing is re-numbered.
#[test]
fn coordinator_crash_mid_push_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = Coordinator::start(&tmp.path().join("c"), &[]);
    let agents: Vec<Agent> = [111, 112, 113]
        .into_iter()
        .map(|g| enrolled(&c, tmp.path(), g))
        .collect();
    let spec = tmp.path().join("spec.json");
    let guests: Vec<_> = agents
        .iter()
        .map(|a| (a.guest, files_spec(&a.root, &[("a", "1\n"), ("b", "2\n")])))
        .collect();
    write_spec(&spec, &guests);
    let (frozen, running) = agents.split_first().expect("agents");
    signal(frozen, nix::sys::signal::Signal::SIGSTOP);
    let out = apply(&c, &spec, &["--no-wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(T, "the running agents to converge", || {
        let s = c.status();
        running.iter().all(|a| converged(&s, a.guest)).then_some(())
    });
    let s = c.status();
    let row = guest_status(&s, frozen.guest).expect("row");
    assert_eq!(row["wanted_revision"], 1, "{row:#}");
    assert!(!converged(&s, frozen.guest), "{row:#}");
    assert!(
        !frozen.root.join("b").exists(),
        "the frozen agent cannot have applied the push"
    );

    c.kill9();
    signal(frozen, nix::sys::signal::Signal::SIGCONT);
    c.restart();
    wait_for(
        T,
        "all guests reconnected and converged after the coordinator restart",
        || {
            let s = c.status();
            // Reports acknowledged before the crash are durable: converged alone can be
            // true before an agent is back.
            agents
                .iter()
                .all(|a| {
                    converged(&s, a.guest)
                        && guest_status(&s, a.guest).is_some_and(|r| r["connected"] == true)
                })
                .then_some(())
        },
    );
    let s = c.status();
    for a in &agents {
        let row = guest_status(&s, a.guest).expect("row");
        assert_eq!(row["connected"], true, "{row:#}");
        assert_eq!(row["applied_revision"], 1, "{row:#}");
        assert_eq!(std::fs::read_to_string(a.root.join("b")).expect("b"), "2\n");
    }
    // The next apply after the restart gets a newer revision than the one before it.
    write_spec(&spec, &[(frozen.guest, files_spec(&frozen.root, &[]))]);
    let out = apply(&c, &spec, &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("guest {} rev 2", frozen.guest)),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn offline_agent_converges_when_it_comes_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let mut a = enrolled(&c, tmp.path(), 121);
    wait_for(T, "agent connected", || {
        guest_status(&c.status(), 121).filter(|g| g["connected"] == true)
    });
    a.kill9();
    wait_for(T, "agent seen offline", || {
        guest_status(&c.status(), 121).filter(|g| g["connected"] == false)
    });
    let spec = tmp.path().join("spec.json");
    write_spec(&spec, &[(121, files_spec(&a.root, &[("late", "x\n")]))]);
    let out = apply(&c, &spec, &["--timeout", "2s"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "apply must say the guest did not converge"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("not connected"), "{stdout}");
    a.start();
    wait_for(T, "offline agent converged", || {
        converged(&c.status(), 121).then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(a.root.join("late")).expect("late"),
        "x\n"
    );
}

#[test]
fn agent_keeps_enforcing_while_the_coordinator_is_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = Coordinator::start(&tmp.path().join("c"), &[]);
    let mut a = enrolled(&c, tmp.path(), 131);
    let spec = tmp.path().join("spec.json");
    write_spec(
        &spec,
        &[(131, files_spec(&a.root, &[("conf", "managed\n")]))],
    );
    assert!(apply(&c, &spec, &[]).status.success());
    c.kill9();
    // Restart the agent too: it must work from its persisted desired state alone.
    a.kill9();
    a.start();
    std::fs::write(a.root.join("conf"), "tampered\n").expect("tamper");
    wait_for(T, "drift repaired without a coordinator", || {
        (std::fs::read_to_string(a.root.join("conf")).ok()? == "managed\n").then_some(())
    });
}

/// The agent is killed with part of a pass done: half of 60 files replaced, the rest not yet.
/// The pass is held at a known point by a guarded exec ordered after the 30th file (it
/// records its pid, then sleeps), so the kill lands mid-pass every run, between two
/// resources; the count of replaced files at kill time is asserted, not assumed. After a
/// restart the agent finishes the pass from its persisted desired state without re-running
/// the exec, and no file is torn or left half-written.
#[test]
fn agent_killed_mid_pass_finishes_the_pass_after_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let mut a = enrolled(&c, tmp.path(), 141);
    let spec = tmp.path().join("spec.json");
    let old = "o".repeat(64 * 1024);
    let new = "n".repeat(64 * 1024);
    let names: Vec<String> = (0..60).map(|i| format!("f{i:02}")).collect();
    let files = |content: &str| -> serde_json::Value {
        let list: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), content)).collect();
        files_spec(&a.root, &list)
    };
    write_spec(&spec, &[(141, files(&old))]);
    assert!(apply(&c, &spec, &[]).status.success());

    // Resources without dependencies run in (kind, name) order: exec sorts before file, so
    // the exec, depending on f29, runs right after it and before f30.
    let barrier = tmp.path().join("barrier.pid");
    let mut desired = files(&new);
    desired["resources"]
        .as_array_mut()
        .expect("resources")
        .push(serde_json::json!({
            "kind": "exec", "name": "hold",
            "command": ["/bin/sh", "-c", format!(
                "echo $$ > {0}.tmp && mv {0}.tmp {0} && exec /bin/sleep 120",
                barrier.display())],
            "creates": barrier.display().to_string(),
            "timeout_seconds": 300,
            "depends_on": [format!("file:{}", a.root.join("f29").display())],
        }));
    write_spec(&spec, &[(141, desired)]);
    assert!(apply(&c, &spec, &["--no-wait"]).status.success());
    let held = wait_for(T, "the pass to reach the exec after f29", || {
        std::fs::read_to_string(&barrier)
            .ok()?
            .trim()
            .parse::<i32>()
            .ok()
    });
    a.kill9();
    // The sleep outlives its SIGKILLed parent; end it so nothing of the test lingers.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(held),
        nix::sys::signal::Signal::SIGKILL,
    );
    let mut replaced = 0;
    for n in &names {
        let s = std::fs::read_to_string(a.root.join(n)).expect("file still there");
        assert!(s == old || s == new, "{n} is torn ({} bytes)", s.len());
        replaced += usize::from(s == new);
    }
    eprintln!("killed after {replaced}/{} files", names.len());
    assert!(
        0 < replaced && replaced < names.len(),
        "the kill must land mid-pass: {replaced}/{} files replaced",
        names.len()
    );

    a.start();
    wait_for(T, "convergence after restart", || {
        converged(&c.status(), 141).then_some(())
    });
    for n in &names {
        assert_eq!(std::fs::read_to_string(a.root.join(n)).expect("file"), new);
    }
    assert_eq!(
        std::fs::read_to_string(&barrier).expect("barrier").trim(),
        held.to_string(),
        "the exec ran again although its `creates` guard exists"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&a.root)
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("phoenix-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn oversized_and_invalid_input_get_clean_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let spec = tmp.path().join("spec.json");
    let big = "x".repeat(9 * 1024 * 1024);
    write_spec(
        &spec,
        &[(151, files_spec(&tmp.path().join("r"), &[("big", &big)]))],
    );
    let out = apply(&c, &spec, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too large"), "{err}");

    // Every error of the file at once, naming the file and the JSON path.
    std::fs::write(
        &spec,
        r#"{"guests": {"0": {"resources": []}, "152": {"resources": [
            {"kind": "file", "path": "relative/path", "content": ""},
            {"kind": "package", "name": "nginx; rm -rf /"}]}}}"#,
    )
    .expect("write");
    let out = apply(&c, &spec, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.json"), "{err}");
    assert!(err.contains("guests.\"0\""), "{err}");
    assert!(err.contains("guests.\"152\""), "{err}");
}

#[test]
fn status_shows_declared_versus_observed_from_phoenix_configs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let _a = enrolled(&c, tmp.path(), 901);
    // A real-format LXC config declaring far more cores than this machine has.
    let etc = tmp.path().join("etc");
    std::fs::create_dir_all(&etc).expect("mkdir");
    std::fs::write(
        etc.join("phoenix_lxc_configs.json"),
        r#"{"lxc_configs": {"901": {"name": "tiny", "cores": 64, "memory_mb": 512,
            "network_config": {"name": "eth0", "bridge": "vmbr0", "ip": "dhcp"}}}}"#,
    )
    .expect("write");
    let out = apply(&c, &etc, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = guest_status(&c.status(), 901).expect("row");
    let mismatches = row["mismatches"].to_string();
    assert!(
        mismatches.contains("cores: declared 64, observed"),
        "{row:#}"
    );
    let table = String::from_utf8_lossy(&c.cli(&["status"]).stdout).to_string();
    assert!(
        table.contains("declared vs observed differ on guest 901"),
        "{table}"
    );
    let table = String::from_utf8_lossy(&c.cli(&["status", "-o", "wide"]).stdout).to_string();
    assert!(
        table.contains("DECLARED VS OBSERVED") && table.contains("cores: declared 64"),
        "{table}"
    );
}

/// `apply` waits only for enrolled guests in its scope: a declared guest that never joined
/// is listed as not enrolled and does not make the apply time out, unless `--wait-all`.
#[test]
fn apply_waits_only_for_enrolled_guests_in_scope() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let a = enrolled(&c, tmp.path(), 101);
    let spec = tmp.path().join("spec.json");
    let never_joined = tmp.path().join("nobody");
    write_spec(
        &spec,
        &[
            (101, files_spec(&a.root, &[("motd", "v1\n")])),
            (102, files_spec(&never_joined, &[("motd", "v1\n")])),
        ],
    );
    let out = apply(&c, &spec, &["--timeout", "20s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("guest 102: new rev 1 (not enrolled"),
        "{stdout}"
    );
    assert!(stdout.contains("guest 101 rev 1: converged"), "{stdout}");

    // --guest: only 101 is pushed; 102's revision stays where it was.
    write_spec(
        &spec,
        &[
            (101, files_spec(&a.root, &[("motd", "v2\n")])),
            (102, files_spec(&never_joined, &[("motd", "v2\n")])),
        ],
    );
    let out = apply(&c, &spec, &["--guest", "101"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("guest 102"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(a.root.join("motd")).expect("motd"),
        "v2\n"
    );
    assert_eq!(
        guest_status(&c.status(), 102).expect("102")["wanted_revision"],
        1
    );

    // --wait-all: the guest that never joined makes it time out, named in the error.
    let out = apply(&c, &spec, &["--wait-all", "--timeout", "3s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("waiting for guests 102"), "{err}");
}

/// `phoenix apply` over more guests with stored reports than the report watch's channel holds
/// (64) used to hang forever, ignoring `--timeout`: the watch replayed every stored report
/// before returning its stream. 100 stored reports, then an apply over all of them.
#[test]
fn apply_over_more_stored_reports_than_the_watch_buffer_returns() {
    use phoenix_coordinator::store::{RedbStore, ReportRecord, Store};
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = Coordinator::start(&tmp.path().join("c"), &[]);
    let a = enrolled(&c, tmp.path(), 101);
    c.kill9();
    {
        let store = RedbStore::open(&c.dir.join("state/phoenix.redb")).expect("open store");
        for g in 1000..1100u32 {
            let report = phoenix_proto::model::ApplyReport {
                revision: 1,
                digest: "0".repeat(64),
                dry_run: false,
                results: Vec::new(),
                duration_micros: 1,
                trigger: "test".into(),
            };
            store
                .put_report(
                    phoenix_proto::model::GuestId::try_from(g).expect("id"),
                    &ReportRecord {
                        seq: 0,
                        event: 0,
                        received_unix: 1,
                        report,
                    },
                )
                .expect("put report");
        }
    }
    c.restart();
    wait_for(T, "agent reconnected", || {
        guest_status(&c.status(), 101).filter(|g| g["connected"] == true)
    });
    let spec = tmp.path().join("spec.json");
    let mut guests = vec![(101, files_spec(&a.root, &[("motd", "many\n")]))];
    for g in 1000..1100u32 {
        guests.push((
            g,
            files_spec(&tmp.path().join("nobody"), &[("motd", "x\n")]),
        ));
    }
    write_spec(&spec, &guests);
    // `timeout` guards the test itself: the old daemon never answered.
    let out = std::process::Command::new("timeout")
        .arg("60")
        .arg(phoenix_tests::bin("phoenix"))
        .arg("--admin-socket")
        .arg(c.socket())
        .args([
            "apply",
            "-f",
            spec.to_str().expect("utf8"),
            "--timeout",
            "30s",
        ])
        .output()
        .expect("run phoenix apply");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(124), "apply hung: {stdout}");
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("guest 101 rev 1: converged"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(a.root.join("motd")).expect("motd"),
        "many\n"
    );
}
