//! The status page: a read-only HTML view of the fleet (`phoenix serve --status-listen`,
//! off by default), served by the daemon on a listener of its own through [`crate::httpd`].
//!
//! - [`view`] reads what the page shows from the store, the hub and the identity, at
//!   request time (the same sources as `phoenix status` and `phoenix certs`);
//! - [`page`] renders it server-side, with [`html`] escaping every value;
//! - [`auth`] decides who may read it: loopback by default, a token file required for
//!   any other address (see that module for the threat it answers).
//!
//! No script is served or allowed (Content-Security-Policy `default-src 'none'`), so even
//! a value that escaped escaping could not run; the browser refreshes the page itself.

mod auth;
mod html;
mod page;
mod view;

pub use auth::{Access, AccessError};
pub use view::{Health, health};

use crate::httpd;
use crate::server::Coordinator;
use auth::Refusal;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("listen for the status page on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// Binds `addr` and serves the page there, as `access` allows, until `stop` turns true.
/// Returns the bound address (`addr` may have port 0).
pub async fn spawn(
    c: Arc<Coordinator>,
    addr: SocketAddr,
    access: Access,
    stop: watch::Receiver<bool>,
) -> Result<SocketAddr, WebError> {
    let listen_err = |source| WebError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen_err)?;
    let bound = listener.local_addr().map_err(listen_err)?;
    let access = Arc::new(access);
    let handler: httpd::Handler = Arc::new(move |req, peer| answer(&c, &access, req, peer));
    tokio::spawn(httpd::serve(listener, "status page", handler, stop));
    Ok(bound)
}

fn answer(
    c: &Coordinator,
    access: &Access,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Response<String> {
    // Authorization first: a stranger learns nothing, not even which paths exist.
    if let Err(refusal) = access.check(req.headers()) {
        tracing::info!(%peer, ?refusal, "status page: request refused");
        let mut r = match refusal {
            Refusal::Unauthorized => httpd::text(
                StatusCode::UNAUTHORIZED,
                "the status page needs its token (Authorization: Bearer, or as the Basic password)",
            ),
            Refusal::ForeignHost => httpd::text(
                StatusCode::MISDIRECTED_REQUEST,
                "the status page answers only to localhost or an IP address",
            ),
        };
        if refusal == Refusal::Unauthorized {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"phoenix status\", charset=\"UTF-8\""),
            );
        }
        return hardened(r);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return hardened(httpd::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the status page is read-only: GET only",
        ));
    }
    if req.uri().path() != "/" {
        return hardened(httpd::text(
            StatusCode::NOT_FOUND,
            "not found; the status page is at /",
        ));
    }
    let mut r = match view::gather(c) {
        Ok(p) => Response::new(page::render(&p)),
        Err(e) => {
            tracing::warn!(error = %e, "status page: reading the store failed");
            return hardened(httpd::text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the coordinator could not read its store: {e}"),
            ));
        }
    };
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    hardened(r)
}

/// Headers of every answer: no script, no framing, no caching of fleet details, no
/// content sniffing, no referrer leaking the page's address.
fn hardened(mut r: Response<String>) -> Response<String> {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}
