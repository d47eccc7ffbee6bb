//! What `phoenix apply`, `plan`, `validate` and `status` print, run as real binaries
//! against real agents: failed resources with their reasons inline, guests in id order,
//! `-o json` that a program can read line by line, plans that say what changes, a status
//! table that fits 80 columns, and a progress line when a terminal is attached.

use phoenix_tests::spine::{Agent, Coordinator, enrolled, files_spec, write_spec};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Guest 102 runs a command that fails with `reason` on stderr, and a file that depends
/// on it; the others get plain files.
fn fleet_spec(path: &Path, agents: &[&Agent], motd: &str, reason: &str) {
    let mut guests = Vec::new();
    for a in agents {
        let mut spec = files_spec(&a.root, &[("motd", motd)]);
        if a.guest == 102 {
            spec["resources"][0]["depends_on"] = json!(["exec:boom"]);
            spec["resources"]
                .as_array_mut()
                .expect("resources")
                .push(json!({
                    "kind": "exec",
                    "name": "boom",
                    "command": ["/bin/sh", "-c", format!("echo '{reason}' >&2; exit 3")],
                    "creates": a.root.join("never").display().to_string(),
                }));
        }
        guests.push((a.guest, spec));
    }
    // Declared in the configs but never enrolled: shown, not waited for.
    guests.push((
        104,
        files_spec(Path::new("/nonexistent"), &[("motd", "x\n")]),
    ));
    write_spec(path, &guests);
}

/// Every stdout line of a `-o json` apply or plan, parsed.
fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn apply_plan_validate_and_status_tell_the_truth() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let a101 = enrolled(&c, tmp.path(), 101);
    let a102 = enrolled(&c, tmp.path(), 102);
    let a103 = enrolled(&c, tmp.path(), 103);
    let spec = tmp.path().join("spec.json");
    let file = spec.to_str().expect("utf8");
    fleet_spec(&spec, &[&a101, &a102, &a103], "one\n", "disk on fire");

    // Text: pushes in id order, then each report as it comes, the reason inline.
    let out = c.cli(&["apply", "-f", file, "--timeout", "30s"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    let pushed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("guest ") && l.contains(": new rev"))
        .map(|l| &l[..9])
        .collect();
    assert_eq!(
        pushed,
        ["guest 101", "guest 102", "guest 103", "guest 104"],
        "{stdout}"
    );
    assert!(
        stdout.contains("guest 104: new rev 1 (not enrolled: will converge once it joins)"),
        "{stdout}"
    );
    let failed_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("failed") && l.contains("exec:boom"))
        .unwrap_or_else(|| panic!("no failed line: {stdout}"));
    assert!(failed_line.contains("disk on fire"), "{failed_line}");
    assert!(
        stdout.contains("skipped   file:") && stdout.contains("dependency exec:boom"),
        "{stdout}"
    );
    assert!(stderr.contains("guests not converged: 102"), "{stderr}");

    // JSON: one object per line, nothing else on stdout.
    fleet_spec(&spec, &[&a101, &a102, &a103], "two\n", "still burning");
    let out = c.cli(&["apply", "-f", file, "--timeout", "30s", "-o", "json"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    let ev = events(&stdout);
    let pushed: Vec<u64> = ev
        .iter()
        .filter(|e| e["event"] == "pushed")
        .map(|e| e["guest"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(pushed, [101, 102, 103, 104]);
    let p101 = ev
        .iter()
        .find(|e| e["event"] == "pushed" && e["guest"] == 101)
        .expect("101");
    assert_eq!(p101["changed"], true);
    let diff: Vec<&str> = p101["diff"]
        .as_array()
        .expect("diff")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(diff.len(), 2, "{diff:?}");
    assert!(diff[0].starts_with("~ file:"), "{diff:?}");
    assert_eq!(diff[1], "    content: 1 → 1 lines (+1 -1)");
    let r102 = ev
        .iter()
        .find(|e| e["event"] == "report" && e["guest"] == 102)
        .expect("report 102");
    assert_eq!(r102["verdict"], "not_converged");
    assert_eq!(r102["counts"]["failed"], 1);
    let boom = r102["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["resource"] == "exec:boom")
        .expect("exec:boom");
    assert_eq!(boom["status"], "failed");
    assert!(
        boom["message"]
            .as_str()
            .unwrap_or("")
            .contains("still burning"),
        "{boom}"
    );
    let done = ev.last().expect("events");
    assert_eq!(done["event"], "done");
    assert_eq!(done["ok"], false);
    assert_eq!(done["not_converged"], json!([102]));
    assert_eq!(done["converged"].as_array().map(Vec::len), Some(2));

    // A plan names what would change and changes nothing.
    fleet_spec(
        &spec,
        &[&a101, &a102, &a103],
        "two\nthree\n",
        "still burning",
    );
    let out = c.cli(&["plan", "-f", file, "--timeout", "30s", "-o", "json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let ev = events(&stdout);
    let p101 = ev
        .iter()
        .find(|e| e["event"] == "planned" && e["guest"] == 101)
        .expect("101");
    assert_eq!(
        p101["diff"][1], "    content: 1 → 2 lines (+1 -0)",
        "{p101}"
    );
    assert!(p101["revision"].is_null(), "{p101}");
    let plan101 = ev
        .iter()
        .find(|e| e["event"] == "report" && e["guest"] == 101)
        .expect("agent plan of 101");
    assert_eq!(plan101["verdict"], "plan");
    assert_eq!(
        std::fs::read_to_string(a101.root.join("motd")).expect("motd"),
        "two\n",
        "a plan changed the guest"
    );

    // validate -o json: one document, errors with file and path.
    let out = c.cli(&["validate", file, "-o", "json"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{stdout}");
    let doc: Value = serde_json::from_str(&stdout).expect("validate json");
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["guests"].as_array().map(Vec::len), Some(4));
    let broken = tmp.path().join("broken.json");
    std::fs::write(
        &broken,
        r#"{"guests": {"101": {"resources": [{"kind": "file", "path": "relative"}]}}}"#,
    )
    .expect("write");
    let out = c.cli(&["validate", broken.to_str().expect("utf8"), "-o", "json"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let doc: Value = serde_json::from_str(&stdout).expect("validate json on error");
    assert_eq!(doc["ok"], false);
    let err = &doc["errors"][0];
    assert!(
        err["file"].as_str().unwrap_or("").ends_with("broken.json"),
        "{doc}"
    );
    assert!(!err["message"].as_str().unwrap_or("").is_empty(), "{doc}");

    // status: fits 80 columns; -o wide has the rest.
    let out = c.cli(&["status"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    for line in stdout.lines() {
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line}",
            line.chars().count()
        );
    }
    let rows: Vec<&str> = stdout.lines().skip(1).map(|l| &l[..3]).collect();
    assert_eq!(rows, ["101", "102", "103", "104"], "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("102") && l.contains("failed")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("104") && l.contains("not enrolled")),
        "{stdout}"
    );
    let out = c.cli(&["status", "-o", "wide"]);
    let (stdout, _) = text(&out);
    for col in ["TRIGGER", "AGENT", "DECLARED VS OBSERVED"] {
        assert!(
            stdout.lines().next().unwrap_or("").contains(col),
            "{stdout}"
        );
    }
    drop((a101, a102, a103));
}

/// On a terminal (a pty from util-linux `script`), a progress line is redrawn while
/// guests are outstanding; with stdout a pipe (above) there is none.
#[test]
fn a_terminal_gets_a_progress_line_while_guests_are_outstanding() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let mut a = enrolled(&c, tmp.path(), 101);
    // Enrolled but away: apply waits for it until the timeout.
    a.kill9();
    let spec = tmp.path().join("spec.json");
    write_spec(&spec, &[(101, files_spec(&a.root, &[("motd", "hi\n")]))]);
    let cmd = format!(
        "{} --admin-socket {} apply -f {} --timeout 3s",
        phoenix_tests::bin("phoenix").display(),
        c.socket().display(),
        spec.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("run script");
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("\r\x1b[2K[0/1 reported] waiting for 101 ("),
        "no progress line: {stdout:?}"
    );
    assert!(
        stdout.contains("timed out after 3s waiting for guests 101"),
        "{stdout:?}"
    );
}
