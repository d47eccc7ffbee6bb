// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

//! `extends`, `platform`, anonymous volumes: read as `docker compose` reads them.

use super::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A project in `/srv/p` whose other files are `files` (relative path → text).
fn opts(files: &[(&str, &str)]) -> ParseOptions {
    let files: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    ParseOptions {
        variables: BTreeMap::from([("TAG".to_string(), "1.2".to_string())]),
        project_dir: Some(PathBuf::from("/srv/p")),
        project_name: Some("p".into()),
        profiles: Vec::new(),
        files: Some(FileReader::new(move |p: &Path| {
            files
                .get(p)
                .cloned()
                .ok_or_else(|| format!("{} not found", p.display()))
        })),
        withheld: Default::default(),
    }
}

fn ok(compose: &str, o: &ParseOptions) -> ComposeProject {
    parse_with(compose, o).unwrap_or_else(|e| panic!("{compose}\n→ {e}"))
}

fn err(compose: &str, o: &ParseOptions) -> String {
    match parse_with(compose, o) {
        Ok(_) => panic!("accepted: {compose}"),
        Err(e) => e.to_string(),
    }
}

const BASE: &str = r#"
services:
  base:
    image: "busybox:${TAG}"
    command: [sleep, "1"]
    environment: [A=1, B=2]
    labels: {tier: base}
    ports: ["80:80"]
    volumes: ["./data:/data", "logs:/logs"]
    healthcheck: {test: [CMD, "true"], interval: 5s}
    dns: [1.1.1.1]
  web:
    extends: base
    command: [sleep, "2"]
    environment: {B: "3", C: "4"}
    ports: ["81:81"]
    volumes: ["./other:/data"]
    healthcheck: {test: [CMD, "false"]}
    dns: [8.8.8.8]
volumes:
  logs: {}
"#;

/// Compose's merge rules: mappings merge (local wins), commands and healthcheck tests are
/// replaced, mounts are unique by container path, other sequences append.
#[test]
fn extends_in_the_same_file_merges_as_compose_does() {
    let p = ok(BASE, &opts(&[]));
    let web = &p.services()["web"];
    assert_eq!(web.image.as_str(), "busybox:1.2");
    assert_eq!(web.command.as_deref().unwrap(), ["sleep", "2"]);
    let env: Vec<(&str, &str)> = web
        .environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(env, [("A", "1"), ("B", "3"), ("C", "4")]);
    assert_eq!(web.labels["tier"], "base");
    let ports: Vec<u16> = web.ports.iter().map(|p| p.container_port).collect();
    assert_eq!(ports, [80, 81]);
    let mounts: Vec<(&str, &str)> = web
        .volumes
        .iter()
        .map(|m| (m.source.as_str(), m.target.as_str()))
        .collect();
    assert_eq!(mounts, [("logs", "/logs"), ("/srv/p/other", "/data")]);
    let h = web.healthcheck.as_ref().unwrap();
    assert_eq!(h.test, ["CMD", "false"]);
    assert_eq!(h.interval, Some(5_000_000_000));
    assert_eq!(web.dns, ["1.1.1.1", "8.8.8.8"]);
    // The base itself is unchanged.
    assert_eq!(
        p.services()["base"].command.as_deref().unwrap(),
        ["sleep", "1"]
    );
}

/// Another file inside the project directory: its relative paths resolve against its own
/// directory, as Compose resolves them; a chain through files is followed.
#[test]
fn extends_from_another_file_rebases_its_paths() {
    let common = "services:\n  svc:\n    extends: {file: ../root.yml, service: root}\n    build: ./ctx\n    volumes: [\"./conf:/conf\"]\n    env_file: app.env\n";
    let root = "services:\n  root:\n    image: x\n    labels: [from=root]\n";
    let o = opts(&[("lib/common.yml", common), ("root.yml", root)]);
    let p = ok(
        "services:\n  app:\n    extends:\n      file: lib/common.yml\n      service: svc\n    environment: [K=v]\n",
        &o,
    );
    let app = &p.services()["app"];
    assert_eq!(app.build.as_ref().unwrap().context, "/srv/p/lib/ctx");
    assert_eq!(app.volumes[0].source, "/srv/p/lib/conf");
    assert_eq!(app.env_files, ["/srv/p/lib/app.env"]);
    assert_eq!(app.labels["from"], "root");
    assert_eq!(app.environment["K"], "v");
    assert_eq!(app.image.as_str(), "x");
}

/// The other file must stay inside the project directory, exist, and name the service;
/// cycles end; without a file reader only this file's services can be extended.
#[test]
fn extends_refusals_name_the_key_and_why() {
    let o = opts(&[("other.yml", "services:\n  b:\n    image: x\n")]);
    for (compose, why) in [
        (
            "services:\n  a:\n    extends: {file: ../../etc/x.yml, service: b}\n",
            "leads out of the project directory",
        ),
        (
            "services:\n  a:\n    extends: {file: /etc/x.yml, service: b}\n",
            "inside the project directory",
        ),
        (
            "services:\n  a:\n    extends: {file: missing.yml, service: b}\n",
            "missing.yml not found",
        ),
        (
            "services:\n  a:\n    extends: {file: other.yml, service: nope}\n",
            "has no service \"nope\"",
        ),
        (
            "services:\n  a:\n    extends: b\n  b:\n    extends: a\n",
            "cycle",
        ),
        ("services:\n  a:\n    extends: nope\n", "no such service"),
    ] {
        let e = err(compose, &o);
        assert!(
            e.contains("services.a") && e.contains(why),
            "{compose}: {e}"
        );
    }
    let mut no_reader = o.clone();
    no_reader.files = None;
    let e = err(
        "services:\n  a:\n    extends: {file: other.yml, service: b}\n",
        &no_reader,
    );
    assert!(e.contains("services.a.extends"), "{e}");
}

/// `platform` and build `platforms` are kept for the agent to compare with the engine's
/// own platform; the form is checked here, and Compose's rule that a service's platform
/// is one its build produces.
#[test]
fn platforms_are_kept_for_the_agent_to_judge() {
    let o = opts(&[]);
    let p = ok(
        "services:\n  a:\n    image: x\n    platform: linux/amd64\n    build: {context: ., platforms: [linux/amd64, linux/arm64]}\n",
        &o,
    );
    let a = &p.services()["a"];
    assert_eq!(a.platform.as_deref(), Some("linux/amd64"));
    assert_eq!(
        a.build.as_ref().unwrap().platforms,
        ["linux/amd64", "linux/arm64"]
    );
    let e = err(
        "services:\n  a:\n    image: x\n    platform: linux/riscv64\n    build: {context: ., platforms: [linux/amd64]}\n",
        &o,
    );
    assert!(
        e.contains("services.a.platform") && e.contains("not one of build.platforms"),
        "{e}"
    );
    let e = err(
        "services:\n  a:\n    image: x\n    platform: \"linux/../x\"\n",
        &o,
    );
    assert!(e.contains("not a platform"), "{e}");
}

/// `- /data` and a long-syntax volume without a source are anonymous volumes.
#[test]
fn anonymous_volumes_are_read() {
    let p = ok(
        "services:\n  a:\n    image: x\n    volumes:\n      - /data\n      - type: volume\n        target: /cache\n        read_only: true\n",
        &opts(&[]),
    );
    let v = &p.services()["a"].volumes;
    assert_eq!(v.len(), 2);
    assert!(
        v.iter()
            .all(|m| m.kind == MountKind::Anonymous && m.source.is_empty())
    );
    assert_eq!(v[0].target, "/data");
    assert!(v[1].read_only && v[1].target == "/cache");
    assert!(grants::detect(&p, &[]).is_empty(), "no grant");
    let e = err(
        "services:\n  a:\n    image: x\n    volumes:\n      - type: bind\n        target: /x\n",
        &opts(&[]),
    );
    assert!(e.contains("needs a source"), "{e}");
}

/// A variable the caller withholds (a manifest's literal secret) is refused in every
/// form, never substituted by an empty string or a default.
#[test]
fn a_withheld_variable_is_refused_not_emptied() {
    let mut o = opts(&[]);
    o.withheld = ["PW".to_string()].into_iter().collect();
    for form in ["${PW}", "$PW", "${PW:-fallback}", "${PW-x}", "${PW:+on}"] {
        let e = err(
            &format!("services:\n  a:\n    image: x\n    environment:\n      P: \"{form}\"\n"),
            &o,
        );
        assert!(
            e.contains("services.a.environment") && e.contains("variable PW is a literal secret"),
            "{form}: {e}"
        );
    }
}
