//! `phoenix forget --guest N`: drop a guest the configs no longer have. Its identity is
//! revoked first and its session ended, so its certificate is refused from then on (as
//! "not enrolled"), never silently accepted; then its agent record, desired state,
//! declared facts, last report, service certificate records and join tokens are deleted.
//! Its events stay until they age out. Bringing it back takes a new join token.

use super::CliError;
use super::render::escape_controls;
use crate::admin_client;
use phoenix_proto::model::GuestId;
use phoenix_proto::v1;
use std::path::Path;

pub(super) async fn forget(socket: &Path, guest: GuestId) -> Result<(), CliError> {
    let mut admin = admin_client::connect(socket).await?;
    let resp = admin
        .forget(v1::ForgetRequest {
            guest_id: guest.get(),
        })
        .await?
        .into_inner();
    if resp.was_connected {
        println!("guest {guest} was connected; its session was ended");
    }
    if !resp.identity.is_empty() {
        println!(
            "identity revoked: {} (any later connection is refused as not enrolled)",
            escape_controls(&resp.identity)
        );
    }
    for line in &resp.service_certs {
        println!("service certificate {}", escape_controls(line));
    }
    for line in &resp.removed {
        println!("removed {}", escape_controls(line));
    }
    println!(
        "guest {guest} forgotten (event #{}); to bring it back: `phoenix token create --guest {guest}` and join again",
        resp.event_index
    );
    Ok(())
}
