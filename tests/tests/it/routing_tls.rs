//! The routing tier of the seed's design with real parts: a real coordinator issuing from a
//! real step-ca, and two systemd guests on a private Docker network (their own network
//! namespaces, so the gateway's nginx has ports 80 and 443 to itself), each running the real
//! `phoenix-agent` enrolled with a join token. The configs are `tests/fixtures/routing/`, a
//! base directory in the real layout: the gateway (LXC 101, `phoenix_hypervisor_lxc_101.sh`),
//! a backend (150) declaring `traefik_service`, and the Step-CA guest (103, declared only).
//!
//! `phoenix apply` compiles the gateway's site from `gateway.template` with the routing map
//! made from the declarations, the agent in 101 installs Debian's nginx with real apt, gets
//! the gateway certificate from the manifest issued through the coordinator by step-ca, and
//! nginx terminates HTTPS for the routed host name and proxies to the backend in the other
//! guest; curl on the host verifies the chain against step-ca's root alone. A changed
//! `traefik_service` port changes the gateway's site, reloads nginx (same master process, new
//! workers) and touches nothing else.
//!
//! Traefik (LXC 102) is not packaged in Debian and cannot run here: its compiled dynamic
//! configuration stays golden-tested by parsing
//! (coordinator/tests/compile_samples.rs, `traefik_routes_of_the_sample_match_the_old_generator`).

use phoenix_tests::guest::{Guest, Network, result_statuses};
use phoenix_tests::spine::guest_status;
use phoenix_tests::stepca::StepCa;
use phoenix_tests::{bin, require, wait_for};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const GATEWAY: u32 = 101;
const BACKEND: u32 = 150;
const ROUTED: &str = "web.internal.phoenix.test";
const SITE: &str = "/etc/nginx/sites-enabled/gateway";
const STATE: &str = "/var/lib/phoenix-agent";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `phoenix serve` listening on the private network's host address, so the guests reach
/// it (the harness's `spine::Coordinator` listens on loopback only). Killed on drop.
struct Coordinator {
    socket: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Coordinator {
    fn start(dir: &Path, ip: &str, ca: &StepCa) -> Coordinator {
        std::fs::create_dir_all(dir).expect("mkdir");
        let (socket, log) = (dir.join("admin.sock"), dir.join("coordinator.log"));
        let out = std::fs::File::create(&log).expect("create log");
        let child = Command::new(bin("phoenix"))
            .arg("--admin-socket")
            .arg(&socket)
            .arg("serve")
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--listen", &format!("{ip}:0"), "--ping-interval", "2s"])
            .args(ca.serve_args())
            .env("PHOENIX_LOG", "info")
            .stdout(Stdio::from(out.try_clone().expect("clone log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn phoenix serve");
        let c = Coordinator { socket, log, child };
        let addr = dir.join("state/coordinator.addr");
        wait_for(Duration::from_secs(30), "the coordinator to listen", || {
            (addr.exists() && c.socket.exists()).then_some(())
        });
        c
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("phoenix"))
            .arg("--admin-socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run phoenix")
    }

    fn status(&self) -> Value {
        let out = self.cli(&["status", "-o", "json"]);
        assert!(out.status.success(), "status: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fixture copied to `to`, its `10.0.0.x` addresses moved onto the test's network.
fn base_dir(to: &Path, net: &Network) -> PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/routing");
    copy_tree(&from, to);
    let lxc = to.join("etc/phoenix_lxc_configs.json");
    let text = std::fs::read_to_string(&lxc).expect("read lxc configs");
    std::fs::write(&lxc, text.replace("10.0.0.", &format!("{}.", net.prefix())))
        .expect("write lxc configs");
    to.to_path_buf()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy fixture file");
        }
    }
}

/// The backend's `traefik_service.port`, as a user edits the file.
fn set_backend_port(base: &Path, port: u16) {
    let lxc = base.join("etc/phoenix_lxc_configs.json");
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(&lxc).expect("read")).expect("json");
    v["lxc_configs"][BACKEND.to_string()]["traefik_service"]["port"] = port.into();
    std::fs::write(&lxc, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
}

/// Joins with a single-use token and runs the agent as a unit of the guest's systemd.
fn enroll(c: &Coordinator, g: &Guest, id: u32) {
    let out = c.cli(&["token", "create", "--guest", &id.to_string()]);
    assert!(out.status.success(), "token create: {}", text(&out));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    g.ok(&format!("phoenix-agent --state-dir {STATE} join '{token}'"));
    g.ok(&format!(
        "systemd-run --unit=phoenix-agent /usr/local/bin/phoenix-agent --state-dir {STATE} run"
    ));
}

/// `phoenix apply -f <base> -o json`, which must exit 0; its events, one per line.
fn apply(c: &Coordinator, base: &Path, guests: &[&Guest]) -> Vec<Value> {
    let out = c.cli(&[
        "apply",
        "-f",
        base.to_str().expect("utf-8"),
        "-o",
        "json",
        "--timeout",
        "300s",
    ]);
    let logs: Vec<String> = guests
        .iter()
        .map(|g| text(&g.sh("journalctl -u phoenix-agent --no-pager | tail -40")))
        .collect();
    assert!(
        out.status.success(),
        "apply: {}\nagent logs:\n{}\ncoordinator log tail:\n{}",
        text(&out),
        logs.join("\n---\n"),
        c.log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn event<'a>(events: &'a [Value], kind: &str, guest: u32) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["event"] == kind && e["guest"] == guest)
}

/// The result messages of a guest's report in `events`, one per line.
fn statuses_messages(events: &[Value], guest: u32) -> String {
    event(events, "report", guest)
        .and_then(|r| r["results"].as_array())
        .map(|rs| {
            rs.iter()
                .map(|r| r["message"].as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// "resource status" of every result of a guest's report in `events` that changed.
fn changed(events: &[Value], guest: u32) -> Vec<String> {
    event(events, "report", guest)
        .map(result_statuses)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, s)| s != "unchanged")
        .map(|(r, s)| format!("{r} {s}"))
        .collect()
}

/// curl on the host: HTTPS to the gateway for `host`, verified against `root` alone.
fn https(gateway_ip: &str, host: &str, root: &str) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", root, "--resolve"])
        .arg(format!("{host}:443:{gateway_ip}"))
        .arg(format!("https://{host}/"))
        .output()
        .expect("run curl")
}

/// The routed host answers `body` through the gateway, verified; waits up to 20 s, since
/// nginx's reload (a signal to the master) finishes after `systemctl reload` returns.
fn serves(gateway_ip: &str, root: &str, body: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = https(gateway_ip, ROUTED, root);
        if page.status.success() && String::from_utf8_lossy(&page.stdout) == body {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "HTTPS to {ROUTED} through the gateway never answered {body:?}: {}",
            text(&page)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Workers of the gateway's nginx master: a reload replaces them, keeping the master.
fn workers(g: &Guest) -> String {
    let w = g.ok("cat /proc/$(systemctl show -p MainPID --value nginx.service)/task/*/children");
    assert!(!w.is_empty(), "nginx has workers");
    w
}

#[test]
fn nginx_gateway_terminates_tls_with_a_step_ca_cert_and_routes_by_the_compiled_map() {
    let curl = Command::new("curl").arg("--version").output();
    if !require("curl on the host", curl.is_ok_and(|o| o.status.success()))
        || !require(
            "Docker and the systemd guest image (tests/setup/30-guest.sh)",
            phoenix_tests::guest::available(),
        )
    {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(ca) = StepCa::start(&tmp.path().join("stepca")) else {
        return;
    };
    let root = ca.get("PHOENIX_STEPCA_ROOT").to_owned();
    let net = Network::create("routing");
    let base = base_dir(&tmp.path().join("phoenix_hypervisor"), &net);
    let (gw_ip, backend_ip) = (net.ip(153), net.ip(150));
    let c = Coordinator::start(&tmp.path().join("coordinator"), &net.gateway(), &ca);

    let on = |ip: &str| ["--network", net.name(), "--ip", ip].map(str::to_owned);
    let gw_args = on(&gw_ip);
    let Some(gw) = Guest::boot_with(
        "routing-gw",
        &[],
        &gw_args.iter().map(String::as_str).collect::<Vec<_>>(),
    ) else {
        return;
    };
    let be_args = on(&backend_ip);
    let Some(backend) = Guest::boot_with(
        "routing-be",
        &[],
        &be_args.iter().map(String::as_str).collect::<Vec<_>>(),
    ) else {
        return;
    };
    enroll(&c, &gw, GATEWAY);
    enroll(&c, &backend, BACKEND);
    for id in [GATEWAY, BACKEND] {
        wait_for(
            Duration::from_secs(60),
            &format!("guest {id} connected"),
            || guest_status(&c.status(), id).filter(|g| g["connected"] == true),
        );
    }
    // The backend's application: two ports, two bodies, so the route is seen to move.
    backend.ok("mkdir -p /srv/a /srv/b && echo 'backend 150 on port 8000' > /srv/a/index.html && echo 'backend 150 on port 8001' > /srv/b/index.html");
    for (port, dir) in [(8000, "/srv/a"), (8001, "/srv/b")] {
        backend.ok(&format!(
            "systemd-run --unit=web-{port} python3 -m http.server {port} --bind 0.0.0.0 --directory {dir}"
        ));
        wait_for(Duration::from_secs(30), "the backend to answer", || {
            let o = Command::new("curl")
                .args(["-sS", "--max-time", "2"])
                .arg(format!("http://{backend_ip}:{port}/"))
                .output()
                .ok()?;
            o.status.success().then_some(())
        });
    }

    // First apply: nginx from Debian's packages, the compiled site, the certificate.
    let events = apply(&c, &base, &[&gw, &backend]);
    let first = changed(&events, GATEWAY);
    for want in [
        "package:nginx changed",
        &format!("file:{SITE} changed"),
        "file:/etc/nginx/sites-enabled/default changed",
        "cert:gateway.internal.phoenix.test changed",
        "service:nginx.service changed",
    ] {
        assert!(first.iter().any(|c| c == want), "{want} in {first:#?}");
    }
    assert!(
        event(&events, "pushed", 103).is_some_and(|e| e["enrolled"] == false),
        "the declared Step-CA guest is pushed to but not waited for: {events:#?}"
    );
    let site = gw.ok(&format!("cat {SITE}"));
    assert!(
        site.contains(&format!("    {ROUTED} http://{backend_ip}:8000;")),
        "{site}"
    );
    serves(&gw_ip, &root, "backend 150 on port 8000\n");
    // Verification is real: a name the certificate does not carry is refused.
    let wrong = https(&gw_ip, "elsewhere.phoenix.test", &root);
    assert!(
        !wrong.status.success(),
        "a host name outside the SANs must fail verification: {}",
        text(&wrong)
    );
    let key = gw.ok("stat -c '%U:%G %a' /etc/nginx/ssl/gateway.internal.phoenix.test.key");
    assert_eq!(key, "root:www-data 640");
    // Debian's nginx.conf was not Phoenix's: replaced after a backup that keeps its owner
    // and mode, named in the report.
    let backup = gw.ok(&format!("ls {STATE}/backups/etc%2Fnginx%2Fnginx.conf.*"));
    assert!(
        statuses_messages(&events, GATEWAY).contains(&backup),
        "the report names {backup}"
    );
    assert!(
        gw.ok(&format!("cat '{backup}'")).contains("#mail {"),
        "Debian's own file"
    );
    assert_eq!(
        gw.ok(&format!("stat -c '%U:%G %a' '{backup}'")),
        "root:root 644"
    );

    // The backend moves to port 8001 in its declaration only.
    let (pid, invocation, before) = (
        gw.unit_prop("nginx.service", "MainPID"),
        gw.unit_prop("nginx.service", "InvocationID"),
        workers(&gw),
    );
    set_backend_port(&base, 8001);
    let events = apply(&c, &base, &[&gw, &backend]);
    let mut second = changed(&events, GATEWAY);
    second.sort();
    assert_eq!(
        second,
        [
            "file:/etc/nginx/sites-available/gateway changed",
            &format!("file:{SITE} changed"),
            "service:nginx.service changed",
        ],
        "only the gateway's site changes, and nginx with it"
    );
    for id in [BACKEND, 103] {
        assert!(
            event(&events, "pushed", id).is_some_and(|e| e["changed"] == false),
            "guest {id}'s state did not change: {events:#?}"
        );
        assert!(changed(&events, id).is_empty(), "{events:#?}");
    }
    assert_eq!(
        gw.unit_prop("nginx.service", "MainPID"),
        pid,
        "reloaded, not restarted"
    );
    assert_eq!(gw.unit_prop("nginx.service", "InvocationID"), invocation);
    assert_ne!(workers(&gw), before, "a reload replaces the workers");
    serves(&gw_ip, &root, "backend 150 on port 8001\n");
}
