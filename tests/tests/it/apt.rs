//! Packages against real apt and dpkg (in the systemd guest, tests/src/guest.rs), from a
//! signed local repository the test builds: installed, pinned and held, upgraded, removed;
//! all changes of a pass in one apt transaction; a second apply touches nothing; a source
//! signed by another key and an unknown package fail with apt's own message.

use phoenix_tests::aptrepo::{self, Repo};
use phoenix_tests::guest::{Applied, Guest};
use serde_json::{Value, json};

const SOURCE: &str = "apt_source:phoenix-test";

fn source(key: &str) -> Value {
    json!({"kind": "apt_source", "name": "phoenix-test", "uris": ["file:///srv/repo"],
           "suites": ["./"], "signing_key": {"armored": key}})
}

fn spec(key: &str, demo: Value, extra: Value) -> Value {
    let mut demo = demo;
    let mut extra = extra;
    demo["kind"] = json!("package");
    demo["name"] = json!("phoenix-demo");
    demo["depends_on"] = json!([SOURCE]);
    extra["kind"] = json!("package");
    extra["name"] = json!("phoenix-extra");
    extra["depends_on"] = json!([SOURCE]);
    json!({"resources": [source(key), demo, extra]})
}

/// (dpkg status abbrev, version) of a package.
fn dpkg(g: &Guest, name: &str) -> String {
    g.ok(&format!(
        "dpkg-query -W -f='${{db:Status-Abbrev}}${{Version}}' {name} 2>/dev/null || echo none"
    ))
}

/// apt transactions so far.
fn transactions(g: &Guest) -> usize {
    g.ok("grep -c '^Start-Date' /var/log/apt/history.log 2>/dev/null || echo 0")
        .parse()
        .expect("count")
}

#[test]
fn packages_from_a_signed_local_repository() {
    if !phoenix_tests::require(
        "dpkg-deb, dpkg-scanpackages, apt-ftparchive and gpg",
        aptrepo::tools_present(),
    ) {
        return;
    }
    let repo = Repo::build(&[
        ("phoenix-demo", "1.0"),
        ("phoenix-demo", "2.0"),
        ("phoenix-extra", "1.0"),
    ]);
    let Some(g) = Guest::boot("apt", &[(repo.path(), "/srv/repo")]) else {
        return;
    };
    let k = repo.key.as_str();
    let t0 = transactions(&g);

    // Installed, pinned and held; both packages in one apt-get run.
    let first = spec(k, json!({"version": "1.0", "hold": true}), json!({}));
    g.apply(&first).assert(&[
        (SOURCE, "changed"),
        ("package:phoenix-demo", "changed"),
        ("package:phoenix-extra", "changed"),
    ]);
    assert_eq!(
        dpkg(&g, "phoenix-demo"),
        "hi 1.0",
        "installed at the pin and held"
    );
    assert_eq!(dpkg(&g, "phoenix-extra"), "ii 1.0");
    assert_eq!(
        transactions(&g),
        t0 + 1,
        "one transaction for both packages"
    );
    let sources = g.ok("cat /etc/apt/sources.list.d/phoenix-test.sources");
    assert!(
        sources.contains("Signed-By: /etc/apt/keyrings/phoenix-test.asc"),
        "{sources}"
    );
    assert!(!sources.contains("trusted"), "{sources}");

    // A second apply changes nothing: no file written, no apt run, dpkg state untouched.
    let watched = [
        "/etc/apt/sources.list.d/phoenix-test.sources",
        "/etc/apt/keyrings/phoenix-test.asc",
        "/var/lib/dpkg/status",
        "/var/lib/apt/extended_states",
    ];
    let before = g.mtimes(&watched);
    g.apply(&first).assert_all_unchanged();
    assert_eq!(g.mtimes(&watched), before);
    assert_eq!(transactions(&g), t0 + 1);

    // Upgraded to the candidate, still held.
    g.apply(&spec(
        k,
        json!({"state": "latest", "hold": true}),
        json!({}),
    ))
    .assert(&[
        ("package:phoenix-demo", "changed"),
        ("package:phoenix-extra", "unchanged"),
    ]);
    assert_eq!(dpkg(&g, "phoenix-demo"), "hi 2.0");
    assert_eq!(g.ok("cat /usr/share/phoenix-demo/version"), "2.0");

    // Pinned back down, unheld.
    g.apply(&spec(k, json!({"version": "1.0"}), json!({})))
        .assert(&[("package:phoenix-demo", "changed")]);
    assert_eq!(dpkg(&g, "phoenix-demo"), "ii 1.0");

    // Removed, both in one transaction.
    let n = transactions(&g);
    let gone = spec(k, json!({"state": "absent"}), json!({"state": "absent"}));
    g.apply(&gone).assert(&[
        ("package:phoenix-demo", "changed"),
        ("package:phoenix-extra", "changed"),
    ]);
    assert_eq!(transactions(&g), n + 1);
    assert!(!dpkg(&g, "phoenix-demo").starts_with("ii"));
    assert!(!dpkg(&g, "phoenix-extra").starts_with("ii"));
    g.apply(&gone).assert_all_unchanged();

    // An unknown package: apt's own words in the report.
    let unknown = json!({"resources": [source(k),
        {"kind": "package", "name": "phoenix-nosuch", "depends_on": [SOURCE]}]});
    let a: Applied = g.apply(&unknown);
    assert!(!a.ok);
    assert!(
        a.message("package:phoenix-nosuch")
            .contains("Unable to locate package phoenix-nosuch"),
        "{}",
        a.report
    );
}

#[test]
fn a_source_signed_by_another_key_is_refused_and_rolled_back() {
    if !phoenix_tests::require(
        "dpkg-deb, dpkg-scanpackages, apt-ftparchive and gpg",
        aptrepo::tools_present(),
    ) {
        return;
    }
    let repo = Repo::build(&[("phoenix-demo", "1.0")]);
    let (_other_home, other_key) = aptrepo::signing_key("Somebody Else <else@phoenix.invalid>");
    let Some(g) = Guest::boot("aptkey", &[(repo.path(), "/srv/repo")]) else {
        return;
    };
    let s = spec(&other_key, json!({}), json!({}));
    let a = g.apply(&s);
    assert!(!a.ok);
    assert_eq!(a.status(SOURCE), "failed");
    let msg = a.message(SOURCE);
    assert!(
        msg.contains("NO_PUBKEY") || msg.contains("not signed") || msg.contains("signature"),
        "{msg}"
    );
    assert_eq!(a.status("package:phoenix-demo"), "skipped");
    assert_eq!(
        g.ok("test -e /etc/apt/sources.list.d/phoenix-test.sources && echo yes || echo no"),
        "no",
        "the source is rolled back so the next pass retries"
    );
}
