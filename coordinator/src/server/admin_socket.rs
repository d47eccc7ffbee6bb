//! The admin socket: claimed before anything else changes, bound with its final mode,
//! served on a thread of its own, and every connection checked by its peer credentials.
//!
//! - `claim` refuses a path that exists and is not a socket (it never deletes a file),
//!   refuses when another daemon holds `<path>.lock` or answers on the socket, and only
//!   replaces a socket nobody listens on (left by a killed daemon).
//! - `bind` creates the socket inside a fresh 0700 directory, sets mode and group there and
//!   renames it onto the path, so the path never exists with a looser mode (no process-wide
//!   umask change needed). The returned guard removes it on exit and on a failed start.
//! - Each connection's `SO_PEERCRED` is checked: root, the daemon's own uid, or a member of
//!   the admin group (primary or supplementary, read from `/proc/<pid>/status`). Others
//!   get `PERMISSION_DENIED` naming their uid, even when the file mode was loosened.
//! - The server runs on its own thread and runtime, so a flood on the agent port cannot
//!   starve it of CPU time; accept errors back off instead of spinning.

use super::listener::{LOG_EVERY, RateLimited};
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Gid, Uid};
use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::server::Connected;

/// How long admin calls get to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum AdminSocketError {
    #[error(
        "admin socket {path}: it exists and is not a socket ({kind}); refusing to replace it (remove it or choose another --admin-socket)"
    )]
    NotASocket { path: String, kind: &'static str },
    #[error("admin socket {path}: another phoenix serve is running there ({evidence})")]
    InUse {
        path: String,
        evidence: &'static str,
    },
    #[error("admin socket {path}: admin group {group:?} does not exist")]
    NoGroup { path: String, group: String },
    #[error("admin socket {path}: look up admin group {group:?}: {source}")]
    GroupLookup {
        path: String,
        group: String,
        #[source]
        source: nix::Error,
    },
    #[error("admin socket {path}: lock {lock}: {source}")]
    Lock {
        path: String,
        lock: String,
        #[source]
        source: nix::Error,
    },
    #[error("admin socket {path}: {action} {object}: {source}")]
    Io {
        path: String,
        action: &'static str,
        object: String,
        #[source]
        source: io::Error,
    },
}

/// Who may use the socket, resolved once at start.
#[derive(Debug, Clone)]
pub struct Policy {
    own_uid: u32,
    group: Option<(String, u32)>,
    path: String,
}

impl Policy {
    /// `None` when the peer may use the socket, else the refusal to send back.
    pub fn refusal(&self, uid: u32, gid: u32, groups: &[u32]) -> Option<String> {
        if uid == 0 || uid == self.own_uid {
            return None;
        }
        if let Some((_, admin)) = &self.group
            && (gid == *admin || groups.contains(admin))
        {
            return None;
        }
        let who = match &self.group {
            Some((name, _)) => format!(
                "root, uid {} (the daemon) and members of group {name}",
                self.own_uid
            ),
            None => format!(
                "root and uid {} (the daemon); serve with --admin-group to allow a group",
                self.own_uid
            ),
        };
        Some(format!(
            "permission denied: uid {uid} may not use the admin socket {}: only {who} may",
            self.path
        ))
    }
}

/// The admin socket path, locked for this daemon and checked, not yet bound.
#[derive(Debug)]
pub struct Claim {
    path: PathBuf,
    lock: Flock<File>,
    policy: Policy,
}

fn io_err(path: &Path, action: &'static str, object: &Path, source: io::Error) -> AdminSocketError {
    AdminSocketError::Io {
        path: path.display().to_string(),
        action,
        object: object.display().to_string(),
        source,
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a fifo"
    } else {
        "a device"
    }
}

/// Locks and checks `path` for a new daemon; changes nothing that exists.
pub fn claim(path: &Path, admin_group: Option<&str>) -> Result<Claim, AdminSocketError> {
    let shown = path.display().to_string();
    let group = match admin_group {
        None => None,
        Some(name) => {
            let g = nix::unistd::Group::from_name(name)
                .map_err(|source| AdminSocketError::GroupLookup {
                    path: shown.clone(),
                    group: name.to_string(),
                    source,
                })?
                .ok_or_else(|| AdminSocketError::NoGroup {
                    path: shown.clone(),
                    group: name.to_string(),
                })?;
            Some((name.to_string(), g.gid.as_raw()))
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_err(path, "create directory", dir, e))?;
    }
    let lock_file = lock_path(path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&lock_file)
        .map_err(|e| io_err(path, "open lock file", &lock_file, e))?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            AdminSocketError::InUse {
                path: shown.clone(),
                evidence: "it holds the lock file",
            }
        } else {
            AdminSocketError::Lock {
                path: shown.clone(),
                lock: lock_file.display().to_string(),
                source: errno,
            }
        }
    })?;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path, "inspect", path, e)),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(AdminSocketError::NotASocket {
                path: shown,
                kind: kind(meta.file_type()),
            });
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(AdminSocketError::InUse {
                    path: shown,
                    evidence: "it answers on the socket",
                });
            }
            // Left by a daemon that was killed; `bind` replaces it.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %shown, "replacing a stale admin socket");
            }
            Err(e) => return Err(io_err(path, "probe existing socket", path, e)),
        },
    }
    Ok(Claim {
        path: path.to_path_buf(),
        lock,
        policy: Policy {
            own_uid: Uid::effective().as_raw(),
            group,
            path: shown,
        },
    })
}

impl Claim {
    /// Binds the socket with its final mode (0600, or 0660 and the admin group) already
    /// set when it appears at the path.
    pub fn bind(self) -> Result<Bound, AdminSocketError> {
        let path = &self.path;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let private = dir.join(format!(
            ".{name}.{}.{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(|e| io_err(path, "create directory", &private, e))?;
        let staged = private.join("s");
        let result = (|| {
            let listener = std::os::unix::net::UnixListener::bind(&staged)
                .map_err(|e| io_err(path, "bind", &staged, e))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| io_err(path, "configure", &staged, e))?;
            let mode = if self.policy.group.is_some() {
                0o660
            } else {
                0o600
            };
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_err(path, "set mode of", &staged, e))?;
            if let Some((_, gid)) = &self.policy.group {
                nix::unistd::chown(&staged, None, Some(Gid::from_raw(*gid)))
                    .map_err(|e| io_err(path, "set group of", &staged, e.into()))?;
            }
            std::fs::rename(&staged, path).map_err(|e| io_err(path, "move socket to", path, e))?;
            let meta =
                std::fs::symlink_metadata(path).map_err(|e| io_err(path, "inspect", path, e))?;
            Ok((listener, (meta.dev(), meta.ino())))
        })();
        let _ = std::fs::remove_dir_all(&private);
        let (listener, id) = result?;
        Ok(Bound {
            listener,
            guard: SocketGuard {
                path: self.path,
                id,
                _lock: self.lock,
            },
            policy: self.policy,
        })
    }
}

/// A bound admin socket: the listener for the admin thread, and the guard the daemon keeps.
#[derive(Debug)]
pub struct Bound {
    pub listener: std::os::unix::net::UnixListener,
    pub guard: SocketGuard,
    pub policy: Policy,
}

/// Removes the socket when the daemon ends, cleanly or by a failed start, and holds the lock.
#[derive(Debug)]
pub struct SocketGuard {
    path: PathBuf,
    id: (u64, u64),
    _lock: Flock<File>,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        // Only our own socket: never a file someone put there since.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What the admin service learns about each connection (tonic puts it in the request
/// extensions).
#[derive(Debug, Clone)]
pub struct AdminPeer {
    pub uid: Option<u32>,
    /// `None`: allowed.
    pub refusal: Option<String>,
}

/// Uids and supplementary groups from `/proc/<pid>/status`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProcCreds {
    pub uids: Vec<u32>,
    pub groups: Vec<u32>,
}

pub fn parse_proc_status(text: &str) -> ProcCreds {
    let mut out = ProcCreds::default();
    let nums = |rest: &str| -> Vec<u32> {
        rest.split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            out.uids = nums(rest);
        } else if let Some(rest) = line.strip_prefix("Groups:") {
            out.groups = nums(rest);
        }
    }
    out
}

fn peer(stream: &UnixStream, policy: &Policy) -> AdminPeer {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            return AdminPeer {
                uid: None,
                refusal: Some(format!(
                    "permission denied: the admin socket {} could not read the caller's credentials: {e}",
                    policy.path
                )),
            };
        }
    };
    // Supplementary groups count only while the pid still belongs to the same user (the
    // pid could have been reused since connect).
    let groups = cred
        .pid()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .map(|s| parse_proc_status(&s))
        .filter(|p| p.uids.first() == Some(&cred.uid()))
        .map(|p| p.groups)
        .unwrap_or_default();
    AdminPeer {
        uid: Some(cred.uid()),
        refusal: policy.refusal(cred.uid(), cred.gid(), &groups),
    }
}

/// A unix connection with its peer's verdict attached.
pub struct AdminConn {
    stream: UnixStream,
    peer: AdminPeer,
}

impl Connected for AdminConn {
    type ConnectInfo = AdminPeer;
    fn connect_info(&self) -> AdminPeer {
        self.peer.clone()
    }
}

impl AsyncRead for AdminConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AdminConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Refuses calls from peers the policy does not allow, naming their uid.
#[allow(clippy::result_large_err)]
pub fn check_peer(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    match req.extensions().get::<AdminPeer>() {
        Some(AdminPeer { refusal: None, .. }) => Ok(req),
        Some(AdminPeer {
            refusal: Some(why), ..
        }) => Err(tonic::Status::permission_denied(why.clone())),
        None => Err(tonic::Status::permission_denied(
            "permission denied: caller unknown",
        )),
    }
}

/// Accepts on `listener`, attaching each peer's verdict; stops when the receiver is gone.
async fn accept_loop(
    listener: tokio::net::UnixListener,
    policy: Policy,
    tx: mpsc::Sender<Result<AdminConn, io::Error>>,
) {
    let mut errors = RateLimited::new(LOG_EVERY);
    loop {
        let stream = tokio::select! {
            _ = tx.closed() => return,
            r = listener.accept() => r,
        };
        match stream {
            Ok((stream, _)) => {
                let peer = peer(&stream, &policy);
                if let Some(why) = &peer.refusal {
                    tracing::warn!("admin socket: {why}");
                }
                if tx.send(Ok(AdminConn { stream, peer })).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                if let Some(n) = errors.hit(Instant::now()) {
                    tracing::warn!(error = %e, failures = n, "accept on the admin socket failed; backing off");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Serves `svc` on the bound socket in a thread with its own runtime, until `stop` turns
/// true (then calls get [`SHUTDOWN_GRACE`]). The result arrives on the returned receiver.
pub fn spawn_server(
    listener: std::os::unix::net::UnixListener,
    policy: Policy,
    routes: tonic::service::Routes,
    stop: watch::Receiver<bool>,
) -> Result<tokio::sync::oneshot::Receiver<Result<(), tonic::transport::Error>>, io::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registered with the admin runtime's reactor, not the caller's.
    let listener = {
        let _in_admin_runtime = rt.enter();
        tokio::net::UnixListener::from_std(listener)?
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("phoenix-admin".into())
        .spawn(move || {
            let result = rt.block_on(async move {
                let (tx, rx) = mpsc::channel(16);
                tokio::spawn(accept_loop(listener, policy, tx));
                let mut stopped = stop.clone();
                let server = tonic::transport::Server::builder()
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::ReceiverStream::new(rx),
                        async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        },
                    );
                // A `phoenix apply` following reports would hold a graceful shutdown open.
                let mut stop = stop;
                let overdue = async move {
                    let _ = stop.wait_for(|s| *s).await;
                    tokio::time::sleep(SHUTDOWN_GRACE).await;
                };
                tokio::select! {
                    r = server => r,
                    _ = overdue => Ok(()),
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
            let _ = done_tx.send(result);
        })?;
    Ok(done_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(group: Option<(&str, u32)>) -> Policy {
        Policy {
            own_uid: 0,
            group: group.map(|(n, g)| (n.to_string(), g)),
            path: "/run/phoenix/admin.sock".into(),
        }
    }

    #[test]
    fn root_own_uid_and_group_members_are_allowed_others_named() {
        let p = policy(Some(("phoenix-admins", 990)));
        assert_eq!(p.refusal(0, 0, &[]), None);
        assert_eq!(p.refusal(1000, 990, &[]), None);
        assert_eq!(p.refusal(1000, 1000, &[27, 990]), None);
        let why = p.refusal(65534, 65534, &[27]).expect("refused");
        assert!(
            why.contains("uid 65534") && why.contains("group phoenix-admins"),
            "{why}"
        );
        let own = Policy {
            own_uid: 1000,
            ..policy(None)
        };
        assert_eq!(own.refusal(1000, 1000, &[]), None);
        let why = own.refusal(1001, 990, &[990]).expect("no group configured");
        assert!(why.contains("--admin-group"), "{why}");
    }

    #[test]
    fn proc_status_uids_and_groups() {
        let text = "Name:\tphoenix\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 990 \n";
        assert_eq!(
            parse_proc_status(text),
            ProcCreds {
                uids: vec![1000, 1000, 1000, 1000],
                groups: vec![4, 24, 990]
            }
        );
        assert_eq!(parse_proc_status("Groups:\n").groups, Vec::<u32>::new());
    }

    #[test]
    fn claim_refuses_a_regular_file_and_leaves_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("admin.sock");
        std::fs::write(&p, "precious").expect("write");
        let e = claim(&p, None).expect_err("must refuse");
        assert!(matches!(e, AdminSocketError::NotASocket { .. }), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "precious");
    }

    #[test]
    fn second_claim_is_refused_while_the_first_holds_the_lock() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("admin.sock");
        let first = claim(&p, None).expect("first");
        let e = claim(&p, None).expect_err("second");
        assert!(matches!(e, AdminSocketError::InUse { .. }), "{e}");
        drop(first);
        claim(&p, None).expect("free again");
    }

    #[test]
    fn bound_socket_has_its_mode_and_is_removed_by_the_guard_only_if_ours() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("admin.sock");
        let bound = claim(&p, None).expect("claim").bind().expect("bind");
        let meta = std::fs::symlink_metadata(&p).expect("socket");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        // Nothing else was left in the directory.
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("ls")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        drop(bound);
        assert!(!p.exists());

        let bound = claim(&p, None).expect("claim").bind().expect("bind");
        std::fs::remove_file(&p).expect("rm");
        std::fs::write(&p, "someone else's").expect("write");
        drop(bound);
        assert_eq!(std::fs::read_to_string(&p).expect("kept"), "someone else's");
    }
}
