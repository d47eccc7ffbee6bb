use super::*;
use phoenix_proto::model::GuestSpec;
use std::collections::HashMap;
use std::sync::Mutex;

/// In-memory files; `fail_apply` and `invalid` paths misbehave on purpose.
#[derive(Default)]
struct FakeFiles {
    files: Mutex<HashMap<String, String>>,
    applied: Mutex<Vec<String>>,
    fail_apply: Vec<String>,
    invalid: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FakeError(String);

#[async_trait::async_trait]
impl Converge<FileSpec> for FakeFiles {
    fn validate(&self, s: &FileSpec) -> Result<(), ResourceError> {
        if self.invalid.contains(&s.path.to_string()) {
            return Err(Box::new(FakeError(format!(
                "{} is outside the allowed roots",
                s.path
            ))));
        }
        Ok(())
    }
    async fn check(&self, s: &FileSpec, _cx: &PassContext) -> Result<Check, ResourceError> {
        let files = self.files.lock().expect("lock");
        Ok(match files.get(s.path.as_str()) {
            Some(c) if *c == s.content => Check::InSync,
            _ => Check::Drift {
                diff: format!("write {}", s.path),
            },
        })
    }
    async fn apply(&self, s: &FileSpec, _cx: &PassContext) -> Result<String, ResourceError> {
        self.applied.lock().expect("lock").push(s.path.to_string());
        if self.fail_apply.contains(&s.path.to_string()) {
            return Err(Box::new(FakeError(format!("write {}: disk full", s.path))));
        }
        self.files
            .lock()
            .expect("lock")
            .insert(s.path.to_string(), s.content.clone());
        Ok("written".into())
    }
}

fn state(json: &str, dry_run: bool) -> DesiredState {
    DesiredState::new(
        1,
        GuestSpec::from_json(json.as_bytes()).expect("valid spec"),
        dry_run,
    )
}

const SPEC: &str = r#"{"resources":[
    {"kind":"file","path":"/a","content":"1"},
    {"kind":"file","path":"/b","content":"2","depends_on":["file:/a"]},
    {"kind":"file","path":"/c","content":"3"}]}"#;

fn statuses(r: &ApplyReport) -> Vec<(String, Status)> {
    r.results
        .iter()
        .map(|x| (x.resource.clone(), x.status))
        .collect()
}

fn never() -> Option<Stop> {
    None
}

#[tokio::test]
async fn applies_in_order_then_is_idempotent() {
    let fake = Arc::new(FakeFiles::default());
    let engine = Engine::new(Handlers::files_only(fake.clone()));
    let first = engine
        .run(&state(SPEC, false), Trigger::Push { revision: 1 }, &never)
        .await;
    assert!(first.converged());
    assert_eq!(first.count(Status::Changed), 3);
    assert_eq!(*fake.applied.lock().expect("lock"), ["/a", "/b", "/c"]);
    let second = engine
        .run(&state(SPEC, false), Trigger::Drift, &never)
        .await;
    assert_eq!(second.count(Status::Unchanged), 3);
    assert_eq!(
        fake.applied.lock().expect("lock").len(),
        3,
        "second pass touched nothing"
    );
}

#[tokio::test]
async fn failure_skips_dependents_but_not_independent_resources() {
    let fake = Arc::new(FakeFiles {
        fail_apply: vec!["/a".into()],
        ..Default::default()
    });
    let engine = Engine::new(Handlers::files_only(fake.clone()));
    let r = engine
        .run(&state(SPEC, false), Trigger::Push { revision: 1 }, &never)
        .await;
    assert_eq!(
        statuses(&r),
        [
            ("file:/a".to_string(), Status::Failed),
            ("file:/b".to_string(), Status::Skipped),
            ("file:/c".to_string(), Status::Changed),
        ]
    );
    assert!(!r.converged());
    assert!(r.results[0].message.contains("disk full"));
}

#[tokio::test]
async fn one_invalid_resource_means_nothing_changes() {
    let fake = Arc::new(FakeFiles {
        invalid: vec!["/c".into()],
        ..Default::default()
    });
    let engine = Engine::new(Handlers::files_only(fake.clone()));
    let r = engine
        .run(&state(SPEC, false), Trigger::Push { revision: 1 }, &never)
        .await;
    assert!(fake.applied.lock().expect("lock").is_empty());
    assert_eq!(r.count(Status::Failed), 1);
    assert_eq!(r.count(Status::Skipped), 2);
}

#[tokio::test]
async fn dry_run_reports_changes_without_applying() {
    let fake = Arc::new(FakeFiles::default());
    let engine = Engine::new(Handlers::files_only(fake.clone()));
    let r = engine
        .run(&state(SPEC, true), Trigger::Push { revision: 1 }, &never)
        .await;
    assert!(r.dry_run);
    assert_eq!(r.count(Status::Changed), 3);
    assert!(fake.applied.lock().expect("lock").is_empty());
    assert!(r.results.iter().all(|x| x.diff.starts_with("write ")));
}

#[tokio::test]
async fn unsupported_kind_refuses_the_whole_state() {
    let fake = Arc::new(FakeFiles::default());
    let engine = Engine::new(Handlers::files_only(fake.clone()));
    let spec = r#"{"resources":[
        {"kind":"file","path":"/a","content":"1"},
        {"kind":"stack","name":"web","project":{"services":{"web":{"image":"x"}}}}]}"#;
    let r = engine
        .run(&state(spec, false), Trigger::Push { revision: 1 }, &never)
        .await;
    assert!(fake.applied.lock().expect("lock").is_empty());
    assert!(
        r.results
            .iter()
            .any(|x| x.message.contains("not supported"))
    );
}

#[tokio::test]
async fn newer_revision_stops_the_pass_between_resources() {
    let fake = Arc::new(FakeFiles::default());
    let engine = Engine::new(Handlers::files_only(fake.clone()));
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let superseded = move || {
        // Let the first resource through, then report revision 7 as waiting.
        (calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 1)
            .then_some(Stop::Superseded(7))
    };
    let r = engine
        .run(
            &state(SPEC, false),
            Trigger::Push { revision: 1 },
            &superseded,
        )
        .await;
    assert_eq!(r.count(Status::Changed), 1);
    assert_eq!(r.count(Status::Skipped), 2);
    assert!(r.results[1].message.contains("superseded by revision 7"));
}

#[tokio::test]
async fn shutdown_lets_the_resource_in_progress_finish_and_starts_no_other() {
    let fake = Arc::new(FakeFiles::default());
    let engine = Engine::new(Handlers::files_only(fake.clone()));
    let stopping = std::sync::atomic::AtomicBool::new(false);
    let seen = fake.clone();
    let stop = move || {
        // The signal arrives while /a is being written.
        if !seen.applied.lock().expect("lock").is_empty() {
            stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        stopping
            .load(std::sync::atomic::Ordering::SeqCst)
            .then_some(Stop::ShuttingDown)
    };
    let r = engine
        .run(&state(SPEC, false), Trigger::Startup, &stop)
        .await;
    assert_eq!(*fake.applied.lock().expect("lock"), ["/a"]);
    assert_eq!(
        statuses(&r),
        [
            ("file:/a".to_string(), Status::Changed),
            ("file:/b".to_string(), Status::Skipped),
            ("file:/c".to_string(), Status::Skipped),
        ]
    );
    assert!(r.results[2].message.contains("shutting down"));
    assert_eq!(r.trigger, "startup");
}

/// Packages that record each `apply_batch` call.
#[derive(Default)]
struct FakePackages {
    installed: Mutex<Vec<String>>,
    batches: Mutex<Vec<Vec<String>>>,
}

#[async_trait::async_trait]
impl Converge<PackageSpec> for FakePackages {
    fn validate(&self, _s: &PackageSpec) -> Result<(), ResourceError> {
        Ok(())
    }
    async fn check(&self, s: &PackageSpec, _cx: &PassContext) -> Result<Check, ResourceError> {
        Ok(
            if self
                .installed
                .lock()
                .expect("lock")
                .iter()
                .any(|n| s.name == n.as_str())
            {
                Check::InSync
            } else {
                Check::Drift {
                    diff: format!("install {}", s.name),
                }
            },
        )
    }
    async fn apply(&self, s: &PackageSpec, cx: &PassContext) -> Result<String, ResourceError> {
        self.apply_batch(&[s], cx).await.remove(0)
    }
    async fn apply_batch(
        &self,
        specs: &[&PackageSpec],
        _cx: &PassContext,
    ) -> Vec<Result<String, ResourceError>> {
        let names: Vec<String> = specs.iter().map(|s| s.name.to_string()).collect();
        self.installed.lock().expect("lock").extend(names.clone());
        self.batches.lock().expect("lock").push(names);
        specs.iter().map(|_| Ok("installed".to_string())).collect()
    }
}

#[tokio::test]
async fn ready_packages_are_applied_in_one_batch() {
    let spec = r#"{"resources":[
        {"kind":"file","path":"/a","content":"1"},
        {"kind":"package","name":"aa"},
        {"kind":"package","name":"bb","depends_on":["file:/a"]},
        {"kind":"package","name":"cc"}]}"#;
    let packages = Arc::new(FakePackages::default());
    let mut handlers = Handlers::files_only(Arc::new(FakeFiles::default()));
    handlers.packages = packages.clone();
    let engine = Engine::new(handlers);
    let r = engine
        .run(&state(spec, false), Trigger::Push { revision: 1 }, &never)
        .await;
    assert!(r.converged());
    assert_eq!(r.count(Status::Changed), 4);
    assert_eq!(
        *packages.batches.lock().expect("lock"),
        [["aa", "bb", "cc"]]
    );
    let again = engine
        .run(&state(spec, false), Trigger::Drift, &never)
        .await;
    assert_eq!(again.count(Status::Unchanged), 4);
    assert_eq!(packages.batches.lock().expect("lock").len(), 1);
}
