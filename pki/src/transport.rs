//! TLS under tonic, done by hand so certificates can rotate in memory (tonic's own TLS
//! takes a fixed identity): a connector doing the rustls handshake; the URI is `http://`
//! because TLS is ours. The server side (admission, deadlines) is the coordinator's
//! `server::listener`.

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

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
