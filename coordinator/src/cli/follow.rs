//! The apply follower: live progress of an apply or plan. Prints each awaited guest's
//! report as it arrives and decides the exit status (a timeout or a guest that did not
//! converge is `NotConverged`).

use super::CliError;
use super::render::{escape_controls, report_summary};
use phoenix_proto::model::{ApplyReport, Status};
use phoenix_proto::v1;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Waits for a relevant report from every guest in `pending` (guest → the revision and
/// digest just pushed) until `timeout`.
pub(super) async fn follow(
    reports: &mut tonic::Streaming<v1::ReportEvent>,
    mut pending: BTreeMap<u32, (u64, String)>,
    dry_run: bool,
    timeout: Duration,
) -> Result<(), CliError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut failed: BTreeSet<u32> = BTreeSet::new();
    while !pending.is_empty() {
        let ev = match tokio::time::timeout_at(deadline, reports.message()).await {
            Ok(Ok(Some(ev))) => ev,
            Ok(Ok(None)) => {
                return Err(CliError::Rpc("coordinator closed the report stream".into()));
            }
            Ok(Err(s)) => return Err(s.into()),
            Err(_) => break,
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
            "plan"
        } else if report.converged() {
            "converged"
        } else {
            "NOT converged"
        };
        println!(
            "guest {} rev {}: {verdict}: {}",
            ev.guest_id,
            if dry_run {
                "-".to_string()
            } else {
                report.revision.to_string()
            },
            report_summary(&report)
        );
        for r in &report.results {
            if r.status != Status::Unchanged {
                let detail = if r.diff.is_empty() {
                    &r.message
                } else {
                    &r.diff
                };
                // The agent's words: escaped line by line, the diff keeps its lines.
                let detail: Vec<String> = detail.lines().map(escape_controls).collect();
                println!(
                    "  {:<9} {}  {}",
                    r.status.to_string(),
                    escape_controls(&r.resource),
                    detail.join("\n            ")
                );
            }
        }
        if !dry_run && !report.converged() {
            failed.insert(ev.guest_id);
        }
        pending.remove(&ev.guest_id);
    }
    if !pending.is_empty() {
        let list: Vec<String> = pending.keys().map(|g| g.to_string()).collect();
        return Err(CliError::NotConverged(format!(
            "timed out after {}s waiting for guests {}",
            timeout.as_secs(),
            list.join(", ")
        )));
    }
    if !failed.is_empty() {
        let list: Vec<String> = failed.iter().map(|g| g.to_string()).collect();
        return Err(CliError::NotConverged(format!(
            "guests not converged: {}",
            list.join(", ")
        )));
    }
    Ok(())
}
