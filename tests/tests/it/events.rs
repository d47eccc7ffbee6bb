//! The event log, history, forget and converge with the real `phoenix` and
//! `phoenix-agent` binaries on loopback.

use phoenix_tests::spine::{
    Coordinator, converged, enrolled, files_spec, guest_status, write_spec,
};
use phoenix_tests::wait_for;
use serde_json::Value;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `phoenix events -o json <args>`, parsed line by line (NDJSON).
fn of_type<'a>(evs: &'a [Value], kind: &str, key: u32) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| {
            e["type"] == kind && e["key"].as_str().and_then(|k| k.parse::<u32>().ok()) == Some(key)
        })
        .collect()
}

fn index(e: &Value) -> u64 {
    e["index"].as_u64().expect("index")
}

#[test]
fn events_resume_after_a_coordinator_restart_with_the_same_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Coordinator::start(dir.path(), &[]);
    let a = enrolled(&c, dir.path(), 301);
    let spec = dir.path().join("spec.json");
    write_spec(&spec, &[(301, files_spec(&a.root, &[("motd", "hello\n")]))]);
    c.apply_ok(&spec);

    let before = c.events(&[]);
    let indexes: Vec<u64> = before.iter().map(index).collect();
    assert!(
        indexes.windows(2).all(|w| w[1] > w[0]),
        "indexes increase: {indexes:?}"
    );
    for e in &before {
        for field in ["index", "time", "topic", "type", "key", "payload"] {
            assert!(e.get(field).is_some(), "{field} missing in {e}");
        }
    }
    let enrolled_ev = of_type(&before, "Enrolled", 301);
    assert_eq!(enrolled_ev.len(), 1, "{before:?}");
    assert_eq!(enrolled_ev[0]["topic"], "Enrollment");
    assert!(
        enrolled_ev[0]["payload"]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "peer address: {}",
        enrolled_ev[0]
    );
    // `join` confirms the new identity with a short session of its own, then `run` opens one.
    let sessions = of_type(&before, "SessionOpened", 301);
    assert_eq!(sessions.len(), 2, "{before:?}");
    assert_eq!(of_type(&before, "SessionEnded", 301).len(), 1, "{before:?}");
    let pushed = of_type(&before, "DesiredPushed", 301);
    assert_eq!(pushed.len(), 1);
    let revision = pushed[0]["payload"]["revision"].as_u64().expect("revision");
    let applied = of_type(&before, "Applied", 301);
    let push_report = applied
        .iter()
        .find(|e| e["payload"]["trigger"] == format!("push r{revision}"))
        .unwrap_or_else(|| panic!("report of the push in {applied:?}"));
    let results = push_report["payload"]["results"]
        .as_array()
        .expect("results");
    assert!(
        results.iter().any(|r| r["status"] == "changed"
            && r["resource"].as_str().is_some_and(|x| x.ends_with("/motd"))),
        "per-resource results: {push_report}"
    );
    assert!(before.iter().any(|e| e["type"] == "CaHealthy"));
    let last = *indexes.last().expect("some events");

    // A crash, not a clean stop: what was recorded must still be there.
    c.restart();
    wait_for(Duration::from_secs(30), "agent reconnected", || {
        of_type(
            &c.events(&["--since", &last.to_string()]),
            "SessionOpened",
            301,
        )
        .first()
        .map(|_| ())
    });
    let after = c.events(&[]);
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "the same events under the same indexes after a restart"
    );
    let since = c.events(&["--since", &last.to_string()]);
    assert!(!since.is_empty());
    assert!(since.iter().all(|e| index(e) > last), "{since:?}");
    assert_eq!(
        since,
        after[before.len()..].to_vec(),
        "--since resumes exactly"
    );

    // Filters: one guest's reports only.
    let reports = c.events(&["--guest", "301", "--topic", "report"]);
    assert!(!reports.is_empty());
    assert!(
        reports
            .iter()
            .all(|e| e["topic"] == "Report" && e["key"] == "301")
    );
    let out = c.cli(&["events", "--topic", "reports"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown topic"));

    // The readable form: one line per event.
    let out = c.cli(&["events", "--guest", "301"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("Session/SessionOpened guest 301: from 127.0.0.1:")),
        "{text}"
    );

    // --follow: a new push shows up on a stream that is already open.
    let mut follower = Command::new(phoenix_tests::bin("phoenix"))
        .arg("--admin-socket")
        .arg(c.socket())
        .args(["events", "--follow", "-o", "json", "--guest", "301"])
        .args(["--since", &index(after.last().expect("events")).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn events --follow");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    write_spec(
        &spec,
        &[(301, files_spec(&a.root, &[("motd", "changed\n")]))],
    );
    c.apply_ok(&spec);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e: &Value| e["type"] == "Applied" && e["payload"]["changed"] == 1)
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).expect("a followed event in time");
        seen.push(serde_json::from_str(&line).expect("json line"));
    }
    assert!(
        seen.iter().any(|e| e["type"] == "DesiredPushed"),
        "{seen:?}"
    );
    let _ = follower.kill();
    let _ = follower.wait();
}

#[test]
fn repairs_made_while_the_coordinator_was_away_arrive_with_the_time_they_happened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Coordinator::start(dir.path(), &[]);
    let a = enrolled(&c, dir.path(), 302);
    let spec = dir.path().join("spec.json");
    write_spec(&spec, &[(302, files_spec(&a.root, &[("conf", "good\n")]))]);
    c.apply_ok(&spec);
    let file = a.root.join("conf");

    let (stopped, _) = c.terminate(Duration::from_secs(20));
    assert!(stopped.is_some(), "coordinator stopped");
    // Two hand edits, each repaired by the agent's drift check (3 s) while nobody listens.
    let mut repairs = Vec::new();
    for edit in ["bad\n", "worse\n"] {
        let edited = now_ms();
        std::fs::write(&file, edit).expect("edit by hand");
        wait_for(
            Duration::from_secs(20),
            "the agent to repair the file",
            || (std::fs::read_to_string(&file).ok()? == "good\n").then_some(()),
        );
        repairs.push((edited, now_ms()));
    }
    std::thread::sleep(Duration::from_secs(2));
    let back = now_ms();
    c.restart();
    let drift = wait_for(
        Duration::from_secs(30),
        "both offline repairs reported",
        || {
            let evs = c.events(&["--guest", "302", "--topic", "Report"]);
            let drift: Vec<Value> = evs
                .into_iter()
                .filter(|e| e["payload"]["trigger"] == "drift" && e["payload"]["changed"] == 1)
                .collect();
            (drift.len() >= 2).then_some(drift)
        },
    );
    assert_eq!(drift.len(), 2, "each repair once: {drift:?}");
    let mut previous = 0;
    for (e, (edited, repaired)) in drift.iter().zip(&repairs) {
        let p = &e["payload"];
        let done = p["done_unix_ms"].as_i64().expect("done time");
        // The pass ends a little after the file is seen repaired (more so on a loaded
        // machine), but always after its edit and before the coordinator came back.
        assert!(
            *edited <= done && done < back && done > previous,
            "repair done at {done}: after the edit {edited} (seen repaired at {repaired}) and \
             the previous repair {previous}, before the coordinator came back at {back}: {e}"
        );
        previous = done;
        assert!(
            p["received_unix_ms"].as_i64().expect("received") >= back,
            "recorded after the coordinator came back: {e}"
        );
        assert_eq!(p["while_disconnected"], true, "{e}");
        assert_eq!(e["type"], "Applied");
    }
    // Acknowledged: the agent's outbox is empty again (nothing is sent twice).
    wait_for(Duration::from_secs(10), "outbox emptied", || {
        let text = std::fs::read_to_string(a.state().join("outbox.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["entries"].as_array()?.is_empty().then_some(())
    });

    let out = c.cli(&["history", "--guest", "302"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let offline: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("drift") && l.contains("while disconnected"))
        .collect();
    assert_eq!(offline.len(), 2, "{text}");
    assert!(text.contains("~ file:"), "what changed: {text}");
}

#[test]
fn forget_drops_the_guest_and_its_certificate_is_refused_from_then_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(dir.path(), &[]);
    let mut gone = enrolled(&c, dir.path(), 303);
    let kept = enrolled(&c, dir.path(), 304);
    let spec = dir.path().join("spec.json");
    write_spec(
        &spec,
        &[
            (303, files_spec(&gone.root, &[("a", "1\n")])),
            (304, files_spec(&kept.root, &[("a", "1\n")])),
        ],
    );
    c.apply_ok(&spec);

    let out = c.cli(&["forget", "--guest", "303"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("was connected; its session was ended"),
        "{text}"
    );
    assert!(text.contains("removed agent record"), "{text}");
    assert!(text.contains("removed desired state"), "{text}");

    let status = c.status();
    assert!(
        guest_status(&status, 303).is_none(),
        "303 left status: {status}"
    );
    assert!(converged(&status, 304), "304 untouched: {status}");

    // The agent keeps trying with its certificate: refused, and the refusal is recorded.
    let refused = wait_for(
        Duration::from_secs(30),
        "the forgotten agent refused",
        || {
            of_type(&c.events(&["--guest", "303"]), "SessionRefused", 303)
                .first()
                .map(|e| (*e).clone())
        },
    );
    assert!(
        refused["payload"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not enrolled")),
        "{refused}"
    );
    assert!(
        guest_status(&c.status(), 303).is_none(),
        "it did not come back"
    );
    let evs = c.events(&["--guest", "303"]);
    let forgotten = of_type(&evs, "GuestForgotten", 303);
    assert_eq!(forgotten.len(), 1);
    assert_eq!(forgotten[0]["payload"]["was_connected"], true);
    assert_eq!(of_type(&evs, "Revoked", 303).len(), 1);
    gone.kill9();

    let out = c.cli(&["forget", "--guest", "303"]);
    assert!(!out.status.success(), "forgetting twice");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not known"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its events stay for the record.
    assert!(!of_type(&c.events(&["--guest", "303"]), "Enrolled", 303).is_empty());
}

#[test]
fn converge_runs_a_pass_on_an_unchanged_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(dir.path(), &[]);
    let mut a = phoenix_tests::spine::Agent::new(dir.path(), 305);
    let out = a.join(&c.token(305), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No drift check within the test: only an explicit request runs a pass.
    a.start_with_drift("3600");
    let spec = dir.path().join("spec.json");
    write_spec(&spec, &[(305, files_spec(&a.root, &[("conf", "good\n")]))]);
    wait_for(Duration::from_secs(30), "agent connected", || {
        guest_status(&c.status(), 305).filter(|g| g["connected"] == true)
    });
    c.apply_ok(&spec);
    let revision = guest_status(&c.status(), 305).expect("status")["wanted_revision"].clone();

    let file = a.root.join("conf");
    std::fs::write(&file, "edited by hand\n").expect("edit");
    // Re-applying the same configs changes nothing: same revision, nothing pushed.
    c.apply_ok(&spec);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        "edited by hand\n"
    );

    let out = c.cli(&["converge", "--guest", "305", "--timeout", "30s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Report/Applied guest 305"), "{text}");
    assert!(
        text.contains(&format!("r{revision} converge: 1 changed")),
        "{text}"
    );
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "good\n");
    assert_eq!(
        guest_status(&c.status(), 305).expect("status")["wanted_revision"],
        revision,
        "no new revision"
    );
    let requested = of_type(&c.events(&["--guest", "305"]), "PassRequested", 305).len();
    assert_eq!(requested, 1);

    // A guest that is not connected cannot run a pass now: said so, non-zero.
    a.kill9();
    wait_for(Duration::from_secs(30), "agent gone", || {
        guest_status(&c.status(), 305).filter(|g| g["connected"] == false)
    });
    let out = c.cli(&["converge", "--guest", "305"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not connected"));
    let out = c.cli(&["converge", "--guest", "399"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no desired state"));
}
