//! The admin socket against the real `phoenix serve`: it never deletes what is not its
//! socket, never takes over a running daemon's socket, leaves nothing behind after a failed
//! start, appears with its final mode, and refuses callers by their credentials.

use phoenix_tests::bin;
use phoenix_tests::spine::{Coordinator, serve_expecting_failure};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_file_at_the_socket_path_is_refused_and_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let socket = tmp.path().join("admin.sock");
    std::fs::write(&socket, "precious\n").expect("write");
    let out = serve_expecting_failure(&tmp.path().join("state"), &socket, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "admin socket {}: it exists and is not a socket (a regular file)",
            socket.display()
        )),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&socket).expect("still there"),
        "precious\n"
    );
}

#[test]
fn a_second_daemon_cannot_take_over_a_running_daemons_socket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let before = std::fs::symlink_metadata(c.socket()).expect("socket").ino();
    let out = serve_expecting_failure(&tmp.path().join("other-state"), &c.socket(), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "admin socket {}: another phoenix serve is running there",
            c.socket().display()
        )),
        "{err}"
    );
    // The first daemon still owns the same socket and answers on it.
    assert_eq!(
        std::fs::symlink_metadata(c.socket()).expect("socket").ino(),
        before
    );
    assert!(c.status().is_array());
}

#[test]
fn a_failed_start_leaves_no_socket_and_a_stale_one_is_replaced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let socket = tmp.path().join("admin.sock");

    // Fails while checking its input, before binding.
    let out = serve_expecting_failure(
        &tmp.path().join("s1"),
        &socket,
        &["--admin-group", "no-such-group-phx"],
    );
    assert!(
        stderr(&out).contains("admin group \"no-such-group-phx\" does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::symlink_metadata(&socket).is_err(), "socket left");

    // Fails after binding: the address file cannot be written.
    let state = tmp.path().join("s2");
    std::fs::create_dir_all(state.join("coordinator.addr")).expect("mkdir");
    let out = serve_expecting_failure(&state, &socket, &[]);
    assert!(
        stderr(&out).contains(&state.display().to_string()),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::symlink_metadata(&socket).is_err(), "socket left");

    // A daemon killed with SIGKILL leaves its socket; the next start replaces it.
    let mut c = Coordinator::start(&tmp.path().join("c"), &[]);
    c.kill9();
    assert!(
        std::fs::symlink_metadata(c.socket())
            .expect("stale socket")
            .file_type()
            .is_socket()
    );
    c.restart();
    assert!(c.status().is_array());
    assert!(
        c.log().contains("replacing a stale admin socket"),
        "{}",
        c.log()
    );
}

/// `phoenix status` run as uid/gid 65534 with exactly `groups`.
fn status_as_nobody(socket: &Path, groups: Option<u32>) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534"]);
    match groups {
        Some(g) => cmd.arg(format!("--groups={g}")),
        None => cmd.arg("--clear-groups"),
    };
    cmd.arg(bin("phoenix"))
        .arg("--admin-socket")
        .arg(socket)
        .arg("status")
        .output()
        .expect("setpriv")
}

#[test]
fn the_socket_has_its_mode_from_the_start_and_callers_are_checked() {
    if !phoenix_tests::require("root (to switch users)", nix::unistd::geteuid().is_root()) {
        return;
    }
    let adm = nix::unistd::Group::from_name("adm")
        .expect("getgrnam")
        .expect("group adm")
        .gid
        .as_raw();
    let tmp = tempfile::tempdir().expect("tempdir");
    // Let uid 65534 reach the socket, so the daemon's own check is what refuses it.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let c = Coordinator::start(&tmp.path().join("private"), &[]);
    let meta = std::fs::symlink_metadata(c.socket()).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600);
    drop(c);

    let c = Coordinator::start(&tmp.path().join("c"), &["--admin-group", "adm"]);
    let meta = std::fs::symlink_metadata(c.socket()).expect("socket");
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), adm);

    // The file mode keeps others out.
    let out = status_as_nobody(&c.socket(), None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );

    // With the mode loosened by hand, the peer-credential check still refuses them.
    std::fs::set_permissions(c.socket(), std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = status_as_nobody(&c.socket(), None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "permission denied: uid 65534 may not use the admin socket {}: only root, uid 0 (the daemon) and members of group adm may",
            c.socket().display()
        )),
        "{}",
        stderr(&out)
    );
    assert!(c.log().contains("uid 65534 may not use"), "{}", c.log());

    // A member of the admin group (supplementary) and root are served.
    let out = status_as_nobody(&c.socket(), Some(adm));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(c.status().is_array());
}
