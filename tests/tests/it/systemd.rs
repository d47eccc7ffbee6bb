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
    // A generated unit with a reload trigger but no way to reload: a model check, so
    // `phoenix validate` refuses it too; the whole state is refused, the file not written.
    let spec = json!({"resources": [
        {"kind": "file", "path": marker, "content": "x"},
        {"kind": "service", "name": "x.service", "unit": {"exec_start": ["/bin/true"]},
         "reload_on": [format!("file:{marker}")]}]});
    let a = g.apply(&spec);
    assert!(!a.ok);
    assert!(
        a.stderr.contains("reload_on needs unit.exec_reload"),
        "{}",
        a.stderr
    );
    assert_eq!(
        g.ok(&format!("test -e {marker} && echo yes || echo no")),
        "no"
    );
}

/// `exec` steps in the real guest, shaped like the `trusted_ca` feature: a root certificate
/// file and `update-ca-certificates` refreshed when it changes; a `creates`-guarded setup
/// step; a failing step whose secret stays out of the report.
#[test]
fn exec_steps_run_once_and_on_refresh_only() {
    let ca = phoenix_tests::guest::self_signed("phoenix-test-root");
    if !phoenix_tests::require("openssl (to make a test root certificate)", ca.is_some()) {
        return;
    }
    let Some(g) = Guest::boot("exec", &[]) else {
        return;
    };
    let state = |pem: &str| {
        json!({"resources": [
            {"kind": "file", "path": "/usr/local/share/ca-certificates/phoenix-test.crt", "content": pem},
            {"kind": "exec", "name": "update-ca-certificates",
             "command": ["/usr/sbin/update-ca-certificates"],
             "refresh_on": ["file:/usr/local/share/ca-certificates/phoenix-test.crt"],
             "depends_on": ["file:/usr/local/share/ca-certificates/phoenix-test.crt"]},
            {"kind": "exec", "name": "setup-once",
             "command": ["/bin/sh", "-c", "echo ran >> /var/lib/setup-count && touch /var/lib/setup-done"],
             "creates": "/var/lib/setup-done"},
            {"kind": "exec", "name": "unless-guarded",
             "command": ["/bin/sh", "-c", "echo ran >> /var/lib/unless-count"],
             "unless": ["/bin/sh", "-c", "test -s /var/lib/unless-count"]}
        ]})
    };
    let in_bundle =
        |g: &Guest| g.ok("test -e /etc/ssl/certs/phoenix-test.pem && echo yes || echo no");
    let (pem1, _) = ca.unwrap_or_default();
    g.apply(&state(&pem1)).assert(&[
        ("exec:update-ca-certificates", "changed"),
        ("exec:setup-once", "changed"),
        ("exec:unless-guarded", "changed"),
    ]);
    assert_eq!(in_bundle(&g), "yes", "root installed into the trust store");
    let bundle = g.mtimes(&["/etc/ssl/certs/ca-certificates.crt"]);

    g.apply(&state(&pem1)).assert_all_unchanged();
    assert_eq!(g.ok("wc -l < /var/lib/setup-count"), "1");
    assert_eq!(g.ok("wc -l < /var/lib/unless-count"), "1");
    assert_eq!(
        g.mtimes(&["/etc/ssl/certs/ca-certificates.crt"]),
        bundle,
        "not re-run"
    );

    // A new root: the refresh runs again, the guarded steps do not.
    let (pem2, _) = phoenix_tests::guest::self_signed("phoenix-test-root").unwrap_or_default();
    g.apply(&state(&pem2)).assert(&[
        ("exec:update-ca-certificates", "changed"),
        ("exec:setup-once", "unchanged"),
    ]);
    assert_ne!(g.mtimes(&["/etc/ssl/certs/ca-certificates.crt"]), bundle);

    // Failure: exit status and output in the report, the secret's value redacted.
    g.write("/etc/phoenix-test-secret", b"sup3r-s3cret\n");
    let failing = json!({"resources": [
        {"kind": "exec", "name": "fails", "onlyif": ["/bin/true"], "timeout_seconds": 10,
         "command": ["/bin/sh", "-c", "echo using $TOKEN; echo broken >&2; exit 4"],
         "secret_environment": {"TOKEN": {"file": "/etc/phoenix-test-secret"}}}
    ]});
    let a = g.apply(&failing);
    assert!(!a.ok);
    let msg = a.message("exec:fails");
    assert!(
        msg.contains("exit 4") && msg.contains("using [redacted]") && msg.contains("broken"),
        "{msg}"
    );
    assert!(!a.report.to_string().contains("sup3r"), "{}", a.report);
}

/// A unit that crashes a moment after `systemctl start` returns, with `Restart=always`, is a
/// crash loop: reported failed with its journal, never "running" (the step-ca unit of the
/// seed once crash-looped while Phoenix said converged). A healthy unit still converges.
#[test]
fn a_crash_looping_service_is_failed_not_running() {
    let Some(g) = Guest::boot("crashloop", &[]) else {
        return;
    };
    let unit = |argv: Value| {
        json!({"resources": [{"kind": "service", "name": "crashy.service", "enabled": true,
            "state": "running",
            "unit": {"exec_start": argv, "restart": "always", "restart_sec": 1}}]})
    };
    let svc = "service:crashy.service";
    let a = g.apply(&unit(json!([
        "/bin/sh",
        "-c",
        "echo crashing; sleep 0.3; exit 3"
    ])));
    assert!(!a.ok, "{}", a.report);
    assert_eq!(a.status(svc), "failed", "{}", a.message(svc));
    let m = a.message(svc);
    assert!(
        m.contains("crash loop") || m.contains("auto-restart"),
        "{m}"
    );
    assert!(
        m.contains("crashing"),
        "the journal tail is in the report: {m}"
    );
    // Later passes keep saying so instead of calling it in sync.
    let again = g.apply(&unit(json!([
        "/bin/sh",
        "-c",
        "echo crashing; sleep 0.3; exit 3"
    ])));
    assert_eq!(again.status(svc), "failed", "{}", again.message(svc));

    // The same unit made healthy converges.
    g.apply(&unit(json!(["/bin/sleep", "infinity"])))
        .assert(&[(svc, "changed")]);
    assert_eq!(g.unit_prop("crashy.service", "ActiveState"), "active");
    // NRestarts is not reset by a restart; it simply stops rising.
    let n = g.unit_prop("crashy.service", "NRestarts");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(g.unit_prop("crashy.service", "NRestarts"), n);
}

/// `phoenix-agent apply -f … --dry-run --json` in the guest: the plan, nothing changed.
fn plan(g: &Guest, spec: &Value) -> Value {
    g.write("/root/plan.json", spec.to_string().as_bytes());
    let o = g.sh("/usr/local/bin/phoenix-agent apply -f /root/plan.json --dry-run --json");
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

fn diff_of(report: &Value, id: &str) -> String {
    report["results"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["resource"] == id))
        .map(|r| r["diff"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("{id} not in the plan: {report:#}"))
}

/// Taking over a guest that already runs things (a hand-written unit and config file), then
/// taking resources out of its desired state: what Phoenix found is replaced only after a
/// backup and is never removed; what Phoenix created is stopped, disabled and removed.
#[test]
fn takeover_keeps_backups_and_removal_only_removes_what_phoenix_created() {
    let Some(g) = Guest::boot("takeover", &[]) else {
        return;
    };
    const LEGACY_UNIT: &str = "/etc/systemd/system/legacy.service";
    const LEGACY_CONF: &str = "/etc/legacy.conf";
    let hand_unit = "[Unit]\nDescription=hand written\n[Service]\nExecStart=/bin/sleep 1000\n[Install]\nWantedBy=multi-user.target\n";
    g.write(LEGACY_UNIT, hand_unit.as_bytes());
    g.write(LEGACY_CONF, b"written by hand\n");
    // An owner and mode of its own, which the backup must keep.
    g.ok(&format!(
        "chown root:www-data {LEGACY_CONF} && chmod 0640 {LEGACY_CONF}"
    ));
    g.ok("systemctl daemon-reload && systemctl enable --now legacy.service");

    let svc = |name: &str| {
        json!({"kind": "service", "name": name, "enabled": true, "state": "running",
               "unit": {"description": "Phoenix", "exec_start": ["/bin/sleep", "2000"]}})
    };
    let full = json!({"resources": [
        {"kind": "file", "path": LEGACY_CONF, "content": "written by phoenix\n"},
        {"kind": "file", "path": "/etc/phoenix-new.conf", "content": "new\n"},
        {"kind": "file", "path": "/etc/phoenix-edited.conf", "content": "new\n"},
        svc("legacy.service"),
        svc("fresh.service"),
    ]});

    // The plan names each takeover; a new file is simply created.
    let p = plan(&g, &full);
    for (id, path) in [
        (format!("file:{LEGACY_CONF}"), LEGACY_CONF),
        ("service:legacy.service".to_owned(), LEGACY_UNIT),
    ] {
        let d = diff_of(&p, &id);
        assert!(
            d.contains(&format!("replace existing {path} (not managed by Phoenix")),
            "{id}: {d}"
        );
    }
    assert!(!diff_of(&p, "file:/etc/phoenix-new.conf").contains("not managed"));
    assert_eq!(g.ok(&format!("cat {LEGACY_CONF}")), "written by hand");

    let a = g.apply(&full);
    a.assert(&[
        (&format!("file:{LEGACY_CONF}"), "changed"),
        ("service:legacy.service", "changed"),
        ("service:fresh.service", "changed"),
    ]);
    assert!(
        a.message(&format!("file:{LEGACY_CONF}"))
            .contains("/var/lib/phoenix-agent/backups/etc%2Flegacy.conf."),
        "{}",
        a.message(&format!("file:{LEGACY_CONF}"))
    );
    // Backups: the originals with their owner and mode (so `cp -p` restores them), in the
    // agent's private state directory (0700 root).
    assert_eq!(
        g.ok("cat /var/lib/phoenix-agent/backups/etc%2Flegacy.conf.*"),
        "written by hand"
    );
    assert_eq!(
        g.ok("cat /var/lib/phoenix-agent/backups/etc%2Fsystemd%2Fsystem%2Flegacy.service.*"),
        hand_unit.trim_end()
    );
    assert_eq!(
        g.ok("stat -c '%U:%G %a' /var/lib/phoenix-agent/backups/etc%2Flegacy.conf.*"),
        "root:www-data 640"
    );
    assert_eq!(
        g.ok("stat -c '%U:%G %a' /var/lib/phoenix-agent/backups/etc%2Fsystemd%2Fsystem%2Flegacy.service.*"),
        "root:root 644"
    );
    assert_eq!(g.ok("stat -c '%a' /var/lib/phoenix-agent/backups"), "700");
    assert_eq!(g.unit_prop("fresh.service", "ActiveState"), "active");
    g.apply(&full).assert_all_unchanged();

    // Someone edits a file Phoenix created; then everything is taken out of the state.
    g.write("/etc/phoenix-edited.conf", b"edited by hand\n");
    let empty = json!({"resources": [
        {"kind": "file", "path": "/etc/phoenix-keep.conf", "content": "still declared\n"}
    ]});
    let p = plan(&g, &empty);
    assert!(
        diff_of(&p, "service:fresh.service")
            .starts_with("- stop, disable and remove fresh.service"),
        "{p:#}"
    );
    assert!(diff_of(&p, "file:/etc/phoenix-new.conf").starts_with("- remove "));
    assert!(diff_of(&p, &format!("file:{LEGACY_CONF}")).starts_with("keep "));
    assert!(diff_of(&p, "file:/etc/phoenix-edited.conf").contains("changed on the guest"));
    assert!(diff_of(&p, "service:legacy.service").starts_with("keep "));
    assert_eq!(
        g.unit_prop("fresh.service", "ActiveState"),
        "active",
        "a plan changes nothing"
    );

    let fresh_pid = g.unit_prop("fresh.service", "MainPID");
    let a = g.apply(&empty);
    assert!(a.ok, "{}", a.stderr);
    let gone = |p: &str| g.ok(&format!("test -e {p} && echo present || echo gone"));
    assert_eq!(gone("/etc/systemd/system/fresh.service"), "gone");
    assert_eq!(g.unit_prop("fresh.service", "LoadState"), "not-found");
    assert_eq!(
        gone(&format!("/proc/{fresh_pid}")),
        "gone",
        "fresh.service stopped"
    );
    assert_eq!(gone("/etc/phoenix-new.conf"), "gone");
    // Not Phoenix's to remove: taken over, or changed by hand since.
    assert_eq!(g.ok(&format!("cat {LEGACY_CONF}")), "written by phoenix");
    assert_eq!(g.ok("cat /etc/phoenix-edited.conf"), "edited by hand");
    assert_eq!(gone(LEGACY_UNIT), "present");
    assert_eq!(g.unit_prop("legacy.service", "ActiveState"), "active");
    // Released: the next pass has nothing more to remove.
    g.apply(&empty).assert_all_unchanged();
}
