//! The agent port. Every TCP connection is admitted, handshaken and served here rather
//! than by tonic's server, because tonic keeps a TLS connection that never sends the
//! HTTP/2 preface open forever: about a thousand of them exhaust the descriptors and
//! lock agents and the admin CLI out.
//!
//! Guarantees:
//! - a connection is *pending* from accept until it is authenticated: TLS done with a
//!   client certificate our roots verify, and a first request received. At most
//!   `max_pending` are pending; more are closed at once (never queued) and logged at
//!   most every [`LOG_EVERY`];
//! - TLS handshake, HTTP/2 preface and first request must all finish within
//!   `handshake_timeout` of accept, or the connection is closed;
//! - a connection without a client certificate (enroll, renewal of an expired identity)
//!   stays pending for its whole life, which ends [`UNAUTHENTICATED_LIFETIME`] after accept;
//! - at most `max_connections` are open at all, kept below the open-file limit so the
//!   admin socket and the store always have descriptors; accept errors (EMFILE) back off.
//!
//! Authenticated sessions are watched by HTTP/2 keepalive, as before.

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout_at};
use tokio_rustls::TlsAcceptor;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tower::ServiceExt;

/// A connection without a client certificate does one RPC (enroll, renew-expired); this
/// bounds it even when it keeps sending requests.
pub const UNAUTHENTICATED_LIFETIME: Duration = Duration::from_secs(60);
/// Descriptors kept free for the admin socket, the store, the CA client and the runtime.
pub const FD_RESERVE: u64 = 128;
/// Refusals and accept errors are summarised at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long open connections get to finish their calls after shutdown starts. Sessions
/// are ended by the coordinator at once; this is for unary calls in flight (enroll, a
/// certificate from step-ca), kept short so `systemctl stop` returns within seconds.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Pause after a failed accept: with EMFILE the connection stays in the backlog, so an
/// immediate retry would fail again and spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of the agent port (see the module documentation).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_pending: usize,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
}

/// How many agent connections fit under an open-file limit of `nofile`, keeping
/// [`FD_RESERVE`] for everything else (never fewer than 16).
pub fn connection_budget(nofile: u64) -> usize {
    usize::try_from(nofile.saturating_sub(FD_RESERVE).max(16)).unwrap_or(usize::MAX)
}

/// Counts events and says when to log them: the first one at once, then at most one line
/// per period carrying how many happened in between.
#[derive(Debug)]
pub(crate) struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    unlogged: u64,
}

impl RateLimited {
    pub(crate) fn new(every: Duration) -> Self {
        RateLimited {
            every,
            last: None,
            unlogged: 0,
        }
    }

    /// `Some(n)`: log now; `n` events (this one included) since the last line.
    pub(crate) fn hit(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Why a connection was closed by us, for the rate-limited log.
#[derive(Debug, Clone, Copy)]
enum Closed {
    HandshakeTimeout,
    NoRequest,
    Lifetime,
}

/// Rate-limited log lines shared by all connections.
struct Events {
    refused: Mutex<RateLimited>,
    closed: Mutex<RateLimited>,
}

impl Events {
    fn closed(&self, peer: SocketAddr, why: Closed, limits: &Limits) {
        let n = match self.closed.lock() {
            Ok(mut r) => r.hit(Instant::now()),
            Err(_) => None,
        };
        let Some(n) = n else {
            tracing::debug!(%peer, ?why, "closed agent-port connection");
            return;
        };
        let what = match why {
            Closed::HandshakeTimeout => "TLS handshake not finished",
            Closed::NoRequest => "no request after TLS",
            Closed::Lifetime => "connection without a client certificate reached its lifetime",
        };
        tracing::warn!(
            %peer,
            closed = n,
            handshake_timeout_s = limits.handshake_timeout.as_secs(),
            lifetime_s = UNAUTHENTICATED_LIFETIME.as_secs(),
            "closed unauthenticated agent-port connection: {what}"
        );
    }
}

/// Serves `routes` on `listener` until `stop` turns true, then waits for the open
/// connections (each gets [`SHUTDOWN_GRACE`] to finish its calls).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    routes: Routes,
    limits: Limits,
    stop: watch::Receiver<bool>,
) {
    let pending = Arc::new(Semaphore::new(limits.max_pending));
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let acceptor = TlsAcceptor::from(tls);
    let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http.timer(TokioTimer::new())
        .keep_alive_interval(Some(KEEPALIVE_INTERVAL))
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    let events = Arc::new(Events {
        refused: Mutex::new(RateLimited::new(LOG_EVERY)),
        closed: Mutex::new(RateLimited::new(LOG_EVERY)),
    });
    let mut accept_errors = RateLimited::new(LOG_EVERY);
    let mut stopping = stop.clone();
    loop {
        let accepted = tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                if let Some(n) = accept_errors.hit(Instant::now()) {
                    tracing::warn!(error = %e, failures = n, "accept on the agent port failed; backing off");
                }
                sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let permits = open
            .clone()
            .try_acquire_owned()
            .ok()
            .zip(pending.clone().try_acquire_owned().ok());
        let Some((open_permit, pending_permit)) = permits else {
            drop(tcp);
            let n = match events.refused.lock() {
                Ok(mut r) => r.hit(Instant::now()),
                Err(_) => None,
            };
            if let Some(n) = n {
                tracing::warn!(
                    %peer,
                    refused = n,
                    pending = limits.max_pending - pending.available_permits(),
                    max_pending = limits.max_pending,
                    open = limits.max_connections - open.available_permits(),
                    max_connections = limits.max_connections,
                    "agent port full: closing new connections at once"
                );
            }
            continue;
        };
        tokio::spawn(connection(Conn {
            tcp,
            peer,
            acceptor: acceptor.clone(),
            http: http.clone(),
            routes: routes.clone(),
            limits: limits.clone(),
            events: events.clone(),
            open: open_permit,
            pending: pending_permit,
            stop: stop.clone(),
        }));
    }
    // Stop listening before draining so new clients are refused, not left hanging.
    drop(listener);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = open.acquire_many(all).await;
}

struct Conn {
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    http: hyper::server::conn::http2::Builder<TokioExecutor>,
    routes: Routes,
    limits: Limits,
    events: Arc<Events>,
    /// Held for the connection's whole life.
    open: OwnedSemaphorePermit,
    /// Released once the connection is authenticated.
    pending: OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
}

async fn connection(c: Conn) {
    let Conn {
        tcp,
        peer,
        acceptor,
        http,
        routes,
        limits,
        events,
        open: _open,
        pending,
        mut stop,
    } = c;
    let accepted = Instant::now();
    let first_deadline = accepted + limits.handshake_timeout;
    let _ = tcp.set_nodelay(true);
    // This future lives as long as the connection, so its size is paid per session
    // (issue 14). The handshake and the connection are boxed, and everything the
    // handshake needs is used inside this block: a local that was ever borrowed keeps its
    // own slot in an async fn's state until its scope ends, even once moved away (the
    // TLS stream alone is 1.2 KiB). Release build, `size_of_val`: 6,016 bytes before,
    // 1,112 after, beside the boxed 2,752-byte connection.
    let (mut conn, certified, first_request) = {
        let (acceptor, http) = (acceptor, http);
        let tls = match timeout_at(first_deadline, Box::pin(acceptor.accept(tcp))).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "TLS handshake refused");
                return;
            }
            Err(_) => {
                events.closed(peer, Closed::HandshakeTimeout, &limits);
                return;
            }
        };
        // What tonic's server attaches to each request; `Request::peer_certs` reads it.
        let info = tls.connect_info();
        let certified = info.peer_certs().is_some();
        let first_request = Arc::new(Notify::new());
        let svc = {
            let first_request = first_request.clone();
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                first_request.notify_one();
                req.extensions_mut().insert(info.get_ref().clone());
                req.extensions_mut().insert(info.clone());
                routes.clone().oneshot(req.map(tonic::body::Body::new))
            })
        };
        let conn = Box::pin(http.serve_connection(TokioIo::new(tls), svc));
        (conn, certified, first_request)
    };
    let mut pending = Some(pending);
    let mut first_seen = false;
    let lifetime_end = (!certified).then_some(accepted + UNAUTHENTICATED_LIFETIME);
    let mut grace_end: Option<Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "agent connection ended");
                }
                return;
            }
            _ = first_request.notified(), if !first_seen => {
                first_seen = true;
                if certified {
                    drop(pending.take());
                }
            }
            _ = sleep_until(first_deadline), if !first_seen => {
                events.closed(peer, Closed::NoRequest, &limits);
                return;
            }
            _ = sleep_until(lifetime_end.unwrap_or(first_deadline)), if lifetime_end.is_some() => {
                events.closed(peer, Closed::Lifetime, &limits);
                return;
            }
            _ = stop.wait_for(|s| *s), if grace_end.is_none() => {
                conn.as_mut().graceful_shutdown();
                grace_end = Some(Instant::now() + SHUTDOWN_GRACE);
            }
            _ = sleep_until(grace_end.unwrap_or(first_deadline)), if grace_end.is_some() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_a_reserve_and_a_floor() {
        assert_eq!(connection_budget(1024), 896);
        assert_eq!(connection_budget(20000), 19872);
        assert_eq!(connection_budget(100), 16);
        assert_eq!(connection_budget(0), 16);
    }

    #[test]
    fn rate_limited_logs_first_then_once_per_period_with_counts() {
        let mut r = RateLimited::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.hit(t0), Some(1));
        assert_eq!(r.hit(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.hit(t0 + Duration::from_secs(9)), None);
        assert_eq!(r.hit(t0 + Duration::from_secs(10)), Some(3));
        assert_eq!(r.hit(t0 + Duration::from_secs(11)), None);
        assert_eq!(r.hit(t0 + Duration::from_secs(30)), Some(2));
    }
}
