//! A fleet whose answers exceed the 8 MiB message limit: `status`, `agents` and `apply`
//! still work, because the daemon streams them (one guest per message, an apply in parts).

use phoenix_coordinator::store::{AgentRecord, RedbStore, ReportRecord, Store, TokenRecord};
use phoenix_proto::model::{ApplyReport, GuestId, ResourceResult, Status};
use phoenix_tests::spine::{Agent, Coordinator, files_spec, guest_status, write_spec};
use phoenix_tests::wait_for;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
/// Enrolled guests with a stored report of about 50 kB each: 10 MB of last reports.
const REPORTING: std::ops::Range<u32> = 1000..1200;
/// Guests not enrolled, each with a desired state of about 50 kB: a 10 MB apply.
const PUSHED: std::ops::Range<u32> = 3000..3200;
const BIG: usize = 50_000;

fn id(g: u32) -> GuestId {
    GuestId::try_from(g).expect("guest id")
}

/// Enrolls `REPORTING` in the stopped daemon's store, each with a big last report.
fn seed(store: &RedbStore) {
    for g in REPORTING {
        let hash = format!("seed-{g}");
        store
            .put_token(
                &hash,
                &TokenRecord {
                    guest: id(g),
                    expires_unix: i64::MAX,
                    used_unix: None,
                    issued_serial: None,
                    replace: false,
                },
            )
            .expect("put token");
        let rec = AgentRecord {
            serial: format!("{g:x}"),
            agent_version: "seeded".into(),
            ..AgentRecord::default()
        };
        store.enroll(&hash, id(g), 1, None, &rec).expect("enroll");
        let report = ApplyReport {
            revision: 1,
            digest: "0".repeat(64),
            dry_run: false,
            results: vec![ResourceResult {
                resource: "file:/big".into(),
                status: Status::Failed,
                message: "x".repeat(BIG),
                duration_micros: 1,
                diff: String::new(),
            }],
            duration_micros: 1,
            trigger: "push".into(),
        };
        let rec = ReportRecord {
            seq: 0,
            event: 0,
            received_unix: 1,
            report,
        };
        store.put_report(id(g), &rec).expect("put report");
    }
}

fn ok(out: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        &stdout[..stdout.len().min(2000)],
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn status_agents_and_apply_work_beyond_the_message_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = Coordinator::start(&tmp.path().join("c"), &[]);
    let mut a = Agent::new(tmp.path(), 101);
    ok(&a.join(&c.token(101), &[]), "join");
    c.kill9();
    seed(&RedbStore::open(&c.dir.join("state/phoenix.redb")).expect("open store"));
    c.restart();
    a.start();
    wait_for(T, "agent connected", || {
        guest_status(&c.status(), 101).filter(|g| g["connected"] == true)
    });

    let status = c.status();
    let rows = status.as_array().expect("status rows");
    assert_eq!(rows.len(), REPORTING.len() + 1);
    let json_bytes = serde_json::to_vec(&status).expect("json").len();
    assert!(json_bytes > 8 << 20, "status is {json_bytes} bytes");
    let last = guest_status(&status, REPORTING.end - 1).expect("last seeded guest");
    assert_eq!(
        last["last_report"]["results"][0]["message"]
            .as_str()
            .map(str::len),
        Some(BIG)
    );

    let agents: serde_json::Value =
        serde_json::from_str(&ok(&c.cli(&["agents", "-o", "json"]), "agents")).expect("json");
    assert_eq!(
        agents.as_array().map(Vec::len),
        Some(REPORTING.len() + 1),
        "agents"
    );
    let table = ok(&c.cli(&["status"]), "status table");
    assert!(
        table.contains(&format!("\n{}", REPORTING.end - 1)),
        "status table"
    );

    let spec = tmp.path().join("spec.json");
    let mut guests = vec![(101, files_spec(&a.root, &[("motd", "fleet\n")]))];
    let filler = "y".repeat(BIG);
    for g in PUSHED {
        guests.push((g, files_spec(&tmp.path().join("nobody"), &[("f", &filler)])));
    }
    write_spec(&spec, &guests);
    assert!(std::fs::metadata(&spec).expect("spec").len() > 8 << 20);
    let out = c.cli(&[
        "apply",
        "-f",
        spec.to_str().expect("utf8"),
        "--timeout",
        "30s",
    ]);
    let stdout = ok(&out, "apply");
    assert!(stdout.contains("guest 101 rev 1: converged"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "guest {}: new rev 1 (not enrolled: will converge once it joins)",
            PUSHED.end - 1
        )),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(a.root.join("motd")).expect("motd"),
        "fleet\n"
    );
    let status = c.status();
    for g in PUSHED {
        let row = guest_status(&status, g).expect("pushed guest listed");
        assert_eq!(row["wanted_revision"], 1, "guest {g}");
    }
}
