//! Sessions and enrollment against the real `phoenix serve` and `phoenix-agent`: revoke
//! and certificate expiry end open sessions, join tokens are used only when an
//! enrollment succeeds, a live guest's identity is only replaced on purpose, guest text
//! is escaped in tables, and state directories are checked without following links.

use base64::Engine;
use phoenix_proto::v1;
use phoenix_tests::raw::session_hold;
use phoenix_tests::spine::{Agent, Coordinator, converged, files_spec, guest_status, write_spec};
use phoenix_tests::stepca::StepCa;
use phoenix_tests::wait_for;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const SERVER: &str = "coordinator.phoenix.lab";
const T: Duration = Duration::from_secs(30);

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// (chain, key, roots) of an enrolled agent.
fn identity(a: &Agent) -> (String, String, String) {
    let s = a.state();
    (
        read(&s.join("cert.pem")),
        read(&s.join("key.pem")),
        read(&s.join("roots.pem")),
    )
}

fn hello(guest: u32) -> v1::Hello {
    v1::Hello {
        guest_id: guest,
        agent_version: "raw".into(),
        ..Default::default()
    }
}

fn joined(c: &Coordinator, base: &Path, guest: u32) -> Agent {
    let a = Agent::new(base, guest);
    let out = a.join(&c.token(guest), &[]);
    assert!(out.status.success(), "join: {}", text(&out));
    a
}

fn running(c: &Coordinator, base: &Path, guest: u32) -> Agent {
    let mut a = joined(c, base, guest);
    a.start();
    wait_for(T, "agent connected", || {
        guest_status(&c.status(), guest).filter(|g| g["connected"] == true)
    });
    a
}

fn cli_ok(c: &Coordinator, args: &[&str]) -> String {
    let out = c.cli(args);
    assert!(out.status.success(), "phoenix {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(c: &Coordinator, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&cli_ok(c, args)).expect("json output")
}

/// The table row of `guest` (first column).
fn row(table: &str, guest: u32) -> String {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&guest.to_string()))
        .unwrap_or_else(|| panic!("no row for guest {guest} in\n{table}"))
        .to_string()
}

fn apply_no_wait(c: &Coordinator, spec: &Path) {
    cli_ok(
        c,
        &["apply", "-f", spec.to_str().expect("utf8"), "--no-wait"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_ends_the_open_session_at_once_and_shows_everywhere() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let mut a = running(&c, tmp.path(), 121);
    let spec = tmp.path().join("spec.json");
    write_spec(&spec, &[(121, files_spec(&a.root, &[("one.txt", "1")]))]);
    cli_ok(
        &c,
        &[
            "apply",
            "-f",
            spec.to_str().expect("utf8"),
            "--timeout",
            "30s",
        ],
    );
    assert!(converged(&c.status(), 121));

    // The open session of the real agent ends at once, with the reason.
    let revoked_at = std::time::Instant::now();
    let out = cli_ok(&c, &["revoke", "--guest", "121"]);
    assert!(out.contains("its session was ended"), "{out}");
    let log = wait_for(
        Duration::from_secs(3),
        "the real agent's session to end",
        || Some(a.log()).filter(|l| l.contains("guest 121 was revoked")),
    );
    assert!(
        revoked_at.elapsed() < Duration::from_millis(1500),
        "session outlived the revoke by {:?}",
        revoked_at.elapsed()
    );
    // Permission denied: the agent stops retrying and says how to re-join.
    assert!(
        log.contains("coordinator refused the session")
            && log.contains("message: \"guest 121 was revoked\""),
        "{log}"
    );

    // A desired state pushed after the revoke never reaches the guest.
    write_spec(
        &spec,
        &[(
            121,
            files_spec(&a.root, &[("one.txt", "1"), ("two.txt", "2")]),
        )],
    );
    apply_no_wait(&c, &spec);
    std::thread::sleep(Duration::from_secs(5));
    assert!(a.root.join("one.txt").exists());
    assert!(
        !a.root.join("two.txt").exists(),
        "a revoked guest applied a new desired state"
    );
    assert!(
        a.running(),
        "the agent keeps running (and enforcing its last state)"
    );

    let status = guest_status(&c.status(), 121).expect("status row");
    assert_eq!(
        (&status["revoked"], &status["connected"]),
        (&json!(true), &json!(false))
    );
    assert!(row(&cli_ok(&c, &["status"]), 121).contains("revoked"));
    let agents = json(&c, &["agents", "-o", "json"]);
    assert_eq!(agents[0]["revoked"], true, "{agents:#}");
    assert!(row(&cli_ok(&c, &["agents"]), 121).contains("revoked"));
    let certs = json(&c, &["certs", "-o", "json"]);
    let id = certs
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|e| e["guest"] == 121 && e["kind"] == "identity")
        })
        .unwrap_or_else(|| panic!("identity listed: {certs:#}"));
    assert!(id["last_result"].to_string().contains("revoked"), "{id}");
    assert!(row(&cli_ok(&c, &["certs"]), 121).contains("revoked"));
}

/// One identity, one live session (docs/design/0012): a second holder of a guest's key
/// (a cloned guest, a copied key) is refused while the guest's own session is live, its
/// Hello never reaches the guest's record, and the coordinator logs it; the guest keeps its
/// session and its desired state; an agent restart is not mistaken for a clone.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_session_of_a_live_identity_is_refused_and_logged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let mut a = running(&c, tmp.path(), 131);
    let (chain, key, roots) = identity(&a);

    let clone = v1::Hello {
        facts: Some(v1::Facts {
            hostname: "the-clone".into(),
            ..Default::default()
        }),
        ..hello(131)
    };
    let err = session_hold(
        &c.addr,
        SERVER,
        (&chain, &key, &roots),
        clone,
        Duration::from_secs(1),
    )
    .await
    .expect_err("a second session of a live identity was accepted");
    assert_eq!(
        err,
        "AlreadyExists: guest 131 already has a live session; a second session with its identity is refused (a cloned guest or a copied key? re-join the other machine with its own token)"
    );
    let logged = wait_for(T, "the refusal in the coordinator log", || {
        c.log()
            .lines()
            .find(|l| l.contains("second session refused"))
            .map(str::to_owned)
    });
    assert!(
        logged.contains("guest=131") && logged.contains("peer=127.0.0.1:"),
        "{logged}"
    );
    let agents = cli_ok(&c, &["agents"]);
    assert!(
        !agents.contains("the-clone") && !agents.contains("raw"),
        "the refused Hello reached the guest's record:\n{agents}"
    );

    // The guest kept its session: a new desired state reaches the real agent.
    let spec = tmp.path().join("spec.json");
    write_spec(
        &spec,
        &[(131, files_spec(&a.root, &[("kept.txt", "mine")]))],
    );
    c.apply_ok(&spec);
    assert_eq!(read(&a.root.join("kept.txt")), "mine");

    // A restarted agent is back at once, not refused as a second holder.
    let refusals = || c.log().matches("second session refused").count();
    let before = refusals();
    assert!(a.terminate(T).is_some_and(|s| s.success()), "agent stop");
    a.start();
    wait_for(T, "the restarted agent's session", || {
        Some(a.log()).filter(|l| l.contains("session open"))
    });
    assert_eq!(refusals(), before, "{}", c.log());
    assert!(!a.log().contains("AlreadyExists"), "{}", a.log());

    // With the guest's own session gone, the key opens a session again: only a re-join
    // retires a copied key (`phoenix guest install` re-joins a detected clone).
    assert!(a.terminate(T).is_some_and(|s| s.success()), "agent stop");
    wait_for(T, "guest 131 disconnected", || {
        guest_status(&c.status(), 131).filter(|g| g["connected"] == false)
    });
    let (_, end) = session_hold(
        &c.addr,
        SERVER,
        (&chain, &key, &roots),
        hello(131),
        Duration::from_secs(1),
    )
    .await
    .expect("the only session of the identity");
    assert_eq!(end, "timeout", "the session was ended: {end}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_ends_when_its_certificate_expires() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &["--agent-cert-ttl", "8s"]);
    let a = joined(&c, tmp.path(), 122);
    let (chain, key, roots) = identity(&a);
    let leaf = phoenix_pki::x509::parse_chain(&chain, "chain").expect("chain");
    let not_after = phoenix_pki::x509::inspect(&leaf[0])
        .expect("leaf")
        .not_after;
    let left = not_after
        .duration_since(std::time::SystemTime::now())
        .expect("not expired yet");
    let (lasted, end) = session_hold(
        &c.addr,
        SERVER,
        (&chain, &key, &roots),
        hello(122),
        Duration::from_secs(30),
    )
    .await
    .expect("session opened");
    assert_eq!(
        end,
        "Unauthenticated: certificate of guest 122 expired, renew"
    );
    assert!(
        lasted <= left + Duration::from_secs(2),
        "session lasted {lasted:?}, certificate had {left:?} left"
    );
}

/// The token with its CA fingerprint in upper case (as pasted from a tool that prints it so).
fn upper_case_fingerprint(token: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let body = token.strip_prefix("PHX1.").expect("PHX1 token");
    let mut v: serde_json::Value =
        serde_json::from_slice(&b64.decode(body).expect("base64")).expect("json");
    let f = v["f"].as_str().expect("fingerprint").to_ascii_uppercase();
    v["f"] = json!(f);
    format!("PHX1.{}", b64.encode(serde_json::to_vec(&v).expect("json")))
}

#[test]
fn a_token_is_not_burnt_by_an_upper_case_fingerprint_or_a_clock_behind() {
    if !phoenix_tests::require("faketime (tests/setup/06-faketime.sh)", which("faketime")) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    // A 5 min agent certificate is backdated 30 s, the coordinator's 60 s: an agent 45 s
    // behind completes TLS but cannot verify its new certificate.
    let c = Coordinator::start(&tmp.path().join("c"), &["--agent-cert-ttl", "5m"]);
    let a = Agent::new(tmp.path(), 123);
    let out = a.join(&upper_case_fingerprint(&c.token(123)), &[]);
    assert!(
        out.status.success(),
        "upper-case fingerprint: {}",
        text(&out)
    );

    let b = Agent::new(tmp.path(), 124);
    let token = c.token(124);
    let out = Command::new("faketime")
        .arg("-f")
        .arg("-45s")
        .arg(phoenix_tests::bin("phoenix-agent"))
        .arg("--state-dir")
        .arg(b.state())
        .args(["join", &token])
        .output()
        .expect("run faketime");
    assert!(
        !out.status.success(),
        "join with a clock 45 s behind succeeded"
    );
    let err = text(&out);
    let secs: u64 = err
        .split("agent clock is ")
        .nth(1)
        .and_then(|r| r.split(" s behind").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("clock skew not named: {err}"));
    assert!((43..=48).contains(&secs), "{err}");
    let out = b.join(&token, &[]);
    assert!(
        out.status.success(),
        "same token, clock fixed: {}",
        text(&out)
    );
    // Once the identity is in use, the token is spent.
    let mut b = b;
    b.start();
    wait_for(T, "agent 124 connected", || {
        guest_status(&c.status(), 124).filter(|g| g["connected"] == true)
    });
    let again = Agent::new(&tmp.path().join("again"), 124);
    let out = again.join(&token, &[]);
    assert!(!out.status.success(), "a used token enrolled again");
    assert!(text(&out).contains("already used"), "{}", text(&out));
    let log = c.log();
    assert!(
        log.contains("agent enrolled")
            && log.contains("enrollment refused")
            && log.contains("127.0.0.1"),
        "enrollments and refusals logged with the peer address:\n{log}"
    );
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_token_is_not_burnt_by_a_ca_outage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(ca) = StepCa::start(&tmp.path().join("ca")) else {
        return;
    };
    let args = ca.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Coordinator::start(&tmp.path().join("c"), &args);
    let token = c.token(125);
    let a = Agent::new(tmp.path(), 125);
    ca.ctl("stop");
    let out = a.join(&token, &[]);
    assert!(!out.status.success(), "join while the CA is down succeeded");
    assert!(
        text(&out).contains("certificate authority"),
        "{}",
        text(&out)
    );
    ca.ctl("start");
    let out = a.join(&token, &[]);
    assert!(
        out.status.success(),
        "same token after the outage: {}",
        text(&out)
    );
}

#[test]
fn replacing_a_connected_guest_needs_a_replace_token() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let a = running(&c, tmp.path(), 126);
    let serial = guest_status(&c.status(), 126).expect("row");
    let certs = json(&c, &["certs", "-o", "json"]);
    let current = |certs: &serde_json::Value| {
        certs
            .as_array()
            .and_then(|l| l.iter().find(|e| e["guest"] == 126))
            .map(|e| e["serial"].clone())
    };
    let before = current(&certs);

    let intruder = Agent::new(&tmp.path().join("other-machine"), 126);
    let out = intruder.join(&c.token(126), &[]);
    assert!(
        !out.status.success(),
        "a plain token replaced a connected guest"
    );
    assert!(text(&out).contains("--replace"), "{}", text(&out));
    assert_eq!(current(&json(&c, &["certs", "-o", "json"])), before);
    assert_eq!(
        guest_status(&c.status(), 126).expect("row")["connected"],
        true,
        "{serial}"
    );

    let token = cli_ok(&c, &["token", "create", "--guest", "126", "--replace"]);
    let out = intruder.join(token.trim(), &[]);
    assert!(out.status.success(), "--replace token: {}", text(&out));
    assert_ne!(current(&json(&c, &["certs", "-o", "json"])), before);
    wait_for(
        Duration::from_secs(5),
        "the replaced session to end",
        || {
            a.log()
                .contains("identity of guest 126 was replaced by a new enrollment")
                .then_some(())
        },
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_text_is_escaped_in_tables_and_bounded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let a = joined(&c, tmp.path(), 127);
    let (chain, key, roots) = identity(&a);
    let evil = v1::Hello {
        guest_id: 127,
        agent_version: format!("1.0\x1b[2J{}", "v".repeat(500)),
        facts: Some(v1::Facts {
            hostname: "web\x1b]0;owned\x07\n999  yes  forged-row\u{202e}".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    session_hold(
        &c.addr,
        SERVER,
        (&chain, &key, &roots),
        evil,
        Duration::from_secs(1),
    )
    .await
    .expect("session opened");
    let table = cli_ok(&c, &["agents"]);
    assert!(
        !table.chars().any(|ch| ch.is_control() && ch != '\n') && !table.contains('\u{202e}'),
        "raw control characters reached the terminal: {table:?}"
    );
    assert_eq!(table.lines().count(), 2, "a forged row: {table}");
    // The default table cuts long cells to fit 80 columns; -o wide shows them whole.
    let table = cli_ok(&c, &["agents", "-o", "wide"]);
    assert_eq!(table.lines().count(), 2, "a forged row: {table}");
    let r = row(&table, 127);
    assert!(
        r.contains("web\\u{1b}]0;owned\\u{7}\\n999  yes  forged-row\\u{202e}"),
        "{r}"
    );
    assert!(r.contains("1.0\\u{1b}[2J"), "{r}");
    let agents = json(&c, &["agents", "-o", "json"]);
    let version = agents[0]["agent_version"].as_str().expect("version");
    assert_eq!(
        version.chars().count(),
        64,
        "agent version bounded: {version}"
    );
}

#[test]
fn state_dir_world_readable_is_fixed_loudly_and_a_symlink_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let a = joined(&c, tmp.path(), 128);
    let mode = |p: &Path| {
        std::fs::symlink_metadata(p)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    };
    let set = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    set(&a.state(), 0o755);
    set(&a.state().join("key.pem"), 0o666);
    let agent = |state: &Path| {
        Command::new(phoenix_tests::bin("phoenix-agent"))
            .arg("--state-dir")
            .arg(state)
            .args(["join", "PHX1.not-a-token"])
            .output()
            .expect("run phoenix-agent")
    };
    let out = agent(&a.state());
    let err = text(&out);
    assert!(
        err.contains("SECURITY")
            && err.contains("key.pem had mode 0666")
            && err.contains("compromised"),
        "{err}"
    );
    assert_eq!(
        (mode(&a.state()), mode(&a.state().join("key.pem"))),
        (0o700, 0o600)
    );

    // A symlinked state dir is refused and its target keeps its mode.
    let target = tmp.path().join("elsewhere");
    std::fs::create_dir(&target).expect("mkdir");
    set(&target, 0o755);
    let link = tmp.path().join("linked-state");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let out = agent(&link);
    assert!(!out.status.success());
    assert!(text(&out).contains("is a symbolic link"), "{}", text(&out));
    assert_eq!(mode(&target), 0o755, "the link's target was chmod'ed");

    // The coordinator refuses a symlinked state dir too.
    let cdir = tmp.path().join("c2");
    std::fs::create_dir_all(&cdir).expect("mkdir");
    let ctarget = tmp.path().join("c2-target");
    std::fs::create_dir(&ctarget).expect("mkdir");
    set(&ctarget, 0o755);
    std::os::unix::fs::symlink(&ctarget, cdir.join("state")).expect("symlink");
    let out = Command::new(phoenix_tests::bin("phoenix"))
        .arg("--admin-socket")
        .arg(cdir.join("admin.sock"))
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(cdir.join("state"))
        .output()
        .expect("run phoenix serve");
    assert!(!out.status.success());
    assert!(text(&out).contains("is a symbolic link"), "{}", text(&out));
    assert_eq!(mode(&ctarget), 0o755);
}

/// The embedded CA, slowed down on demand: holds a renewal inside the window between the
/// coordinator reading the agent's record and writing it back.
struct SlowCa {
    inner: phoenix_ca::embedded::EmbeddedCa,
    slow: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl phoenix_ca::CertAuthority for SlowCa {
    fn name(&self) -> &'static str {
        "slow embedded"
    }
    async fn issue(
        &self,
        req: phoenix_ca::IssueRequest,
    ) -> Result<phoenix_ca::Issued, phoenix_ca::CaError> {
        if self.slow.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        self.inner.issue(req).await
    }
    async fn roots_pem(&self) -> Result<String, phoenix_ca::CaError> {
        self.inner.roots_pem().await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_while_the_ca_signs_a_renewal_is_not_undone() {
    use phoenix_coordinator::server;
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca_dir = tmp.path().join("ca");
    std::fs::create_dir(&ca_dir).expect("mkdir");
    std::fs::set_permissions(&ca_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ca = SlowCa {
        inner: phoenix_ca::embedded::EmbeddedCa::load_or_create(&ca_dir, "phoenix.lab")
            .expect("embedded CA"),
        slow: slow.clone(),
    };
    let socket = tmp.path().join("admin.sock");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let cfg = server::Config {
        state_dir: tmp.path().join("state"),
        etcd: None,
        listen: listener.local_addr().expect("addr"),
        advertise: None,
        trust_domain: phoenix_proto::model::TrustDomain::try_from("phoenix.lab".to_string())
            .expect("trust domain"),
        admin_socket: socket.clone(),
        admin_group: None,
        agent_cert_ttl: Duration::from_secs(3600),
        coordinator_cert_ttl: Duration::from_secs(3600),
        renew_after_expiry: Duration::from_secs(3600),
        ping_interval: Duration::from_secs(2),
        max_pending_connections: 256,
        handshake_timeout: Duration::from_secs(10),
        metrics_listen: None,
        cluster: Default::default(),
        status_listen: None,
        status_token_file: None,
        events: Default::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(server::run(
        cfg,
        listener,
        Some(std::sync::Arc::new(ca)),
        async move {
            let _ = stopped.await;
        },
    ));
    let cli = |args: &[&str]| {
        let out = Command::new(phoenix_tests::bin("phoenix"))
            .arg("--admin-socket")
            .arg(&socket)
            .args(args)
            .output()
            .expect("run phoenix");
        assert!(out.status.success(), "phoenix {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for(T, "admin socket", || socket.exists().then_some(()));
    let token = cli(&["token", "create", "--guest", "129"]);
    let a = Agent::new(tmp.path(), 129);
    let out = a.join(token.trim(), &[]);
    assert!(out.status.success(), "join: {}", text(&out));
    let (chain, key, roots) = identity(&a);

    slow.store(true, std::sync::atomic::Ordering::SeqCst);
    let renewal = {
        let (addr, chain, key, roots) = (addr.clone(), chain.clone(), key.clone(), roots.clone());
        tokio::spawn(async move {
            phoenix_tests::raw::renew_attempt(&addr, SERVER, &chain, &key, &roots).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    cli(&["revoke", "--guest", "129"]);
    let err = renewal
        .await
        .expect("join")
        .expect_err("a renewal that straddled the revoke succeeded");
    assert!(err.contains("revoked"), "{err}");
    let status: serde_json::Value =
        serde_json::from_str(&cli(&["status", "-o", "json"])).expect("json");
    assert_eq!(guest_status(&status, 129).expect("row")["revoked"], true);
    let err = phoenix_tests::raw::session_attempt(&addr, SERVER, &chain, &key, &roots, 129)
        .await
        .expect_err("the revoked identity opened a session");
    assert!(err.contains("revoked"), "{err}");
    let _ = stop.send(());
    let _ = daemon.await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_revokes_the_guests_service_certs_at_step_ca() {
    use phoenix_ca::stepca::{ProvisionerKeySource, RevokeAuth, StepCaConfig};
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(ca) = StepCa::start(&tmp.path().join("ca")) else {
        return;
    };
    let args = ca.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Coordinator::start(&tmp.path().join("c"), &args);
    let a = running(&c, tmp.path(), 130);
    let r = |f: &str| a.root.join(f).display().to_string();
    let spec = json!({"resources": [
        {"kind": "cert", "name": "gw", "common_name": "gw.lab", "sans": ["gw.lab"],
         "cert_path": r("gw.crt"), "key_path": r("gw.key"), "ca_path": r("ca.crt"),
         "owner": "root", "group": "root", "mode": "0644", "key_mode": "0600",
         "ttl_seconds": 3600}
    ]});
    let file = tmp.path().join("spec.json");
    write_spec(&file, &[(130, spec)]);
    cli_ok(
        &c,
        &[
            "apply",
            "-f",
            file.to_str().expect("utf8"),
            "--timeout",
            "60s",
        ],
    );
    let service_cert = |c: &Coordinator| {
        json(c, &["certs", "-o", "json"])
            .as_array()
            .and_then(|l| l.iter().find(|e| e["kind"] == "cert:gw").cloned())
            .expect("service cert listed")
    };
    let serial = service_cert(&c)["serial"]
        .as_str()
        .expect("serial")
        .to_string();
    let out = cli_ok(&c, &["revoke", "--guest", "130"]);
    assert!(
        out.contains(&format!("gw ({serial}): revoked at step-ca")),
        "{out}"
    );
    let listed = service_cert(&c);
    assert!(
        listed["last_result"]
            .to_string()
            .contains("revoked: revoked at step-ca"),
        "{listed}"
    );
    // step-ca itself has it on its revocation list: revoking it again is refused.
    let client = phoenix_ca::stepca::StepCa::connect(&StepCaConfig {
        url: ca.get("PHOENIX_STEPCA_URL").into(),
        fingerprint: ca.get("PHOENIX_STEPCA_FINGERPRINT").into(),
        provisioner: ca.get("PHOENIX_STEPCA_PROVISIONER").into(),
        key: ProvisionerKeySource::EncryptedJwk {
            jwe: ca.get("PHOENIX_STEPCA_JWE").into(),
            password_file: ca.get("PHOENIX_STEPCA_PASSWORD_FILE").into(),
        },
    })
    .await
    .expect("step-ca client");
    let again = client
        .revoke(&serial, "again", RevokeAuth::Token)
        .await
        .expect_err("step-ca had not revoked the service certificate");
    assert!(
        matches!(
            again,
            phoenix_ca::CaError::Refused {
                action: "revoke",
                status: 400,
                ..
            }
        ),
        "{again}"
    );
}
