//! The scheduler in tokio's paused time: retries, persistence and shutdown, with a fake
//! file handler and a real state directory.

use super::*;
use crate::reconcile::{Check, Converge, Handlers, PassContext, ResourceError};
use phoenix_proto::model::{FileSpec, GuestSpec};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::time::Instant;

/// Files in memory; the first `failures` applies of /a fail, each apply takes `delay`.
#[derive(Default)]
struct Flaky {
    failures: AtomicUsize,
    delay: Duration,
    files: Mutex<HashMap<String, String>>,
    applied_at: Mutex<Vec<(String, Instant)>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FakeError(String);

#[async_trait::async_trait]
impl Converge<FileSpec> for Flaky {
    fn validate(&self, _s: &FileSpec) -> Result<(), ResourceError> {
        Ok(())
    }
    async fn check(&self, s: &FileSpec, _cx: &PassContext) -> Result<Check, ResourceError> {
        Ok(
            match self.files.lock().expect("lock").get(s.path.as_str()) {
                Some(c) if *c == s.content => Check::InSync,
                _ => Check::Drift {
                    diff: format!("write {}", s.path),
                },
            },
        )
    }
    async fn apply(&self, s: &FileSpec, _cx: &PassContext) -> Result<String, ResourceError> {
        tokio::time::sleep(self.delay).await;
        self.applied_at
            .lock()
            .expect("lock")
            .push((s.path.to_string(), Instant::now()));
        if s.path.as_str() == "/a"
            && self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(Box::new(FakeError(format!("write {}: busy", s.path))));
        }
        self.files
            .lock()
            .expect("lock")
            .insert(s.path.to_string(), s.content.clone());
        Ok("written".into())
    }
}

const SPEC: &str = r#"{"resources":[
    {"kind":"file","path":"/a","content":"1"},
    {"kind":"file","path":"/b","content":"2"}]}"#;

fn desired(revision: u64) -> Arc<DesiredState> {
    let spec = GuestSpec::from_json(SPEC.as_bytes()).expect("valid spec");
    Arc::new(DesiredState::new(revision, spec, false))
}

struct Harness {
    files: Arc<Flaky>,
    desired: watch::Sender<Option<Arc<DesiredState>>>,
    _dry: watch::Sender<Option<Arc<DesiredState>>>,
    run_pass: watch::Sender<u64>,
    outbox: Arc<Outbox>,
    stop: watch::Sender<bool>,
    reports: watch::Receiver<Option<Arc<ApplyReport>>>,
    task: tokio::task::JoinHandle<()>,
    state: Arc<StateDir>,
    _dir: tempfile::TempDir,
}

fn start(files: Flaky, initial: Option<Arc<DesiredState>>) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = Arc::new(StateDir::open(dir.path()).expect("state dir"));
    let files = Arc::new(files);
    let engine = Arc::new(Engine::new(Handlers::files_only(files.clone())));
    let (desired, desired_rx) = watch::channel(initial);
    let (dry, dry_rx) = watch::channel(None);
    let (stop, stop_rx) = watch::channel(false);
    let (run_pass, run_pass_rx) = watch::channel(0);
    let (reports_tx, reports) = watch::channel(None);
    let timing = Timing {
        drift_interval: Duration::from_secs(3600),
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(4),
    };
    let inputs = Inputs {
        desired: desired_rx,
        dry: dry_rx,
        stop: stop_rx,
        run_pass: run_pass_rx,
    };
    let outbox = Arc::new(Outbox::open(&state));
    let task = tokio::spawn(scheduler(
        engine,
        state.clone(),
        timing,
        inputs,
        reports_tx,
        outbox.clone(),
    ));
    Harness {
        files,
        desired,
        _dry: dry,
        run_pass,
        outbox,
        stop,
        reports,
        task,
        state,
        _dir: dir,
    }
}

fn last(h: &Harness) -> Arc<ApplyReport> {
    latest(&h.reports)
}

fn latest(reports: &watch::Receiver<Option<Arc<ApplyReport>>>) -> Arc<ApplyReport> {
    reports.borrow().clone().expect("a report")
}

#[tokio::test(start_paused = true)]
async fn a_failed_pass_is_retried_with_capped_backoff_until_it_converges() {
    let h = start(
        Flaky {
            failures: AtomicUsize::new(3),
            ..Default::default()
        },
        None,
    );
    let t0 = Instant::now();
    h.desired.send_replace(Some(desired(5)));
    // Everything settles within the sum of the ceilings (1 + 2 + 4 s), not at a drift tick.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let report = last(&h);
    assert!(report.converged(), "{report:?}");
    assert_eq!(report.trigger, "retry 3");
    let at: Vec<Duration> = h
        .files
        .applied_at
        .lock()
        .expect("lock")
        .iter()
        .filter(|(p, _)| p == "/a")
        .map(|(_, t)| *t - t0)
        .collect();
    assert_eq!(at.len(), 4, "one push and three retries: {at:?}");
    for (n, w) in at.windows(2).enumerate() {
        let ceiling = Duration::from_secs(1 << n);
        assert!(
            w[1] - w[0] <= ceiling,
            "retry {} after {:?}",
            n + 1,
            w[1] - w[0]
        );
    }
    // Converged: no more passes until the drift tick an hour later.
    tokio::time::sleep(Duration::from_secs(1800)).await;
    assert_eq!(h.files.applied_at.lock().expect("lock").len(), 5);
    assert_eq!(h.state.applied().expect("applied").revision, 5);
}

#[tokio::test(start_paused = true)]
async fn a_state_that_cannot_be_persisted_is_not_applied_and_reported_failed() {
    let h = start(Flaky::default(), None);
    // desired.json cannot be replaced while a directory stands in its place.
    let blocker = h.state.path("desired.json");
    std::fs::create_dir(&blocker).expect("mkdir");
    std::fs::write(blocker.join("x"), "x").expect("fill");
    h.desired.send_replace(Some(desired(2)));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let report = last(&h);
    assert!(!report.converged(), "{report:?}");
    assert_eq!(report.results.len(), 1, "{report:?}");
    let r = &report.results[0];
    assert_eq!(
        (r.resource.as_str(), r.status),
        (STATE_RESOURCE, Status::Failed)
    );
    assert!(
        r.message.contains(&blocker.display().to_string())
            && r.message.contains("nothing of revision 2 was applied"),
        "{}",
        r.message
    );
    assert!(h.files.applied_at.lock().expect("lock").is_empty());
    assert_eq!(h.state.applied().expect("applied").revision, 0);
    // Once the disk has room again, a retry persists and applies it.
    std::fs::remove_dir_all(&blocker).expect("rm");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let report = last(&h);
    assert!(report.converged(), "{report:?}");
    assert!(report.trigger.starts_with("retry"), "{}", report.trigger);
    assert_eq!(
        h.state.desired().expect("desired").map(|d| d.revision),
        Some(2)
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_resource_in_progress_and_ends_the_scheduler() {
    let h = start(
        Flaky {
            delay: Duration::from_secs(10),
            ..Default::default()
        },
        Some(desired(1)),
    );
    // The startup pass is writing /a (10 s) when the signal comes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.stop.send_replace(true);
    let reports = h.reports.clone();
    tokio::time::timeout(Duration::from_secs(60), h.task)
        .await
        .expect("scheduler ends after the resource in progress")
        .expect("no panic");
    let applied: Vec<String> = h
        .files
        .applied_at
        .lock()
        .expect("lock")
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(applied, ["/a"], "/a finished, /b never started");
    let report = latest(&reports);
    assert_eq!(report.trigger, "startup");
    assert_eq!(report.results[1].status, Status::Skipped);
}

#[tokio::test(start_paused = true)]
async fn converge_runs_a_pass_on_an_unchanged_revision_and_every_pass_that_is_news_is_kept() {
    let h = start(Flaky::default(), Some(desired(3)));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(last(&h).trigger, "startup");
    // Someone reverts /a by hand; the next drift tick is an hour away.
    h.files.files.lock().expect("lock").remove("/a");
    h.run_pass.send_modify(|n| *n += 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let report = last(&h);
    assert_eq!(report.trigger, "converge");
    assert_eq!(report.revision, 3, "same revision, pass run anyway");
    assert_eq!(report.count(Status::Changed), 1, "{report:?}");
    // Both passes wait in the outbox, in order, until the coordinator acknowledges them.
    let kept = h.outbox.after(0);
    let triggers: Vec<&str> = kept.iter().map(|e| e.report.trigger.as_str()).collect();
    assert_eq!(triggers, ["startup", "converge"]);
    // A drift check that finds nothing is not news and not kept.
    tokio::time::sleep(Duration::from_secs(3700)).await;
    assert_eq!(h.outbox.len(), 2);
}
