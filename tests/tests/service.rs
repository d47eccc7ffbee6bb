//! The coordinator as a service manager runs it: `systemctl stop` (SIGTERM) with agents
//! connected ends within seconds with status 0, and nothing received before is lost.

use phoenix_tests::spine::{Agent, Coordinator, converged, files_spec, guest_status, write_spec};
use phoenix_tests::wait_for;
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
