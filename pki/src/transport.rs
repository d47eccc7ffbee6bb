//! TLS under tonic, done by hand so certificates can rotate in memory (tonic's own TLS
//! takes a fixed identity). Server: accept TCP, handshake in a spawned task with a
//! timeout (a slow client never stalls accepts), hand finished streams to tonic. Client:
//! a connector doing the rustls handshake; the URI is `http://` because TLS is ours.

use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A stream of TLS connections for `Server::serve_with_incoming_shutdown`, for test
/// servers; the coordinator's agent port uses its own admission (`server::listener`). Failed
/// handshakes are logged and dropped; they never end the stream.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(256);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                break;
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// gRPC channel knobs, set explicitly rather than inherited.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to coordinator at {addr}: invalid server name {name:?}")]
    ServerName { addr: String, name: String },
    #[error("connect to coordinator at {addr}: {}", error_chain(source))]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// `outer: inner: innermost`, because tonic's transport errors hide the TLS reason
/// (bad certificate, unknown CA) in their sources.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

/// Dials `addr` (host:port), verifying the server as `server_name`.
pub async fn connect(
    addr: &str,
    server_name: &str,
    config: Arc<ClientConfig>,
    opts: &ChannelOptions,
) -> Result<tonic::transport::Channel, ConnectError> {
    let name =
        ServerName::try_from(server_name.to_string()).map_err(|_| ConnectError::ServerName {
            addr: addr.to_string(),
            name: server_name.to_string(),
        })?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|source| ConnectError::Connect {
            addr: addr.to_string(),
            source,
        })?
        .connect_timeout(opts.connect_timeout)
        .http2_keep_alive_interval(opts.keepalive_interval)
        .keep_alive_timeout(opts.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let target = addr.to_string();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let connector = TlsConnector::from(config.clone());
        let name = name.clone();
        let target = target.clone();
        async move {
            let tcp = TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| ConnectError::Connect {
            addr: addr.to_string(),
            source,
        })
}
