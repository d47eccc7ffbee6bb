//! `phoenix serve --status-listen`: the status page, loaded by a real headless Chromium
//! (Debian's package) against a coordinator with two real agents, one of which fails
//! with a reason that is hostile HTML. Asserts on the DOM Chromium built, keeps a
//! screenshot as an artifact, and checks who the page refuses.

use phoenix_tests::spine::{
    Coordinator, enrolled, files_spec, serve_expecting_failure, write_spec,
};
use phoenix_tests::{require, wait_for};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

fn chromium() -> Option<PathBuf> {
    std::env::var_os("PHOENIX_CHROMIUM_BIN")
        .map(PathBuf::from)
        .filter(|p| p.exists())
}

/// Runs headless Chromium on `url` with `args` (e.g. `--dump-dom`); its stdout.
fn run_chromium(bin: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new(bin)
        .args([
            "--headless",
            // Tests run as root in CI, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the page listener accepts: the harness waits for the agent port and the
/// admin socket, which the daemon opens before its HTTP listeners.
fn listening(port: u16) {
    wait_for(Duration::from_secs(10), "status page listener", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

/// Status code and body of `GET /` with extra header lines.
fn get(port: u16, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let code = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, raw)
}

/// The attribute-free text of the element with `id` in `dom`, roughly (the tag's
/// inner HTML up to the next closing tag of the same name).
fn element<'a>(dom: &'a str, tag: &str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<{tag} id=\"{id}\""))
        .unwrap_or_else(|| panic!("no <{tag} id={id}> in the DOM:\n{dom}"));
    let rest = &dom[start..];
    let end = rest.find(&format!("</{tag}>")).unwrap_or(rest.len());
    &rest[..end]
}

/// Where test artifacts go: $PHOENIX_TEST_ARTIFACTS, else target/test-artifacts.
fn artifacts() -> PathBuf {
    let dir = std::env::var_os("PHOENIX_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts"));
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

#[test]
fn chromium_shows_the_fleet_and_hostile_reasons_as_text() {
    let Some(bin) = chromium() else {
        require("chromium (tests/setup/55-chromium.sh)", false);
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let c = Coordinator::start(&tmp.path().join("c"), &["--status-listen", &listen]);
    listening(port);
    let good = enrolled(&c, tmp.path(), 101);
    let bad = enrolled(&c, tmp.path(), 102);

    // Guest 102's command fails and says so on stderr, in HTML: the agent reports it as
    // the reason, and a page that let it through would run it and retitle itself.
    let hostile = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>";
    let mut failing = files_spec(&bad.root, &[("after", "never\n")]);
    failing["resources"][0]["depends_on"] = json!(["exec:boom"]);
    failing["resources"]
        .as_array_mut()
        .expect("resources")
        .push(json!({
            "kind": "exec",
            "name": "boom",
            "command": ["/bin/sh", "-c", format!("echo \"{hostile}\" >&2; exit 3")],
            "creates": bad.root.join("never-made").display().to_string(),
        }));
    let spec = tmp.path().join("spec.json");
    write_spec(
        &spec,
        &[
            (102, failing),
            (101, files_spec(&good.root, &[("motd", "hello\n")])),
        ],
    );
    let out = c.cli(&[
        "apply",
        "-f",
        spec.to_str().expect("utf8"),
        "--timeout",
        "30s",
    ]);
    assert!(!out.status.success(), "guest 102 must fail");
    wait_for(Duration::from_secs(30), "both reports stored", || {
        let s = c.status();
        let reported = |g: usize| s[g]["last_report"].is_object();
        (reported(0) && reported(1)).then_some(())
    });

    // The event log is written in batches: wait until the failed pass is in it.
    wait_for(
        Duration::from_secs(30),
        "the failed pass in the events",
        || get(port, "").1.contains("ApplyFailed").then_some(()),
    );

    let profile = tmp.path().join("chromium");
    let url = format!("http://{listen}/");
    let dom = run_chromium(&bin, &profile, &["--dump-dom"], &url);

    // The page ran no script: the title is ours and no script element exists.
    assert!(dom.contains("<title>Phoenix status</title>"), "{dom}");
    assert!(!dom.to_lowercase().contains("<script"), "{dom}");
    assert!(!dom.contains("<img"), "{dom}");
    // Guests in id order, with an honest state each.
    let row101 = dom.find("<tr id=\"guest-101\"").expect("row 101");
    let row102 = dom.find("<tr id=\"guest-102\"").expect("row 102");
    assert!(row101 < row102, "guests sorted by id");
    assert!(element(&dom, "tr", "guest-101").contains("data-state=\"converged\""));
    assert!(element(&dom, "tr", "guest-102").contains("data-state=\"failed\""));
    assert!(
        element(&dom, "span", "n-connected").contains("<b>2</b>"),
        "{dom}"
    );
    assert!(
        element(&dom, "span", "n-failed").contains("<b>1</b>"),
        "{dom}"
    );
    // The failing guest's report is expanded, with the reason as text.
    let report = element(&dom, "details", "report-102");
    assert!(report.contains(" open"), "{report}");
    assert!(report.contains("exec:boom"), "{report}");
    assert!(
        report.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;"),
        "the reason is shown as text: {report}"
    );
    assert!(report.contains("data-status=\"skipped\""), "{report}");
    assert!(!element(&dom, "details", "report-101").contains(" open"));
    // Certificates: the coordinator's and both identities, with expiry and issuer.
    let certs = element(&dom, "section", "certs");
    for needle in [
        "coordinator",
        "guest-101",
        "guest-102",
        "embedded",
        "in 23h",
    ] {
        assert!(certs.contains(needle), "{needle}: {certs}");
    }

    // Recent events, newest first: the enrollments and the failed pass, its reason as text.
    let events = element(&dom, "section", "events");
    assert!(events.contains("<h2>Recent events</h2>"), "{events}");
    let failed_pass = events
        .split("<tr class=\"event")
        .find(|row| row.contains("ApplyFailed"))
        .unwrap_or_else(|| panic!("no ApplyFailed event: {events}"));
    assert!(
        failed_pass.starts_with(" bad\" data-topic=\"Report\""),
        "{failed_pass}"
    );
    assert!(failed_pass.contains("<td>102</td>"), "{failed_pass}");
    assert!(
        failed_pass.contains("exec:boom") && failed_pass.contains("&lt;script&gt;"),
        "{failed_pass}"
    );
    assert!(events.contains("<td>Enrolled</td>"), "{events}");
    let indexes: Vec<u64> = events
        .split("<tr class=\"event")
        .skip(1)
        .filter_map(|row| {
            let cell = row.split("<td>").nth(1)?;
            cell.split('<').next()?.parse().ok()
        })
        .collect();
    assert!(indexes.len() >= 4, "{events}");
    assert!(
        indexes.windows(2).all(|w| w[0] > w[1]),
        "newest first: {indexes:?}"
    );

    let shot = artifacts().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &bin,
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1400",
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 10_000, "screenshot is {} bytes", png.len());
    eprintln!("status page screenshot: {}", shot.display());

    // A page served on loopback without a token answers only to local host names: a
    // web site that rebinds its own name to 127.0.0.1 gets nothing.
    let (code, _) = get(port, "");
    assert_eq!(code, 200);
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: rebind.example:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    assert!(raw.starts_with("HTTP/1.1 421"), "{raw}");
    assert!(!raw.contains("guest-101"), "{raw}");
    drop((good, bad));
}

#[test]
fn beyond_loopback_the_page_needs_its_token() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Without a token file the daemon refuses to start (and binds nothing).
    let out = serve_expecting_failure(
        &tmp.path().join("s0"),
        &tmp.path().join("s0.sock"),
        &["--status-listen", "0.0.0.0:0"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--status-token-file"), "{err}");
    // A world-readable token file is refused too.
    let token = "s3cret-status-token-0123456789";
    let file = tmp.path().join("status.token");
    std::fs::write(&file, format!("{token}\n")).expect("write token");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = serve_expecting_failure(
        &tmp.path().join("s1"),
        &tmp.path().join("s1.sock"),
        &[
            "--status-listen",
            "0.0.0.0:0",
            "--status-token-file",
            file.to_str().expect("utf8"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("every local account"), "{err}");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let port = free_port();
    let c = Coordinator::start(
        &tmp.path().join("c"),
        &[
            "--status-listen",
            &format!("0.0.0.0:{port}"),
            "--status-token-file",
            file.to_str().expect("utf8"),
        ],
    );
    listening(port);
    let (code, body) = get(port, "");
    assert_eq!(code, 401, "{body}");
    assert!(
        body.contains("WWW-Authenticate: Basic") || body.contains("www-authenticate: Basic"),
        "{body}"
    );
    assert!(!body.contains("Guests"), "{body}");
    let (code, body) = get(
        port,
        "Authorization: Bearer s3cret-status-token-012345678\r\n",
    );
    assert_eq!(code, 401, "a token one character short: {body}");
    let (code, body) = get(port, &format!("Authorization: Bearer {token}\r\n"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("<h2>Guests</h2>"), "{body}");
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("admin:{token}"),
    );
    let (code, _) = get(port, &format!("Authorization: Basic {basic}\r\n"));
    assert_eq!(code, 200);
    // Read-only: nothing but GET and HEAD, even with the token.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    drop(c);
}
