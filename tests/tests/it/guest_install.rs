//! `phoenix guest install` over the plain-LXC transport (`lxc-attach`, what `pct exec` runs)
//! into two real LXC containers booted with systemd: the agent is pushed, enrolled with a
//! single-use token and started from its unit; both guests converge a pushed spec; a guest
//! reboot ends and restores its session; a second install leaves them alone; and a guest
//! given another guest's identity (its state directory copied in, as a clone would have)
//! cannot take the other guest's session and is re-joined with its own.
//!
//! The `pct` and `qm` transports cannot run here (no Proxmox): their exact command lines,
//! the guest-agent chunking and the exec-status polling are unit tests in
//! coordinator/src/guests.

use phoenix_tests::lxc::{self, LxcGuest};
use phoenix_tests::spine::{Coordinator, converged, guest_status, write_spec};
use phoenix_tests::{bin, require, wait_for};
use serde_json::json;
use std::process::Output;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);
const A: u32 = 4101;
const B: u32 = 4102;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn install(c: &Coordinator, guests: &[u32]) -> String {
    let agent = bin("phoenix-agent");
    let mut args = vec!["guest", "install", "--transport", "lxc", "--agent-binary"];
    args.push(agent.to_str().expect("utf-8 path"));
    let ids: Vec<String> = guests.iter().map(u32::to_string).collect();
    args.extend(ids.iter().map(String::as_str));
    let out = c.cli(&args);
    assert!(out.status.success(), "guest install: {}", text(&out));
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn line(out: &str, guest: u32) -> String {
    let prefix = format!("guest {guest}: ");
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line for guest {guest} in:\n{out}"))
        .to_owned()
}

fn connected(c: &Coordinator, guest: u32, want: bool) {
    wait_for(T, &format!("guest {guest} connected == {want}"), || {
        guest_status(&c.status(), guest).filter(|g| g["connected"] == want)
    });
}

fn identity_uri(g: &LxcGuest) -> String {
    let pem = g.sh(&["cat", "/var/lib/phoenix-agent/cert.pem"]);
    let chain = phoenix_pki::x509::parse_chain(&pem, "cert.pem").expect("pem");
    let info = phoenix_pki::x509::inspect(&chain[0]).expect("cert");
    info.uris().next().expect("a URI SAN").to_owned()
}

#[test]
fn guest_install_over_lxc_enrolls_converges_survives_reboot_and_rejoins_clones() {
    if !require(
        "LXC (tests/setup/35-lxc.sh) and the guest rootfs, as root",
        lxc::available(),
    ) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("coord"), &[]);
    let (a, b) = (LxcGuest::create(A), LxcGuest::create(B));

    let out = install(&c, &[A, B]);
    for g in [A, B] {
        let l = line(&out, g);
        assert!(
            l.contains("installed: not enrolled; enrolled and connected"),
            "{l}"
        );
    }
    // The token went in as a file and is gone; the unit is enabled, so a boot starts it.
    for g in [&a, &b] {
        assert_eq!(
            g.attach(&["test", "-e", "/run/phoenix-agent-join.token"])
                .status
                .code(),
            Some(1)
        );
        assert_eq!(
            g.sh(&["systemctl", "is-enabled", "phoenix-agent.service"])
                .trim(),
            "enabled"
        );
        assert_eq!(
            identity_uri(g),
            format!("spiffe://phoenix.lab/guest/{}", g.id)
        );
    }

    // A small spec, converged by the agents the install started.
    let spec = |who: &str| json!({"resources": [{"kind": "file", "path": "/srv/phoenix/hello", "content": format!("hello {who}\n")}]});
    let spec_path = tmp.path().join("spec.json");
    write_spec(&spec_path, &[(A, spec("a")), (B, spec("b"))]);
    let out = c.cli(&[
        "apply",
        "-f",
        spec_path.to_str().expect("utf-8"),
        "--timeout",
        "90s",
    ]);
    assert!(out.status.success(), "apply: {}", text(&out));
    for g in [A, B] {
        wait_for(T, "converged", || converged(&c.status(), g).then_some(()));
    }
    assert_eq!(a.sh(&["cat", "/srv/phoenix/hello"]), "hello a\n");
    assert_eq!(b.sh(&["cat", "/srv/phoenix/hello"]), "hello b\n");

    // Reboot: the session ends with the guest and comes back from the unit.
    a.stop();
    connected(&c, A, false);
    a.start();
    connected(&c, A, true);

    // Enrolled, connected and holding their own identities: left alone.
    let out = install(&c, &[A, B]);
    for g in [A, B] {
        assert!(
            line(&out, g).ends_with("ok: already enrolled and connected, left alone"),
            "{out}"
        );
    }

    // B becomes a clone of A: A's state directory in place of its own.
    b.sh(&["systemctl", "stop", "phoenix-agent.service"]);
    copy_state(&a, &b);
    b.sh(&["systemctl", "start", "phoenix-agent.service"]);
    assert_eq!(identity_uri(&b), format!("spiffe://phoenix.lab/guest/{A}"));
    connected(&c, B, false);
    // The clone's agent is refused while A's own session is live: A keeps it.
    wait_for(T, "the clone's session refused", || {
        c.log().contains("second session refused").then_some(())
    });
    connected(&c, A, true);

    let out = install(&c, &[B]);
    let l = line(&out, B);
    assert!(
        l.contains(": installed: ") && l.contains("enrolled and connected"),
        "{l}"
    );
    assert_eq!(identity_uri(&b), format!("spiffe://phoenix.lab/guest/{B}"));
    // A never lost its session to the clone: left alone.
    let out = install(&c, &[A]);
    assert!(line(&out, A).ends_with("left alone"), "{out}");
    connected(&c, B, true);
    assert_eq!(identity_uri(&a), format!("spiffe://phoenix.lab/guest/{A}"));
    let out = install(&c, &[A, B]);
    for g in [A, B] {
        assert!(line(&out, g).ends_with("left alone"), "{out}");
    }

    // The daemon has B connected, but B's disk now holds A's identity (copied under its
    // running agent): not left alone, re-joined with its own, replacing the live session.
    copy_state(&a, &b);
    let out = install(&c, &[B]);
    let l = line(&out, B);
    assert!(
        l.contains(&format!(
            "installed: the guest holds the identity of guest {A} (cloned?)"
        )),
        "{l}"
    );
    assert_eq!(identity_uri(&b), format!("spiffe://phoenix.lab/guest/{B}"));
    connected(&c, B, true);
    connected(&c, A, true);
}

/// `from`'s agent state directory in place of `to`'s, as a clone of `from` would have it.
fn copy_state(from: &LxcGuest, to: &LxcGuest) {
    let (src, dst) = (
        from.rootfs().join("var/lib/phoenix-agent"),
        to.rootfs().join("var/lib/phoenix-agent"),
    );
    // Moved aside rather than removed in place: a running agent may write into it while
    // it is being emptied.
    let aside = dst.with_extension("replaced");
    let _ = std::fs::remove_dir_all(&aside);
    std::fs::rename(&dst, &aside).expect("move the state dir aside");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&dst)
        .output()
        .expect("cp");
    assert!(cp.status.success(), "cp: {}", text(&cp));
    let _ = std::fs::remove_dir_all(&aside);
}
