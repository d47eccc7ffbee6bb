//! Decision logic against an in-memory service manager. The proof against a real systemd
//! is tests/tests/it/systemd.rs.

use super::*;
use phoenix_proto::model::ResourceRef;
use std::sync::Mutex;

#[derive(Default)]
struct Fake {
    active: Mutex<bool>,
    enabled: Mutex<bool>,
    calls: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl ServiceManager for Fake {
    async fn status(&self, _unit: &str) -> Result<UnitStatus, ServiceError> {
        let active = *self.active.lock().expect("lock");
        let enabled = *self.enabled.lock().expect("lock");
        Ok(UnitStatus {
            load_state: "loaded".into(),
            active_state: if active { "active" } else { "inactive" }.into(),
            unit_file_state: if enabled { "enabled" } else { "disabled" }.into(),
            result: "success".into(),
            ..UnitStatus::default()
        })
    }
    async fn daemon_reload(&self) -> Result<(), ServiceError> {
        self.calls
            .lock()
            .expect("lock")
            .push("daemon-reload".into());
        Ok(())
    }
    async fn control(&self, verb: Verb, unit: &str) -> Result<(), ServiceError> {
        self.calls
            .lock()
            .expect("lock")
            .push(format!("{} {unit}", verb.as_str()));
        match verb {
            Verb::Start | Verb::Restart => *self.active.lock().expect("lock") = true,
            Verb::Stop => *self.active.lock().expect("lock") = false,
            Verb::Enable => *self.enabled.lock().expect("lock") = true,
            Verb::Disable => *self.enabled.lock().expect("lock") = false,
            Verb::Reload => {}
        }
        Ok(())
    }
    async fn recent_log(&self, _unit: &str) -> String {
        String::new()
    }
}

fn spec(json: serde_json::Value) -> ServiceSpec {
    serde_json::from_value(json).expect("service spec")
}

fn demo(arg: &str) -> ServiceSpec {
    spec(serde_json::json!({
        "name": "demo.service",
        "unit": {"exec_start": ["/bin/sleep", arg], "exec_reload": ["/bin/true"]},
        "enabled": true,
        "state": "running",
        "restart_on": ["file:/etc/demo.conf"],
        "reload_on": ["cert:web"],
    }))
}

fn calls(c: &ServiceConverger<Fake>) -> Vec<String> {
    std::mem::take(&mut *c.mgr.calls.lock().expect("lock"))
}

#[tokio::test]
async fn lifecycle_create_change_refresh_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = ServiceConverger::new(
        Fake::default(),
        dir.path().join("system"),
        dir.path().join("env"),
    )
    .with_settle(std::time::Duration::ZERO);
    let cx = PassContext::default();

    let s = demo("100");
    assert!(matches!(
        c.check(&s, &cx).await.expect("check"),
        Check::Drift { .. }
    ));
    c.apply(&s, &cx).await.expect("create");
    assert_eq!(
        calls(&c),
        ["daemon-reload", "enable demo.service", "start demo.service"]
    );
    assert_eq!(c.check(&s, &cx).await.expect("check"), Check::InSync);

    let s = demo("200");
    c.apply(&s, &cx).await.expect("change");
    assert_eq!(
        calls(&c),
        ["daemon-reload", "restart demo.service"],
        "one restart, no start"
    );
    assert_eq!(c.check(&s, &cx).await.expect("check"), Check::InSync);

    let mut file_changed = PassContext::default();
    file_changed
        .changed
        .insert(ResourceRef::new("file", "/etc/demo.conf"));
    assert!(matches!(
        c.check(&s, &file_changed).await.expect("check"),
        Check::Drift { .. }
    ));
    c.apply(&s, &file_changed).await.expect("restart_on");
    assert_eq!(
        calls(&c),
        ["restart demo.service"],
        "no daemon-reload: no unit file changed"
    );

    let mut cert_changed = PassContext::default();
    cert_changed.changed.insert(ResourceRef::new("cert", "web"));
    c.apply(&s, &cert_changed).await.expect("reload_on");
    assert_eq!(calls(&c), ["reload demo.service"]);

    let gone = spec(serde_json::json!({"name": "demo.service", "ensure": "absent"}));
    assert!(matches!(
        c.check(&gone, &cx).await.expect("check"),
        Check::Drift { .. }
    ));
    c.apply(&gone, &cx).await.expect("remove");
    assert_eq!(
        calls(&c),
        ["stop demo.service", "disable demo.service", "daemon-reload"]
    );
    assert!(!dir.path().join("system/demo.service").exists());
    assert_eq!(c.check(&gone, &cx).await.expect("check"), Check::InSync);
}

#[tokio::test]
async fn secret_environment_goes_to_a_root_only_file_not_the_unit() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("token");
    std::fs::write(&secret, "hunter2\n").expect("write");
    let c = ServiceConverger::new(
        Fake::default(),
        dir.path().join("system"),
        dir.path().join("env"),
    )
    .with_settle(std::time::Duration::ZERO);
    let s = spec(serde_json::json!({
        "name": "api.service",
        "unit": {"exec_start": ["/bin/api"], "secret_environment": {"TOKEN": {"file": secret.to_str()}}},
    }));
    let cx = PassContext::default();
    let Check::Drift { diff } = c.check(&s, &cx).await.expect("check") else {
        panic!("expected drift");
    };
    assert!(!diff.contains("hunter2"), "{diff}");
    c.apply(&s, &cx).await.expect("apply");
    let unit = std::fs::read_to_string(dir.path().join("system/api.service")).expect("unit");
    assert!(!unit.contains("hunter2") && unit.contains("EnvironmentFile="));
    let env = dir.path().join("env/api.service.env");
    assert!(
        std::fs::read_to_string(&env)
            .expect("env")
            .contains("TOKEN=\"hunter2\"")
    );
    let mode = std::fs::metadata(&env).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn dropins_for_a_unit_phoenix_does_not_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = ServiceConverger::new(
        Fake::default(),
        dir.path().join("system"),
        dir.path().join("env"),
    )
    .with_settle(std::time::Duration::ZERO);
    *c.mgr.active.lock().expect("lock") = true;
    let s = spec(serde_json::json!({
        "name": "nginx.service",
        "dropins": {"limits": "[Service]\nLimitNOFILE=65536"},
    }));
    let cx = PassContext::default();
    c.apply(&s, &cx).await.expect("apply");
    assert_eq!(calls(&c), ["daemon-reload", "restart nginx.service"]);
    let text = std::fs::read_to_string(dir.path().join("system/nginx.service.d/limits.conf"))
        .expect("dropin");
    assert!(text.ends_with("LimitNOFILE=65536\n"));
    assert_eq!(c.check(&s, &cx).await.expect("check"), Check::InSync);
}

/// The plan of a changed unit shows its text diff, with secret-looking values redacted.
#[tokio::test]
async fn plan_shows_the_unit_text_diff_with_secrets_redacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = ServiceConverger::new(
        Fake::default(),
        dir.path().join("system"),
        dir.path().join("env"),
    )
    .with_settle(std::time::Duration::ZERO);
    let cx = PassContext::default();
    let with = |arg: &str, key: &str| {
        spec(serde_json::json!({
            "name": "demo.service",
            "unit": {"exec_start": ["/bin/sleep", arg], "environment": {"JWT_SIGNING_KEY": key}},
            "enabled": true,
            "state": "running",
        }))
    };
    c.apply(&with("5", "old-signing-key"), &cx)
        .await
        .expect("apply");
    let Check::Drift { diff } = c
        .check(&with("6", "new-signing-key"), &cx)
        .await
        .expect("check")
    else {
        panic!("a changed unit must drift");
    };
    assert!(diff.contains("- ExecStart=/bin/sleep 5"), "{diff}");
    assert!(diff.contains("+ ExecStart=/bin/sleep 6"), "{diff}");
    assert!(
        !diff.contains("old-signing-key") && !diff.contains("new-signing-key"),
        "{diff}"
    );
    assert!(diff.contains("JWT_SIGNING_KEY=<redacted>"), "{diff}");
}
