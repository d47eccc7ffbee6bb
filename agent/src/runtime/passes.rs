//! The pass scheduler: decides when a reconcile pass runs and on what, and keeps the
//! persistence promise.
//!
//! A pass runs at startup (on the state persisted before), on every push (latest wins),
//! on a dry-run request, when the operator asks (`phoenix converge`, even on an
//! unchanged revision), on the drift tick, and after a failed pass with capped backoff
//! (not only on the next push or drift tick). Every pass that is news (all but a drift
//! check that found nothing, and plans) goes into the outbox, which the session delivers
//! when it can, so passes done while the coordinator is away are reported too. A desired state is applied only after it
//! is persisted: a state that cannot be written is not applied at all and its pass is
//! reported failed, so a restart, which enforces what is on disk, never rolls the guest
//! back behind what was applied.

use super::backoff::Backoff;
use super::outbox::Outbox;
use crate::reconcile::{Engine, Stop, Trigger};
use crate::state::{Applied, StateDir, StateError};
use phoenix_proto::model::{ApplyReport, DesiredState, ResourceResult, Status};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// The resource name under which a pass reports that its state could not be persisted.
pub const STATE_RESOURCE: &str = "agent:desired-state";

#[derive(Debug, Clone)]
pub struct Timing {
    /// Re-check the last desired state this often, to catch and repair drift.
    pub drift_interval: Duration,
    /// Backoff of the retries of a failed pass.
    pub retry_base: Duration,
    pub retry_max: Duration,
}

pub type Latest = watch::Receiver<Option<Arc<DesiredState>>>;

/// What feeds the scheduler.
pub struct Inputs {
    /// The desired state: the persisted one at start, then every push.
    pub desired: Latest,
    /// Plans the operator asked for.
    pub dry: Latest,
    /// `true` once the agent shuts down.
    pub stop: watch::Receiver<bool>,
    /// Changes when the coordinator asks for a pass now (`phoenix converge`).
    pub run_pass: watch::Receiver<u64>,
}

/// Runs passes until `inputs.stop` turns true (after the pass in progress, which stops
/// between resources) or its sender is dropped. Every report that is news is published
/// on `reports` (latest wins: plans for the session, the last one for tests) and, but
/// plans, added to `outbox`.
pub async fn scheduler(
    engine: Arc<Engine>,
    state: Arc<StateDir>,
    timing: Timing,
    mut inputs: Inputs,
    reports: watch::Sender<Option<Arc<ApplyReport>>>,
    outbox: Arc<Outbox>,
) {
    let key = |d: &DesiredState| (d.revision, d.digest.clone());
    // What desired.json holds now; asked of the disk, because a push may already have
    // replaced the watch's initial value.
    let mut persisted = state.desired().ok().flatten().map(|d| key(&d));
    let mut backoff = Backoff::new(timing.retry_base, timing.retry_max);
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut drift = tokio::time::interval_at(
        tokio::time::Instant::now() + timing.drift_interval,
        timing.drift_interval,
    );
    drift.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Enforce what is on disk right away, before any coordinator is reachable.
    let mut next = Some(Trigger::Startup);
    loop {
        let trigger = match next.take() {
            Some(t) => t,
            None => tokio::select! {
                biased;
                r = inputs.stop.changed() => {
                    if r.is_err() || *inputs.stop.borrow() { return; }
                    continue;
                }
                r = inputs.desired.changed() => {
                    if r.is_err() { return; }
                    let revision = inputs.desired.borrow_and_update().as_ref().map_or(0, |d| d.revision);
                    // A new state starts a new series of attempts.
                    backoff.reset();
                    retry_at = None;
                    Trigger::Push { revision }
                }
                r = inputs.dry.changed() => {
                    if r.is_err() { return; }
                    inputs.dry.borrow_and_update();
                    Trigger::DryRun
                }
                r = inputs.run_pass.changed() => {
                    if r.is_err() { return; }
                    inputs.run_pass.borrow_and_update();
                    // The operator's pass stands in for a pending retry.
                    retry_at = None;
                    Trigger::Converge
                }
                _ = sleep_until(retry_at), if retry_at.is_some() => {
                    retry_at = None;
                    Trigger::Retry { attempt: backoff.attempt() }
                }
                _ = drift.tick() => Trigger::Drift,
            },
        };
        if *inputs.stop.borrow() {
            return;
        }
        let desired = if trigger == Trigger::DryRun {
            inputs.dry.borrow().clone()
        } else {
            inputs.desired.borrow().clone()
        };
        let Some(desired) = desired else { continue };
        let span = tracing::info_span!("pass", revision = desired.revision, trigger = %trigger);
        let report = async {
            if !desired.dry_run && persisted != Some(key(&desired)) {
                if let Err(e) = state.save_desired(&desired) {
                    return unpersisted(&desired, trigger, &e);
                }
                persisted = Some(key(&desired));
            }
            let watcher = inputs.desired.clone();
            let stopping = inputs.stop.clone();
            let stop = move || {
                if *stopping.borrow() {
                    Some(Stop::ShuttingDown)
                } else if watcher.has_changed().unwrap_or(false) {
                    watcher
                        .borrow()
                        .as_ref()
                        .map(|d| Stop::Superseded(d.revision))
                } else {
                    None
                }
            };
            engine.run(&desired, trigger, &stop).await
        }
        .instrument(span.clone())
        .await;
        let _enter = span.enter();
        let changed_or_failed = report.results.iter().any(|r| r.status != Status::Unchanged);
        tracing::info!(
            changed = report.count(Status::Changed),
            failed = report.count(Status::Failed),
            skipped = report.count(Status::Skipped),
            micros = report.duration_micros,
            "pass done"
        );
        if !report.dry_run && report.converged() {
            backoff.reset();
            retry_at = None;
            let applied = Applied {
                revision: report.revision,
                digest: report.digest.clone(),
            };
            if let Err(e) = state.save_applied(&applied) {
                // desired.json already holds this state, so a restart keeps it; only the
                // revision announced in the next Hello is older.
                tracing::error!(error = %e, "cannot record applied revision");
            }
        } else if !report.dry_run && !*inputs.stop.borrow() {
            let wait = backoff.next_delay();
            tracing::warn!(retry_in = ?wait, attempt = backoff.attempt(), "pass did not converge; retrying");
            retry_at = Some(tokio::time::Instant::now() + wait);
        }
        drop(_enter);
        // A drift pass that found nothing is not news.
        if trigger != Trigger::Drift || changed_or_failed {
            if !report.dry_run {
                outbox.push(report.clone());
            }
            reports.send_replace(Some(Arc::new(report)));
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The report of a pass whose state could not be written: nothing was applied.
fn unpersisted(desired: &DesiredState, trigger: Trigger, e: &StateError) -> ApplyReport {
    tracing::error!(error = %e, "cannot persist desired state; not applying it");
    ApplyReport {
        revision: desired.revision,
        digest: desired.digest.clone(),
        dry_run: false,
        results: vec![ResourceResult {
            resource: STATE_RESOURCE.to_string(),
            status: Status::Failed,
            message: format!(
                "persist desired state: {e}; nothing of revision {} was applied (a restart enforces what is on disk, so applying what cannot be saved would be rolled back); retrying",
                desired.revision
            ),
            duration_micros: 0,
            diff: String::new(),
        }],
        duration_micros: 0,
        trigger: trigger.to_string(),
    }
}

#[cfg(test)]
mod tests;
