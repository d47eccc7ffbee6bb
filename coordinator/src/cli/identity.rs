//! A guest's identity: `token create` (a join token) and `revoke`.

use super::CliError;
use super::render::{escape_controls, until};
use crate::admin_client;
use phoenix_proto::model::GuestId;
use phoenix_proto::v1;
use std::path::Path;
use std::time::Duration;

/// Prints a single-use join token for `guest`.
pub(super) async fn create_token(
    socket: &Path,
    guest: GuestId,
    ttl: Duration,
    replace: bool,
) -> Result<(), CliError> {
    let mut admin = admin_client::connect(socket).await?;
    let resp = admin
        .create_token(v1::CreateTokenRequest {
            guest_id: guest.get(),
            ttl_seconds: ttl.as_secs(),
            replace,
        })
        .await?
        .into_inner();
    println!("{}", resp.token);
    eprintln!(
        "single-use join token for guest {guest}, expires {}; on the guest run: phoenix-agent join <token>",
        until(resp.expires_unix)
    );
    Ok(())
}

/// Ends the guest's session and refuses its identity until it re-joins.
pub(super) async fn revoke(socket: &Path, guest: GuestId) -> Result<(), CliError> {
    let mut admin = admin_client::connect(socket).await?;
    let resp = admin
        .revoke(v1::RevokeRequest {
            guest_id: guest.get(),
        })
        .await?
        .into_inner();
    println!(
        "revoked identity {} of guest {guest} ({}); its session was ended and it is refused until it re-joins",
        resp.serial,
        escape_controls(&resp.identity)
    );
    for line in &resp.service_certs {
        println!("service certificate {}", escape_controls(line));
    }
    Ok(())
}
