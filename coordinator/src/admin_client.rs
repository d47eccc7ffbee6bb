//! Client side of the admin channel: gRPC over the daemon's unix socket.

use hyper_util::rt::TokioIo;
use phoenix_proto::MAX_MESSAGE_BYTES;
use phoenix_proto::v1::admin_client::AdminClient;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;
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
