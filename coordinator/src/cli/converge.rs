//! `phoenix converge --guest N`: have the guest's agent run a pass now on its current
//! desired state, even when the revision is unchanged (after fixing what made a resource
//! fail, or to repair drift without waiting for the drift interval), and print its
//! report. Exits non-zero when the pass did not converge or no report came in time.
//!
//! `apply --force` asks the same of every guest in scope whose state the apply left
//! unchanged, and follows the reports through [`requested_reports`].
//!
//! In a cluster the replica asked forwards the request through etcd to the replica
//! holding the guest's session (docs/design/0010); the report is followed in the event
//! log, which every replica shares, so it makes no difference here.

use super::CliError;
use super::events::{line, payload};
use crate::admin_client;
use crate::store::Topic;
use phoenix_proto::model::{ApplyReport, GuestId, ResourceResult};
use phoenix_proto::v1;
use phoenix_proto::v1::admin_client::AdminClient;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;

/// The trigger of a pass the agent runs because it was asked to.
const TRIGGER: &str = "converge";

/// Asks the agent of `guest` to run a pass now. Refused when the guest has no desired
/// state or is not connected.
pub(super) async fn request(
    admin: &mut AdminClient<Channel>,
    guest: u32,
) -> Result<v1::ConvergeResponse, tonic::Status> {
    Ok(admin
        .converge(v1::ConvergeRequest { guest_id: guest })
        .await?
        .into_inner())
}

/// The report events of `guests` recorded after `since` (an index from [`request`]).
async fn report_events(
    admin: &mut AdminClient<Channel>,
    guests: Vec<u32>,
    since: u64,
) -> Result<tonic::Streaming<v1::EventMessage>, CliError> {
    Ok(admin
        .events(v1::EventsRequest {
            since,
            follow: true,
            guest_ids: guests,
            topics: vec![Topic::Report.to_string()],
        })
        .await?
        .into_inner())
}

/// The reports of requested passes of `guests` recorded after `since`, for the apply
/// follower. Read from the event log rather than the report watch, which starts with each
/// guest's last stored report: that one may be an older requested pass.
pub(super) async fn requested_reports(
    admin: &mut AdminClient<Channel>,
    guests: Vec<u32>,
    since: u64,
) -> Result<impl Stream<Item = Result<v1::ReportEvent, tonic::Status>> + Unpin, CliError> {
    let events = report_events(admin, guests, since).await?;
    Ok(events.filter_map(|m| match m {
        Err(s) => Some(Err(s)),
        Ok(m) => {
            let p = payload(&m);
            if p["trigger"] != TRIGGER {
                return None;
            }
            let guest_id = m.key.parse().ok()?;
            let report = report_of(&p)?;
            Some(Ok(v1::ReportEvent {
                guest_id,
                report: Some(v1::ApplyReport::from(&report)),
            }))
        }
    }))
}

/// The report a report event's payload records. The event keeps resources that did not
/// change by name only (and cuts long texts), which is all the follower shows of them.
fn report_of(p: &Value) -> Option<ApplyReport> {
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let results = p["results"]
        .as_array()?
        .iter()
        .map(|r| {
            Some(ResourceResult {
                resource: text(r, "resource"),
                status: serde_json::from_value(r["status"].clone()).ok()?,
                message: text(r, "message"),
                duration_micros: 0,
                diff: text(r, "diff"),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ApplyReport {
        revision: p["revision"].as_u64()?,
        digest: text(p, "digest"),
        dry_run: false,
        results,
        duration_micros: p["duration_micros"].as_u64().unwrap_or_default(),
        trigger: text(p, "trigger"),
    })
}

pub(super) async fn converge(
    socket: &Path,
    guest: GuestId,
    timeout: Duration,
    no_wait: bool,
) -> Result<(), CliError> {
    let mut admin = admin_client::connect(socket).await?;
    let resp = request(&mut admin, guest.get()).await?;
    if resp.replica.is_empty() {
        println!(
            "guest {guest}: pass requested on revision {}",
            resp.revision
        );
    } else {
        println!(
            "guest {guest}: pass requested on revision {} through replica {} (its session is there)",
            resp.revision,
            super::render::escape_controls(&resp.replica)
        );
    }
    if no_wait {
        return Ok(());
    }
    // The pass's report is recorded after the request: follow from there.
    let mut stream = report_events(&mut admin, vec![guest.get()], resp.after_index).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let m = match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => {
                return Err(CliError::Rpc("coordinator closed the event stream".into()));
            }
            Ok(Err(s)) => return Err(s.into()),
            Err(_) => {
                return Err(CliError::NotConverged(format!(
                    "guest {guest}: no report of the requested pass within {}s",
                    timeout.as_secs()
                )));
            }
        };
        let p = payload(&m);
        if p["trigger"] != TRIGGER {
            continue;
        }
        println!("{}", line(&m));
        return if p["converged"].as_bool() == Some(true) {
            Ok(())
        } else {
            Err(CliError::NotConverged(format!(
                "guest {guest}: the pass did not converge"
            )))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_proto::model::Status;

    #[test]
    fn a_report_event_gives_back_the_report_it_records() {
        let p = serde_json::json!({
            "revision": 7, "digest": "d", "trigger": "converge", "duration_micros": 12,
            "results": [
                {"resource": "file:/a", "status": "unchanged"},
                {"resource": "file:/b", "status": "failed", "message": "write: EACCES", "diff": "+x"},
            ],
        });
        let r = report_of(&p).expect("report");
        assert_eq!((r.revision, r.trigger.as_str()), (7, "converge"));
        assert_eq!(r.results[1].status, Status::Failed);
        assert_eq!(r.results[1].message, "write: EACCES");
        assert!(!r.converged());
        // A status this build does not know is no report rather than a wrong one.
        let bad =
            serde_json::json!({"revision": 1, "results": [{"resource": "x", "status": "odd"}]});
        assert!(report_of(&bad).is_none());
    }
}
