//! The coordinator as a service manager runs it: `systemctl stop` (SIGTERM) with agents
//! connected ends within seconds with status 0, and nothing received before is lost;
//! `Type=notify` hears READY=1 only once both ports are up, and STOPPING=1 on stop; an
//! agent stopped past its shutdown deadline leaves its command running, not killed.

use phoenix_tests::spine::{Agent, Coordinator, converged, files_spec, guest_status, write_spec};
use phoenix_tests::{bin, wait_for};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const GUESTS: [u32; 3] = [201, 202, 203];

#[test]
fn sigterm_with_agents_connected_exits_0_fast_and_keeps_reports() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let mut c = Coordinator::start(&base.join("coord"), &[]);
    let mut agents: Vec<Agent> = GUESTS
        .iter()
        .map(|&g| {
            let mut a = Agent::new(base, g);
            let out = a.join(&c.token(g), &[]);
            assert!(out.status.success(), "join {g}: {out:?}");
            a.start();
            a
        })
        .collect();
    let specs: Vec<_> = agents
        .iter()
        .map(|a| (a.guest, files_spec(&a.root, &[("motd", "hello\n")])))
        .collect();
    let spec = base.join("spec.json");
    write_spec(&spec, &specs);
    let out = c.cli(&["apply", "-f", spec.to_str().expect("utf8"), "--no-wait"]);
    assert!(out.status.success(), "apply: {out:?}");
    // Stop the moment the last report is in.
    wait_for(T, "all three reports", || {
        let s = c.status();
        GUESTS.iter().all(|&g| converged(&s, g)).then_some(())
    });

    let (status, took) = c.terminate(Duration::from_secs(5));
    let log = c.log();
    let status = status.unwrap_or_else(|| panic!("still running 5s after SIGTERM:\n{log}"));
    assert!(status.success(), "exit {status:?} after {took:?}:\n{log}");
    assert!(
        agents.iter_mut().all(|a| a.running()),
        "agents must survive the coordinator's stop"
    );

    c.restart();
    let s = c.status();
    for g in GUESTS {
        assert!(converged(&s, g), "report of guest {g} lost: {s}");
    }
    // Each agent saw a clean end and comes back by itself.
    wait_for(T, "agents reconnected", || {
        let s = c.status();
        GUESTS
            .iter()
            .all(|&g| guest_status(&s, g).is_some_and(|r| r["connected"] == true))
            .then_some(())
    });
    eprintln!("stopped in {took:?} with {} agents connected", agents.len());
}

/// The next message on the fake `$NOTIFY_SOCKET`; on a timeout, the daemon's log.
fn next_notify(sock: &UnixDatagram, child: &mut std::process::Child) -> String {
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => {
            let _ = child.kill();
            let mut log = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut log);
            }
            panic!("no notification within {T:?} ({e}); daemon log:\n{log}")
        }
    }
}

#[test]
fn ready_is_sent_only_when_both_ports_accept_and_stopping_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the fake NOTIFY_SOCKET");
    notify.set_read_timeout(Some(T)).expect("timeout");
    let state = tmp.path().join("state");
    let admin = tmp.path().join("admin.sock");
    let mut child = Command::new(bin("phoenix"))
        .arg("--admin-socket")
        .arg(&admin)
        .arg("serve")
        .arg("--state-dir")
        .arg(&state)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("JOURNAL_STREAM", "8:1234")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn phoenix serve");

    let first = next_notify(&notify, &mut child);
    assert_eq!(first.trim(), "READY=1");
    // At that moment both the agent port and the admin socket already accept.
    let addr = std::fs::read_to_string(state.join("coordinator.addr")).expect("address file");
    std::net::TcpStream::connect(addr.trim()).expect("the agent port accepts at READY=1");
    UnixStream::connect(&admin).expect("the admin socket accepts at READY=1");

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert_eq!(next_notify(&notify, &mut child).trim(), "STOPPING=1");
    let out = child.wait_with_output().expect("wait");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}:\n{log}", out.status);
    // Under journald the journal stamps lines; ours must not carry a second timestamp.
    let ready = log
        .lines()
        .find(|l| l.contains("coordinator ready"))
        .unwrap_or_else(|| panic!("no ready line:\n{log}"));
    assert!(
        ready.trim_start().starts_with("INFO"),
        "a timestamp under JOURNAL_STREAM: {ready}"
    );
}

/// The agent's stop deadline (`--shutdown-deadline`, the unit's stop timeout minus a
/// margin): a pass that outlives it is left running, not killed. The agent exits with
/// status 1 after the deadline, the command it started runs to its end on its own, nothing
/// after it was started, and the next agent finds it done and converges.
#[test]
fn sigterm_past_the_shutdown_deadline_exits_and_leaves_the_command_running() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("coord"), &[]);
    let guest = 204;
    let mut a = Agent::new(tmp.path(), guest);
    let out = a.join(&c.token(guest), &[]);
    assert!(out.status.success(), "join: {out:?}");
    let root = a.root.display().to_string();
    let log = tmp.path().join("deadline-agent.log");
    let mut agent = Command::new(bin("phoenix-agent"))
        .arg("--state-dir")
        .arg(a.state())
        .args(["run", "--file-root", &root, "--shutdown-deadline", "1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn phoenix-agent");
    wait_for(T, "agent connected", || {
        guest_status(&c.status(), guest).filter(|g| g["connected"] == true)
    });
    let spec = base_spec(&root);
    let path = tmp.path().join("spec.json");
    write_spec(&path, &[(guest, spec)]);
    let out = c.cli(&["apply", "-f", path.to_str().expect("utf8"), "--no-wait"]);
    assert!(out.status.success(), "apply: {out:?}");
    wait_for(T, "the command to start", || {
        a.root.join("started").exists().then_some(())
    });

    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent.id()).expect("pid"));
    let signalled = std::time::Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = wait_for(T, "the agent to exit", || agent.try_wait().ok().flatten());
    let took = signalled.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // Left at its deadline with a failure status, not killed by a signal and not after
    // waiting for the command.
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM"
    );
    assert!(
        text.contains(
            "the reconcile pass did not finish within 1s; exiting without interrupting it"
        ),
        "{text}"
    );
    assert!(
        !a.root.join("done").exists(),
        "the command ended before the agent"
    );
    // The command outlives the agent and finishes; nothing after it was started.
    wait_for(T, "the command to finish on its own", || {
        a.root.join("done").exists().then_some(())
    });
    assert!(!a.root.join("after").exists());

    a.start();
    wait_for(T, "the next agent to converge", || {
        converged(&c.status(), guest).then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(a.root.join("started")).expect("started"),
        "started\n",
        "the command ran twice"
    );
    assert!(a.root.join("after").exists());
}

/// A command that runs 4 s (between a file before and a file after it), writing
/// `started` (appended, so a second run shows) and then `done`.
fn base_spec(root: &str) -> serde_json::Value {
    serde_json::json!({"resources": [
        {"kind": "file", "path": format!("{root}/before"), "content": "1"},
        {"kind": "exec", "name": "slow",
         "command": ["/bin/sh", "-c", format!("echo started >> {root}/started; sleep 4; echo done > {root}/done")],
         "creates": format!("{root}/done"), "depends_on": [format!("file:{root}/before")]},
        {"kind": "file", "path": format!("{root}/after"), "content": "2",
         "depends_on": ["exec:slow"]},
    ]})
}
