//! The `/metrics` listener: plain HTTP/1.1, GET only, OpenMetrics text. It carries no
//! authentication, so it is off by default and meant for loopback (or a network only the
//! Prometheus server reaches); guest ids and certificate names are all it reveals.

use super::{live::Live, registry};
use crate::httpd;
use crate::server::Coordinator;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("listen for metrics on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `addr` and serves the coordinator's metrics there until `stop` turns true.
/// Returns the bound address (`addr` may have port 0).
pub async fn spawn(
    c: Arc<Coordinator>,
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
) -> Result<SocketAddr, MetricsError> {
    let listen_err = |source| MetricsError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen_err)?;
    let bound = listener.local_addr().map_err(listen_err)?;
    let registry = Arc::new(registry(&c.metrics.clone(), Some(Live(c))));
    let handler: httpd::Handler = Arc::new(move |req, _peer| answer(req, &registry));
    tokio::spawn(httpd::serve(listener, "metrics", handler, stop));
    Ok(bound)
}

fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<String> {
    let status = httpd::text;
    if req.uri().path() != "/metrics" {
        return status(StatusCode::NOT_FOUND, "not found; metrics are at /metrics");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return status(StatusCode::METHOD_NOT_ALLOWED, "only GET");
    }
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, registry) {
        tracing::warn!(error = %e, "metrics: encoding failed");
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed",
        );
    }
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    r
}
