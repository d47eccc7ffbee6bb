//! `phoenix apply --force` with the real binaries: a pass now on every guest whose
//! revision the apply leaves unchanged, followed like any apply; plain `apply` on an
//! unchanged revision runs none.

use phoenix_tests::spine::{Agent, Coordinator, files_spec, guest_status, write_spec};
use phoenix_tests::wait_for;
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Report events of `guest`, oldest first.
fn reports(c: &Coordinator, guest: u32) -> Vec<Value> {
    c.events(&["--guest", &guest.to_string(), "--topic", "Report"])
}

#[test]
fn apply_force_repairs_drift_now_and_plain_apply_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(dir.path(), &[]);
    let mut a = Agent::new(dir.path(), 341);
    let out = a.join(&c.token(341), &[]);
    assert!(out.status.success(), "{}", text(&out));
    // No drift check within the test: only a push or a request runs a pass.
    a.start_with_drift("3600");
    wait_for(Duration::from_secs(30), "agent connected", || {
        guest_status(&c.status(), 341).filter(|g| g["connected"] == true)
    });
    let spec = dir.path().join("spec.json");
    write_spec(&spec, &[(341, files_spec(&a.root, &[("conf", "good\n")]))]);
    c.apply_ok(&spec);
    let file = a.root.join("conf");
    std::fs::write(&file, "edited by hand\n").expect("edit");
    let seen = reports(&c, 341).len();

    // Same configs, same revision: plain apply runs no pass (it shows the last report).
    let plain = c.apply_ok(&spec);
    assert!(plain.contains("unchanged rev"), "{plain}");
    assert!(!plain.contains("--force"), "{plain}");
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        "edited by hand\n"
    );
    assert_eq!(reports(&c, 341).len(), seen, "plain apply ran a pass");

    let lines = c.apply_force(&spec);
    let spec_path = spec.to_str().expect("utf8");
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "forced" && l["guest"] == 341 && l["refused"].is_null()),
        "{lines:?}"
    );
    let report = lines
        .iter()
        .find(|l| l["event"] == "report" && l["guest"] == 341)
        .unwrap_or_else(|| panic!("no report in {lines:?}"));
    assert_eq!(report["trigger"], "converge", "{report}");
    assert_eq!(report["verdict"], "converged", "{report}");
    assert_eq!(report["counts"]["changed"], 1, "{report}");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "good\n");
    let after = reports(&c, 341);
    assert_eq!(after.len(), seen + 1, "one forced pass");
    assert_eq!(after[seen]["payload"]["trigger"], "converge");

    // A guest that cannot run a pass now fails the forced apply, said so.
    a.kill9();
    wait_for(Duration::from_secs(30), "agent gone", || {
        guest_status(&c.status(), 341).filter(|g| g["connected"] == false)
    });
    let out = c.cli(&["apply", "-f", spec_path, "--force", "--timeout", "20s"]);
    assert!(!out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("guest 341: no pass forced:"), "{t}");
    assert!(t.contains("not connected"), "{t}");
    assert!(t.contains("no pass could be forced on guests 341"), "{t}");
}
