//! Services against a real systemd (PID 1 in a Debian container, tests/src/guest.rs):
//! created, changed (restarted once), restarted when a file it depends on changes, left
//! alone by an unchanged apply, disabled and stopped, removed. Bad input is refused before
//! anything changes.

use phoenix_tests::guest::Guest;
use serde_json::{Value, json};

const UNIT: &str = "demo.service";
const CONF: &str = "/etc/demo/demo.conf";

/// The service logs each start and reload to files, so "restarted once" is counted, not
/// inferred.
fn spec(sleep: &str, conf: &str, enabled: bool, state: &str) -> Value {
    json!({"resources": [
        {"kind": "file", "path": CONF, "content": conf},
        {"kind": "service", "name": UNIT,
         "unit": {
            "description": "Phoenix demo",
            "exec_start": ["/bin/sh", "-c", format!("echo start >> /var/lib/demo-starts; exec sleep {sleep}")],
            "exec_reload": ["/bin/sh", "-c", "echo reload >> /var/lib/demo-reloads"],
            "environment": {"DEMO_MODE": "test 100%"},
            "restart": "on-failure",
            "limits": {"tasks_max": 32}
         },
         "enabled": enabled, "state": state,
         "restart_on": [format!("file:{CONF}")],
         "depends_on": [format!("file:{CONF}")]}
    ]})
}

fn starts(g: &Guest) -> usize {
    g.ok("cat /var/lib/demo-starts 2>/dev/null || true")
        .lines()
        .count()
}

#[test]
fn service_lifecycle_against_real_systemd() {
    let Some(g) = Guest::boot("systemd", &[]) else {
        return;
    };
    let svc = format!("service:{UNIT}");
    let file = format!("file:{CONF}");

    // Created: unit written, enabled, started.
    g.apply(&spec("1000", "v1", true, "running"))
        .assert(&[(&file, "changed"), (&svc, "changed")]);
    assert_eq!(g.unit_prop(UNIT, "ActiveState"), "active");
    assert_eq!(g.unit_prop(UNIT, "UnitFileState"), "enabled");
    assert_eq!(starts(&g), 1);
    assert_eq!(
        g.ok("tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value demo.service)/environ | grep DEMO_MODE"),
        "DEMO_MODE=test 100%"
    );

    // Unchanged: nothing touched, no restart, no daemon-reload.
    let id = g.unit_prop(UNIT, "InvocationID");
    let paths = ["/etc/systemd/system/demo.service", CONF];
    let before = g.mtimes(&paths);
    g.apply(&spec("1000", "v1", true, "running"))
        .assert_all_unchanged();
    assert_eq!(g.mtimes(&paths), before, "unit and file untouched");
    assert_eq!(g.unit_prop(UNIT, "InvocationID"), id, "not restarted");
    assert_eq!(starts(&g), 1);

    // Changed unit: restarted exactly once.
    g.apply(&spec("2000", "v1", true, "running"))
        .assert(&[(&file, "unchanged"), (&svc, "changed")]);
    assert_eq!(starts(&g), 2);
    assert_eq!(
        g.ok("tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value demo.service)/cmdline"),
        "sleep 2000"
    );
    assert_eq!(g.unit_prop(UNIT, "NeedDaemonReload"), "no");

    // The file it depends on changed: restarted once more.
    let id = g.unit_prop(UNIT, "InvocationID");
    g.apply(&spec("2000", "v2", true, "running"))
        .assert(&[(&file, "changed"), (&svc, "changed")]);
    assert_eq!(starts(&g), 3);
    assert_ne!(g.unit_prop(UNIT, "InvocationID"), id);
    g.apply(&spec("2000", "v2", true, "running"))
        .assert_all_unchanged();
    assert_eq!(starts(&g), 3);

    // Disabled and stopped.
    g.apply(&spec("2000", "v2", false, "stopped"))
        .assert(&[(&svc, "changed")]);
    assert_eq!(g.unit_prop(UNIT, "ActiveState"), "inactive");
    assert_eq!(g.unit_prop(UNIT, "UnitFileState"), "disabled");
    g.apply(&spec("2000", "v2", false, "stopped"))
        .assert_all_unchanged();

    // A failing service is reported with its result, not as converged.
    let mut broken = spec("2000", "v2", true, "running");
    broken["resources"][1]["unit"]["exec_start"] = json!(["/bin/false"]);
    broken["resources"][1]["unit"]["restart"] = json!("no");
    broken["resources"][1]["unit"]["service_type"] = json!("oneshot");
    let a = g.apply(&broken);
    assert!(!a.ok);
    assert_eq!(a.status(&svc), "failed");
    assert!(
        a.message(&svc).contains("exit-code") || a.message(&svc).contains("failed"),
        "{}",
        a.message(&svc)
    );

    // Removed.
    let gone = json!({"resources": [{"kind": "service", "name": UNIT, "ensure": "absent"}]});
    g.apply(&gone).assert(&[(&svc, "changed")]);
    assert_eq!(
        g.ok("test -e /etc/systemd/system/demo.service && echo present || echo gone"),
        "gone"
    );
    assert_eq!(g.unit_prop(UNIT, "LoadState"), "not-found");
    g.apply(&gone).assert_all_unchanged();
}

#[test]
fn bad_input_is_refused_before_anything_changes() {
    let Some(g) = Guest::boot("badinput", &[]) else {
        return;
    };
    let marker = "/etc/phoenix-should-not-exist";
    let cases = [
        (
            json!({"kind": "service", "name": "../../etc/evil.service",
                   "unit": {"exec_start": ["/bin/true"]}}),
            "is not a systemd unit name",
        ),
        (
            json!({"kind": "package", "name": "nginx; rm -rf /"}),
            "is not a Debian package name",
        ),
        (
            json!({"kind": "exec", "name": "unguarded", "command": ["/usr/bin/touch", "/tmp/x"]}),
            "needs a guard",
        ),
    ];
    for (bad, why) in cases {
        let spec = json!({"resources": [{"kind": "file", "path": marker, "content": "x"}, bad]});
        let a = g.apply(&spec);
        assert!(!a.ok, "accepted: {bad}");
        assert!(a.stderr.contains(why), "{bad}: {}", a.stderr);
        assert_eq!(
            g.ok(&format!("test -e {marker} && echo yes || echo no")),
            "no",
            "nothing may change when a resource is invalid"
        );
    }
    // An agent-side check (not the model's): a generated unit with a reload trigger but no
    // way to reload; the whole state is refused, the file not written.
    let spec = json!({"resources": [
        {"kind": "file", "path": marker, "content": "x"},
        {"kind": "service", "name": "x.service", "unit": {"exec_start": ["/bin/true"]},
         "reload_on": [format!("file:{marker}")]}]});
    let a = g.apply(&spec);
    assert!(!a.ok);
    assert!(
        a.message("service:x.service")
            .contains("reload_on needs unit.exec_reload"),
        "{}",
        a.report
    );
    assert_eq!(
        g.ok(&format!("test -e {marker} && echo yes || echo no")),
        "no"
    );
}
