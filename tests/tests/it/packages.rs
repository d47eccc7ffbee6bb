//! The Debian packages as a user installs them: coordinator/debian/build-deb.sh builds
//! phoenix_<ver>.deb and phoenix-agent_<ver>.deb from the (debug) binaries; in a Debian
//! container booted with systemd `apt-get install ./…deb` installs them, the coordinator
//! unit starts through `Type=notify` with the default config file, the packaged agent
//! unit (after `join`) connects, `systemctl stop` with agents connected returns within
//! 5 s, and `apt-get purge` removes units, config, state and the group. The README's
//! commands (`phoenix guest install --all`, `phoenix apply -f …/etc`) run as written. A restart of the
//! packaged agent unit in the middle of a dpkg run it started does not kill dpkg.

use phoenix_tests::aptrepo::{self, Repo};
use phoenix_tests::guest::Guest;
use phoenix_tests::spine::{converged, guest_status};
use phoenix_tests::wait_for;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Not among the guests configs/etc declares: the README's commands run on those.
const GUESTS: [u32; 3] = [4201, 4202, 4203];

/// Builds `pkg` with the project's script; returns the file name in `out`.
fn build_deb(pkg: &str, out: &Path) -> String {
    let bin_dir = phoenix_tests::bin("phoenix");
    let bin_dir = bin_dir.parent().expect("bin dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../coordinator/debian/build-deb.sh");
    let o = Command::new(&script)
        .arg(pkg)
        .arg(bin_dir)
        .arg(out)
        .output()
        .expect("run build-deb.sh");
    assert!(
        o.status.success(),
        "build-deb.sh {pkg}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let deb = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    Path::new(&deb)
        .file_name()
        .expect("deb name")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn debs_install_start_by_notify_stop_fast_and_purge() {
    let debs = tempfile::tempdir().expect("tempdir");
    let deb = build_deb("phoenix", debs.path());
    assert!(
        deb.starts_with("phoenix_") && deb.ends_with(".deb"),
        "{deb}"
    );
    let agent_deb = build_deb("phoenix-agent", debs.path());
    assert!(agent_deb.starts_with("phoenix-agent_"), "{agent_deb}");
    // The project's example configs where a Phoenix Hypervisor host keeps its own.
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let Some(g) = Guest::boot(
        "packages",
        &[
            (debs.path(), "/debs"),
            (&configs, "/usr/local/phoenix_hypervisor"),
        ],
    ) else {
        return;
    };
    g.ok(&format!("apt-get install -y /debs/{deb} /debs/{agent_deb}"));
    assert_eq!(g.unit_prop("phoenix.service", "Type"), "notify");
    assert_eq!(g.unit_prop("phoenix.service", "UnitFileState"), "enabled");
    g.ok(
        "test -f /etc/phoenix/coordinator.toml && test -f /etc/phoenix-agent/agent.toml && test -f /usr/share/man/man1/phoenix-serve.1.gz \
          && test -f /usr/share/bash-completion/completions/phoenix \
          && test -f /usr/share/zsh/vendor-completions/_phoenix \
          && test -f /usr/share/fish/vendor_completions.d/phoenix.fish",
    );
    // The agent's, generated from its own flags: a page per command, completions that
    // know `run --shutdown-deadline`.
    g.ok(
        "zcat /usr/share/man/man1/phoenix-agent.1.gz | grep -qF 'phoenix\\-agent' \
          && zcat /usr/share/man/man1/phoenix-agent-run.1.gz | grep -qF 'shutdown\\-deadline' \
          && grep -q shutdown-deadline /usr/share/bash-completion/completions/phoenix-agent \
          && grep -q shutdown-deadline /usr/share/zsh/vendor-completions/_phoenix-agent \
          && grep -q shutdown-deadline /usr/share/fish/vendor_completions.d/phoenix-agent.fish",
    );

    // The README's quick start, with the address guests dial here.
    g.ok(
        r#"sed -i 's/^# advertise = .*/advertise = "127.0.0.1:7443"/' /etc/phoenix/coordinator.toml \
           && grep -qx 'advertise = "127.0.0.1:7443"' /etc/phoenix/coordinator.toml"#,
    );
    // `start` returns only after READY=1: the admin socket answers at once, with the
    // group from the default config.
    g.ok("systemctl start phoenix");
    assert_eq!(g.unit_prop("phoenix.service", "ActiveState"), "active");
    g.ok("phoenix status");
    assert_eq!(g.ok("stat -c %G:%a /run/phoenix/admin.sock"), "phoenix:660");

    // The README's commands as written. No Proxmox here: `guest install --all` reads the
    // default configs, skips the template, finds the agent the package ships for guests,
    // and stops at each guest for want of /etc/pve (the real install over plain LXC is
    // tests/tests/it/guest_install.rs).
    g.ok("test -x /usr/lib/phoenix/phoenix-agent && /usr/lib/phoenix/phoenix-agent --version");
    let o = g.sh("phoenix guest install --all");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("guest 9000: skipped: template"), "{out}");
    for id in [101, 102, 103, 801, 1002] {
        assert!(
            out.contains(&format!(
                "guest {id}: failed: no /etc/pve/lxc/{id}.conf or /etc/pve/qemu-server/{id}.conf"
            )),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let applied = g.ok("phoenix apply -f /usr/local/phoenix_hypervisor/etc");
    for id in [101, 102, 103, 801, 1002] {
        assert!(
            applied.contains(&format!("guest {id}: new rev 1 (not enrolled")),
            "{applied}"
        );
    }

    // The packaged agent: a restart must never kill an apt/dpkg it started, and a
    // not-enrolled exit (78) must not restart-loop.
    assert_eq!(g.unit_prop("phoenix-agent.service", "KillMode"), "process");
    assert_eq!(
        g.unit_prop("phoenix-agent.service", "RestartPreventExitStatus"),
        "78"
    );
    assert_eq!(
        g.unit_prop("phoenix-agent.service", "UnitFileState"),
        "enabled"
    );
    g.ok(&format!(
        "/usr/bin/phoenix-agent join \"$(phoenix token create --guest {})\" && systemctl start phoenix-agent",
        GUESTS[0]
    ));
    // Two more enrolled agents with open sessions, as transient units.
    for id in &GUESTS[1..] {
        g.ok(&format!(
            "phoenix-agent --state-dir /var/lib/agent-{id} join \"$(phoenix token create --guest {id})\" \
             && systemd-run --unit agent-{id} /usr/local/bin/phoenix-agent --state-dir /var/lib/agent-{id} \
                run --file-root /srv --backoff-max 2"
        ));
    }
    wait_for(Duration::from_secs(60), "three sessions", || {
        let s = g.ok("phoenix status -o json");
        let v: serde_json::Value = serde_json::from_str(&s).ok()?;
        let up = v
            .as_array()?
            .iter()
            .filter(|r| r["connected"] == true)
            .count();
        (up == GUESTS.len()).then_some(())
    });

    let t = Instant::now();
    g.ok("systemctl stop phoenix");
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "systemctl stop took {took:?}"
    );
    assert_eq!(
        g.unit_prop("phoenix.service", "Result"),
        "success",
        "{}",
        g.ok("journalctl -u phoenix --no-pager | tail -20")
    );
    assert_eq!(
        g.unit_prop("phoenix-agent.service", "ActiveState"),
        "active",
        "the packaged agent waits for its coordinator to come back"
    );
    eprintln!(
        "systemctl stop with {} agents connected: {took:?}",
        GUESTS.len()
    );

    g.ok("apt-get purge -y phoenix phoenix-agent");
    for gone in [
        "/lib/systemd/system/phoenix-agent.service",
        "/etc/systemd/system/multi-user.target.wants/phoenix-agent.service",
        "/var/lib/phoenix-agent",
        "/etc/phoenix-agent",
        "/usr/bin/phoenix-agent",
        "/usr/share/man/man1/phoenix-agent-run.1.gz",
        "/usr/share/bash-completion/completions/phoenix-agent",
        "/lib/systemd/system/phoenix.service",
        "/etc/systemd/system/multi-user.target.wants/phoenix.service",
        "/etc/phoenix",
        "/var/lib/phoenix",
        "/usr/bin/phoenix",
        "/usr/lib/phoenix",
    ] {
        g.ok(&format!(
            "test ! -e {gone} || {{ echo {gone} left; exit 1; }}"
        ));
    }
    g.ok("! getent group phoenix");
}

/// `systemctl restart phoenix-agent` while dpkg configures a package the agent is
/// installing. The agent's shutdown deadline (2 s) is shorter than the package's
/// postinst (15 s), so the old agent leaves mid-transaction: only the unit's
/// `KillMode=process` keeps systemd from killing the dpkg it started (with
/// `KillMode=control-group` or `mixed` the postinst dies with the unit's processes and
/// the package is left half-configured). The new agent waits for dpkg's lock, finds the
/// package installed and reports converged.
#[test]
fn restarting_the_agent_unit_mid_install_never_kills_dpkg() {
    if !phoenix_tests::require(
        "dpkg-deb, dpkg-scanpackages, apt-ftparchive and gpg",
        aptrepo::tools_present(),
    ) {
        return;
    }
    let repo = Repo::build_with_postinst(
        &[("phoenix-slow", "1.0")],
        &[(
            "phoenix-slow",
            "#!/bin/sh\nsleep 15\necho configured > /var/lib/phoenix-slow-done\n",
        )],
    );
    let debs = tempfile::tempdir().expect("tempdir");
    let deb = build_deb("phoenix", debs.path());
    let agent_deb = build_deb("phoenix-agent", debs.path());
    let Some(g) = Guest::boot(
        "agent-restart",
        &[(debs.path(), "/debs"), (repo.path(), "/srv/repo")],
    ) else {
        return;
    };
    g.ok(&format!("apt-get install -y /debs/{deb} /debs/{agent_deb}"));
    g.ok("systemctl start phoenix");
    g.write(
        "/etc/phoenix-agent/agent.toml",
        b"shutdown-deadline = 2\nbackoff-max = 2\n",
    );
    let guest = GUESTS[0];
    g.ok(&format!(
        "phoenix-agent join \"$(phoenix token create --guest {guest})\" && systemctl start phoenix-agent"
    ));
    let status = || -> serde_json::Value {
        serde_json::from_str(&g.ok("phoenix status -o json")).expect("status json")
    };
    wait_for(Duration::from_secs(60), "the agent's session", || {
        guest_status(&status(), guest).filter(|r| r["connected"] == true)
    });

    let desired = json!({"guests": {guest.to_string(): {"resources": [
        {"kind": "apt_source", "name": "phoenix-test", "uris": ["file:///srv/repo"],
         "suites": ["./"], "signing_key": {"armored": repo.key}},
        {"kind": "package", "name": "phoenix-slow", "depends_on": ["apt_source:phoenix-test"]},
    ]}}});
    g.write("/root/desired.json", desired.to_string().as_bytes());
    g.ok("phoenix apply -f /root/desired.json --no-wait");
    // No procps in the guest: look through /proc ([.] keeps grep from finding itself).
    let postinst = wait_for(Duration::from_secs(90), "dpkg to run the postinst", || {
        let o = g.sh("grep -ls 'phoenix-slow[.]postinst' /proc/[0-9]*/cmdline");
        let pids: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split('/').nth(2).map(str::to_owned))
            .collect();
        (!pids.is_empty()).then_some(pids)
    });
    let mid = g.ok("dpkg-query -W -f='${db:Status-Abbrev}' phoenix-slow");
    assert!(
        ["iU", "iF"].contains(&mid.trim()),
        "dpkg status when the restart came: {mid:?}"
    );
    let old_pid = g.unit_prop("phoenix-agent.service", "MainPID");

    g.ok("systemctl restart phoenix-agent");
    let new_pid = g.unit_prop("phoenix-agent.service", "MainPID");
    assert_ne!(old_pid, new_pid, "the agent was not restarted");
    assert_eq!(
        g.unit_prop("phoenix-agent.service", "ActiveState"),
        "active"
    );
    // The restart landed mid-dpkg and did not end it: the postinst outlived the old agent.
    for pid in &postinst {
        g.ok(&format!(
            "grep -qs 'phoenix-slow[.]postinst' /proc/{pid}/cmdline \
             || {{ echo 'the postinst was killed with the old agent'; exit 1; }}"
        ));
    }
    wait_for(
        Duration::from_secs(120),
        "the new agent to report converged",
        || converged(&status(), guest).then_some(()),
    );
    assert_eq!(g.ok("cat /var/lib/phoenix-slow-done"), "configured");
    assert_eq!(
        g.ok("dpkg-query -W -f='${db:Status-Abbrev}' phoenix-slow")
            .trim(),
        "ii"
    );
    assert_eq!(g.ok("dpkg --audit"), "", "dpkg left mid-transaction");
    let journal = g.ok("journalctl -u phoenix-agent --no-pager -o cat");
    assert!(
        journal.contains("signal received: stopping after the resource in progress")
            && journal.contains("the reconcile pass did not finish within 2s"),
        "the old agent did not leave before dpkg ended: {journal}"
    );
}
