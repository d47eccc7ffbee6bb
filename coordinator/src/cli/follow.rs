//! The apply follower: waits for each awaited guest's report, hands it to
//! [`Progress`] as it arrives (with a progress tick about once a second) and decides the
//! exit status (a timeout or a guest that did not converge is `NotConverged`).

use super::CliError;
use super::progress::{Progress, Verdict};
use phoenix_proto::model::ApplyReport;
use phoenix_proto::v1;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};

/// Waits for a relevant report from every guest in `pending` (guest → the revision and
/// digest just pushed) until `timeout`. `failed`: guests already known not to converge
/// (a pass `--force` could not request), counted in the exit status.
pub(super) async fn follow(
    reports: &mut (impl Stream<Item = Result<v1::ReportEvent, tonic::Status>> + Unpin),
    mut pending: BTreeMap<u32, (u64, String)>,
    dry_run: bool,
    timeout: Duration,
    progress: &mut Progress,
    mut failed: Vec<u32>,
) -> Result<(), CliError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let total = pending.len();
    let mut converged: Vec<u32> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !pending.is_empty() {
        let ev = tokio::select! {
            _ = tick.tick() => {
                progress.waiting(&pending, total);
                continue;
            }
            r = tokio::time::timeout_at(deadline, reports.next()) => match r {
                Ok(Some(Ok(ev))) => ev,
                Ok(None) => {
                    return Err(CliError::Rpc("coordinator closed the report stream".into()));
                }
                Ok(Some(Err(s))) => return Err(s.into()),
                Err(_) => break,
            },
        };
        let Some(report) = ev.report.and_then(|r| ApplyReport::try_from(r).ok()) else {
            continue;
        };
        let Some((rev, digest)) = pending.get(&ev.guest_id) else {
            continue;
        };
        let relevant = if dry_run {
            report.dry_run && &report.digest == digest
        } else {
            !report.dry_run
                && report.revision >= *rev
                && (report.revision > *rev || &report.digest == digest)
        };
        if !relevant {
            continue;
        }
        let verdict = if dry_run {
            Verdict::Plan
        } else if report.converged() {
            Verdict::Converged
        } else {
            Verdict::NotConverged
        };
        progress.report(ev.guest_id, &report, verdict);
        match verdict {
            Verdict::NotConverged => failed.push(ev.guest_id),
            Verdict::Plan | Verdict::Converged => converged.push(ev.guest_id),
        }
        pending.remove(&ev.guest_id);
    }
    let timed_out: Vec<u32> = pending.keys().copied().collect();
    progress.done(&converged, &failed, &timed_out);
    let list = |ids: &[u32]| {
        ids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !timed_out.is_empty() {
        return Err(CliError::NotConverged(format!(
            "timed out after {}s waiting for guests {}",
            timeout.as_secs(),
            list(&timed_out)
        )));
    }
    if !failed.is_empty() {
        failed.sort_unstable();
        return Err(CliError::NotConverged(format!(
            "guests not converged: {}",
            list(&failed)
        )));
    }
    Ok(())
}
