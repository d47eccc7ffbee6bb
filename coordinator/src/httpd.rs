//! The daemon's small plain-HTTP/1.1 listeners (the Prometheus `/metrics` endpoint and the
//! status page): one accept loop, one connection budget and one header timeout for both.
//! Each listener brings a handler that turns a request (and the peer's address) into a
//! complete response; bodies are small and built in memory.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Connections served at once per listener; more are closed (a scraper or a browser
/// needs a few).
const MAX_CONNECTIONS: usize = 16;
/// A client must send its request headers within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one request; `SocketAddr` is the peer.
pub type Handler = Arc<dyn Fn(&Request<Incoming>, SocketAddr) -> Response<String> + Send + Sync>;

/// Serves `listener` with `handler` until `stop` turns true. `name` labels the logs.
pub async fn serve(
    listener: TcpListener,
    name: &'static str,
    handler: Handler,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE leaves the connection in the backlog: pause instead of spinning.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(listener = name, %peer, "too many connections, closing");
            continue;
        };
        let handler = handler.clone();
        let conn = http.serve_connection(
            TokioIo::new(tcp),
            hyper::service::service_fn(move |req| {
                let answer = handler(&req, peer);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(listener = name, %peer, error = %e, "connection ended");
            }
            drop(slot);
        });
    }
}

/// A plain-text answer with `code`.
pub fn text(code: http::StatusCode, text: &str) -> Response<String> {
    let mut r = Response::new(format!("{text}\n"));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
