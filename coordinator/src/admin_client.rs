//! Client side of the admin channel: gRPC over the daemon's unix socket.

use hyper_util::rt::TokioIo;
use phoenix_proto::MAX_MESSAGE_BYTES;
use phoenix_proto::v1;
use phoenix_proto::v1::admin_client::AdminClient;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;
use tonic::Status;
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum AdminConnectError {
    #[error(
        "connect to the coordinator's admin socket {path}: {reason} (is `phoenix serve` running, and may you use the socket?)"
    )]
    Connect { path: String, reason: String },
}

pub async fn connect(path: &Path) -> Result<AdminClient<Channel>, AdminConnectError> {
    let socket: PathBuf = path.to_path_buf();
    let err = |reason: String| AdminConnectError::Connect {
        path: path.display().to_string(),
        reason,
    };
    // Fail early with the socket's own error (ENOENT, EACCES) rather than tonic's.
    UnixStream::connect(&socket)
        .await
        .map_err(|e| err(e.to_string()))?;
    let channel = tonic::transport::Endpoint::from_static("http://admin.invalid")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(AdminClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Apply parts are cut at this size, well under the message limit, so a fleet of any size
/// goes through (one guest's spec is limited to half the message limit by the CLI).
const APPLY_PART_BYTES: usize = MAX_MESSAGE_BYTES / 4;

/// Every guest's status, as the daemon streams it (one message per guest).
pub async fn status(admin: &mut AdminClient<Channel>) -> Result<Vec<v1::GuestStatus>, Status> {
    let mut stream = admin.status(v1::StatusRequest {}).await?.into_inner();
    let mut out = Vec::new();
    while let Some(g) = stream.message().await? {
        out.push(g);
    }
    Ok(out)
}

/// One apply of `guests` (id → spec JSON) with `declared` (id → declared JSON), sent in
/// parts below the message limit and applied by the daemon as one; its answer per guest.
pub async fn apply(
    admin: &mut AdminClient<Channel>,
    guests: BTreeMap<u32, Vec<u8>>,
    declared: BTreeMap<u32, Vec<u8>>,
    dry_run: bool,
) -> Result<Vec<v1::GuestApply>, Status> {
    apply_waiting(admin, guests, declared, dry_run, std::time::Duration::ZERO).await
}

/// [`apply`], saying how long the caller waits for the reports of a plan: a cluster keeps
/// plans forwarded to other replicas at least that long (zero: its default).
pub async fn apply_waiting(
    admin: &mut AdminClient<Channel>,
    guests: BTreeMap<u32, Vec<u8>>,
    mut declared: BTreeMap<u32, Vec<u8>>,
    dry_run: bool,
    plan_wait: std::time::Duration,
) -> Result<Vec<v1::GuestApply>, Status> {
    let empty = || v1::AdminApplyRequest {
        dry_run,
        plan_wait_seconds: if dry_run { plan_wait.as_secs() } else { 0 },
        ..Default::default()
    };
    let mut parts = Vec::new();
    let (mut part, mut size) = (empty(), 0);
    for (g, spec) in guests {
        // Map entry framing (key, tags, lengths) is under 32 bytes per guest and field.
        size += spec.len() + 32;
        part.guests.insert(g, spec);
        if let Some(d) = declared.remove(&g) {
            size += d.len() + 32;
            part.declared_json.insert(g, d);
        }
        if size >= APPLY_PART_BYTES {
            parts.push(std::mem::replace(&mut part, empty()));
            size = 0;
        }
    }
    part.declared_json.extend(declared);
    parts.push(part);
    let mut answers = admin.apply(tokio_stream::iter(parts)).await?.into_inner();
    let mut out = Vec::new();
    while let Some(a) = answers.message().await? {
        out.push(a);
    }
    Ok(out)
}
