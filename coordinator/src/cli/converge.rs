//! `phoenix converge --guest N`: have the guest's agent run a pass now on its current
//! desired state, even when the revision is unchanged (after fixing what made a resource
//! fail, or to repair drift without waiting for the drift interval), and print its
//! report. Exits non-zero when the pass did not converge or no report came in time.

use super::CliError;
use super::events::{line, payload};
use crate::admin_client;
use crate::store::Topic;
use phoenix_proto::model::GuestId;
use phoenix_proto::v1;
use std::path::Path;
use std::time::Duration;

pub(super) async fn converge(
    socket: &Path,
    guest: GuestId,
    timeout: Duration,
    no_wait: bool,
) -> Result<(), CliError> {
    let mut admin = admin_client::connect(socket).await?;
    let resp = admin
        .converge(v1::ConvergeRequest {
            guest_id: guest.get(),
        })
        .await?
        .into_inner();
    println!(
        "guest {guest}: pass requested on revision {}",
        resp.revision
    );
    if no_wait {
        return Ok(());
    }
    // The pass's report is recorded after the request: follow from there.
    let mut stream = admin
        .events(v1::EventsRequest {
            since: resp.after_index,
            follow: true,
            guest_ids: vec![guest.get()],
            topics: vec![Topic::Report.to_string()],
        })
        .await?
        .into_inner();
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
        if p["trigger"] != "converge" {
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
