//! Who may read the status page.
//!
//! The page is read-only, but it shows the fleet's layout, failure messages and
//! certificate names, so a reader must be someone the operator chose:
//! - on a loopback address without a token file, any local account of the host may read
//!   it (as it may read `/metrics`); a browser only reaches it under a loopback or IP
//!   `Host`, so a web site cannot read it through DNS rebinding;
//! - with `--status-token-file` (required for any other address), every request must
//!   carry that token, as `Authorization: Bearer <token>` (curl, scripts) or as the
//!   password of HTTP Basic authentication (a browser asks for it; the user name is
//!   ignored). The token is compared in constant time.
//!
//! The page is served over plain HTTP: beyond loopback, put it behind a TLS-terminating
//! proxy or an SSH tunnel, or anyone who can watch the network learns the token (and with
//! it, read access to the page; it grants nothing else).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A shorter token can be guessed by a network peer that tries long enough.
const MIN_TOKEN_CHARS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("read the status page token file {path}: {source}")]
    ReadToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("status page token file {path}: {reason}")]
    BadToken { path: PathBuf, reason: String },
    #[error(
        "--status-listen {addr} is not a loopback address: the page would be readable by anyone who reaches it; give --status-token-file too"
    )]
    Unauthenticated { addr: SocketAddr },
}

/// Why a request was refused; each becomes an HTTP answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials, or the wrong ones (401, asks the browser for them).
    Unauthorized,
    /// A `Host` that is a name other than `localhost` on an unauthenticated page (421).
    ForeignHost,
}

/// The page's access policy, decided once before the listener is bound.
pub struct Access {
    /// SHA-256 of the token; `None`: loopback without a token.
    token: Option<[u8; 32]>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.map(|_| "<set>"))
            .finish()
    }
}

impl Access {
    /// Checks the listen address against the token file and reads the token. A
    /// non-loopback address without a token file is refused.
    pub fn new(listen: SocketAddr, token_file: Option<&Path>) -> Result<Self, AccessError> {
        let token = match token_file {
            Some(path) => Some(read_token(path)?),
            None if listen.ip().is_loopback() => None,
            None => return Err(AccessError::Unauthenticated { addr: listen }),
        };
        Ok(Access {
            token: token.map(|t| Sha256::digest(t.as_bytes()).into()),
        })
    }

    /// Whether a request with these headers may read the page.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(want) = &self.token else {
            return host_is_local(headers)
                .then_some(())
                .ok_or(Refusal::ForeignHost);
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(presented_token)
            .ok_or(Refusal::Unauthorized)?;
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        // Equal-length digests, every byte compared: the time taken says nothing about
        // how much of the token was right.
        let diff = want
            .iter()
            .zip(given.iter())
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(Refusal::Unauthorized)
        }
    }
}

/// The token of `Bearer <t>` or the password of `Basic base64(user:t)`.
fn presented_token(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

/// `Host` is `localhost` or an IP literal (with or without a port). A page without a
/// token is only for the host's own users; a name that resolves to 127.0.0.1 for a
/// browser (DNS rebinding) would let a web site read it.
fn host_is_local(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        // HTTP/1.0 clients may send none; no browser does.
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// The token file's first line. It must not be readable by every local account, and
/// long enough not to be guessed.
fn read_token(path: &Path) -> Result<String, AccessError> {
    let bad = |reason: String| AccessError::BadToken {
        path: path.to_path_buf(),
        reason,
    };
    let read = |source| AccessError::ReadToken {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(bad(format!(
            "mode {:o} lets every local account read the token (chmod 0600 or 0640)",
            mode & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.chars().count() < MIN_TOKEN_CHARS {
        return Err(bad(format!(
            "the token must be at least {MIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 32`)"
        )));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    fn token_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("token");
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn beyond_loopback_a_token_is_required() {
        let e = Access::new(addr("0.0.0.0:8080"), None).expect_err("refused");
        assert!(e.to_string().contains("--status-token-file"), "{e}");
        Access::new(addr("127.0.0.1:8080"), None).expect("loopback");
        Access::new(addr("[::1]:8080"), None).expect("loopback v6");
    }

    #[test]
    fn weak_or_world_readable_tokens_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = token_file(dir.path(), "short\n", 0o600);
        let e = Access::new(addr("0.0.0.0:1"), Some(&p)).expect_err("short");
        assert!(e.to_string().contains("at least 16"), "{e}");
        let p = token_file(dir.path(), "0123456789abcdef0123\n", 0o644);
        let e = Access::new(addr("0.0.0.0:1"), Some(&p)).expect_err("readable");
        assert!(e.to_string().contains("every local account"), "{e}");
    }

    #[test]
    fn only_the_right_token_is_let_in_as_bearer_or_basic_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = "0123456789abcdef0123";
        let p = token_file(dir.path(), &format!("{secret}\n"), 0o600);
        let a = Access::new(addr("0.0.0.0:1"), Some(&p)).expect("access");
        let auth = header::AUTHORIZATION;
        assert_eq!(a.check(&headers(&[])), Err(Refusal::Unauthorized));
        for wrong in [
            "Bearer 0123456789abcdef012",
            "Bearer ",
            "Token 0123456789abcdef0123",
            "Basic !!!",
        ] {
            assert_eq!(
                a.check(&headers(&[(auth.clone(), wrong)])),
                Err(Refusal::Unauthorized),
                "{wrong}"
            );
        }
        assert_eq!(
            a.check(&headers(&[(auth.clone(), &format!("Bearer {secret}"))])),
            Ok(())
        );
        let basic = STANDARD.encode(format!("anyone:{secret}"));
        assert_eq!(
            a.check(&headers(&[(auth.clone(), &format!("Basic {basic}"))])),
            Ok(())
        );
        // With a token the Host does not matter (a rebinding page has no token).
        assert_eq!(
            a.check(&headers(&[
                (auth, &format!("Bearer {secret}")),
                (header::HOST, "status.example:8080")
            ])),
            Ok(())
        );
    }

    #[test]
    fn without_a_token_only_local_host_names_are_served() {
        let a = Access::new(addr("127.0.0.1:1"), None).expect("access");
        for ok in ["127.0.0.1:8080", "localhost:1", "[::1]:8080", "127.0.0.1"] {
            assert_eq!(a.check(&headers(&[(header::HOST, ok)])), Ok(()), "{ok}");
        }
        for foreign in [
            "attacker.example:8080",
            "attacker.example",
            "127.0.0.1.nip.io",
        ] {
            assert_eq!(
                a.check(&headers(&[(header::HOST, foreign)])),
                Err(Refusal::ForeignHost),
                "{foreign}"
            );
        }
    }
}
