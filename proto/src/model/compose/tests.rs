// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use super::interpolate::{Interp, interpolate};
use super::syntax::parse_port;
use super::*;
use std::collections::BTreeMap;

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const FULL: &str = r#"
version: "3.8"
services:
  db:
    image: "busybox:${TAG:-1}"
    command: sh -c 'echo "hi there" && sleep 1000'
    environment:
      A: 1
      B: "${B_VAL}"
      C: ~
    env_file: /etc/phoenix/db.env
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
      timeout: 500ms
      retries: 3
      start_period: 1m30s
    volumes:
      - data:/data
      - type: bind
        source: /srv/conf
        target: /conf
        read_only: true
    networks:
      back:
        aliases: [database]
    restart: unless-stopped
    ulimits:
      nofile: {soft: 1024, hard: 2048}
      nproc: 512
    labels:
      - "x.y=z"
    logging:
      driver: json-file
      options: {max-size: 10m}
  api:
    image: busybox:1
    entrypoint: ["/bin/sh", "-c"]
    command: ["exec httpd -f"]
    ports:
      - "127.0.0.1:${PORT}:80"
      - 9000
      - "53:53/udp"
    depends_on:
      db:
        condition: service_healthy
    user: 1000
    working_dir: /srv
    devices: ["/dev/null:/dev/mynull"]
    cap_add: [NET_ADMIN]
    extra_hosts: ["host.docker.internal:10.0.0.1"]
    dns: 10.0.0.13
    init: true
    networks: [back, front]
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              count: all
              capabilities: [gpu]
  web:
    image: busybox:1
    restart: "no"
    depends_on: [api]
networks:
  back:
  front:
    driver: bridge
volumes:
  data:
"#;

#[test]
fn parses_the_whole_subset() {
    let p = parse(FULL, &vars(&[("B_VAL", "b"), ("PORT", "8080"), ("C", "c")])).unwrap();
    let db = &p.services()["db"];
    assert_eq!(db.image.as_str(), "busybox:1");
    assert_eq!(
        db.command.as_deref().unwrap(),
        ["sh", "-c", "echo \"hi there\" && sleep 1000"]
    );
    assert_eq!(db.environment["A"], "1");
    assert_eq!(db.environment["B"], "b");
    assert_eq!(db.environment["C"], "c");
    let hc = db.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, ["CMD", "true"]);
    assert_eq!(hc.interval, Some(1_000_000_000));
    assert_eq!(hc.timeout, Some(500_000_000));
    assert_eq!(hc.start_period, Some(90_000_000_000));
    assert_eq!(db.volumes[0].kind, MountKind::Volume);
    assert_eq!(db.volumes[1].kind, MountKind::Bind);
    assert!(db.volumes[1].read_only);
    assert_eq!(db.networks["back"], ["database"]);
    assert_eq!(
        db.ulimits["nofile"],
        Ulimit {
            soft: 1024,
            hard: 2048
        }
    );
    assert_eq!(
        db.ulimits["nproc"],
        Ulimit {
            soft: 512,
            hard: 512
        }
    );
    assert_eq!(db.labels["x.y"], "z");

    let api = &p.services()["api"];
    assert_eq!(api.ports[0].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(api.ports[0].host_port, Some(8080));
    assert_eq!(api.ports[1].host_port, None);
    assert_eq!(api.ports[2].protocol, "udp");
    assert_eq!(api.depends_on["db"], Condition::ServiceHealthy);
    assert_eq!(api.user.as_deref(), Some("1000"));
    assert_eq!(api.gpus[0].count, Some(-1));
    assert_eq!(api.gpus[0].capabilities, ["gpu"]);
    assert_eq!(api.dns, ["10.0.0.13"]);
    assert_eq!(p.services()["web"].restart.as_deref(), Some("no"));
    assert!(p.networks().contains_key("default"), "web has no networks");
    assert_eq!(p.start_order(), ["db", "api", "web"]);
}

#[test]
fn unsupported_keys_are_named_with_the_service_and_why() {
    for (compose, field, why) in [
        (
            "services:\n  a:\n    image: x\n    wrongField: 1\n",
            "services.a",
            "unknown field `wrongField`",
        ),
        (
            "services:\n  a:\n    image: x\n    privileged: true\n",
            "services.a.privileged",
            "every device",
        ),
        (
            "services:\n  a:\n    image: x\n    platform: arm64\n",
            "services.a.platform",
            "not a platform",
        ),
        (
            "services:\n  a:\n    build:\n      context: .\n      ssh: [default]\n    image: x\n",
            "services.a.build.ssh",
            "SSH agent",
        ),
        (
            "services:\n  a:\n    image: x\n    volumes:\n      - type: bind\n        source: /a\n        target: /b\n        bind: {propagation: shared}\n",
            "services.a.volumes.bind.propagation",
            "propagation",
        ),
        (
            "services:\n  a:\n    image: x\n    secrets: [s]\nsecrets:\n  s:\n    external: true\n",
            "secrets.s.external",
            "swarm",
        ),
        (
            "services:\n  a:\n    image: x\n    pull_policy: always\n",
            "services.a.pull_policy",
            "every reconcile pass",
        ),
        (
            "services:\n  a:\n    image: x\nnetworks:\n  n:\n    driver: overlay\n",
            "networks.n.driver",
            "swarm",
        ),
        (
            "services:\n  a:\n    image: x\n    deploy:\n      replicas: 100000\n",
            "services.a.deploy.replicas",
            "count",
        ),
        (
            "services:\n  a:\n    image: x\ninclude: [other.yml]\n",
            "include",
            "merge",
        ),
    ] {
        let e = parse(compose, &vars(&[])).unwrap_err().to_string();
        assert!(
            e.contains(&format!("compose {field}")) && e.contains(why),
            "{compose}: {e}"
        );
    }
}

#[test]
fn interpolation() {
    let v = vars(&[("A", "1"), ("E", "")]);
    let none = std::collections::BTreeSet::new();
    let i = |text: &str| interpolate(text, &v, &none, &mut Vec::new());
    assert_eq!(i("x${A}y$A").unwrap(), "x1y1");
    assert_eq!(i("${B:-d}").unwrap(), "d");
    assert_eq!(i("${E:-d}").unwrap(), "d");
    assert_eq!(i("${E-d}").unwrap(), "");
    assert_eq!(i("$$A").unwrap(), "$A");
    let mut unset = Vec::new();
    assert_eq!(
        interpolate("a${B}b$C", &v, &none, &mut unset).unwrap(),
        "ab"
    );
    assert_eq!(unset, ["B", "C"]);
    assert_eq!(i("${A:?x}").unwrap(), "1");
    assert_eq!(
        i("${E:?must be set}"),
        Err(Interp::Required {
            var: "E".into(),
            message: "must be set".into()
        })
    );
    assert_eq!(
        i("${B?unset}"),
        Err(Interp::Required {
            var: "B".into(),
            message: "unset".into()
        })
    );
    assert_eq!(i("${E?unset}").unwrap(), "");
    assert_eq!(i("${A:+on}${B:+on}").unwrap(), "on");
    assert_eq!(i("${B:-${A}x}").unwrap(), "1x");
    assert!(matches!(i("${A:*x}"), Err(Interp::Syntax(_))));
}

/// As `docker compose`: an unset variable without a default is an empty string and a
/// warning naming the field and the variable, never a value; `?` forms still refuse.
#[test]
fn an_unset_variable_is_empty_with_a_warning() {
    let compose = "services:\n  a:\n    image: \"busybox${TAG}\"\n    environment:\n      PASSWORD: \"${DB_PASSWORD}\"\n      KEEP: \"${SET}\"\n      FROM_STACK:\n";
    let p = parse(compose, &vars(&[("SET", "hunter2-value")])).unwrap();
    let a = &p.services()["a"];
    assert_eq!(a.image.as_str(), "busybox");
    assert_eq!(a.environment["PASSWORD"], "");
    // `FROM_STACK` without a value and no stack variable of that name: not set at all.
    assert!(!a.environment.contains_key("FROM_STACK"));
    let w = p.warnings().join("\n");
    for want in [
        "services.a.image: variable TAG is not set",
        "services.a.environment: variable DB_PASSWORD is not set",
        "services.a.environment: FROM_STACK has no value",
    ] {
        assert!(w.contains(want), "{want} in {w}");
    }
    assert!(!w.contains("hunter2"), "no value in a warning: {w}");
    // The warnings travel with the project (the agent prints them in its plan).
    let back: ComposeProject = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
    assert_eq!(back.warnings(), p.warnings());
    // Required forms still refuse, naming the variable and the file's message only.
    let e = parse(
        "services:\n  a:\n    image: \"${IMG:?set IMG}\"\n",
        &vars(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("services.a.image") && e.contains("IMG") && e.contains("set IMG"),
        "{e}"
    );
    // A value left invalid by an empty variable: the error names the variable.
    let e = parse(
        "services:\n  a:\n    image: busybox\n    ports: [\"${PORT}:80\"]\n",
        &vars(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("services.a.ports") && e.contains("variable PORT is not set"),
        "{e}"
    );
    let clean = parse("services:\n  a:\n    image: busybox\n", &vars(&[])).unwrap();
    assert!(clean.warnings().is_empty());
}

#[test]
fn references_and_cycles() {
    let e = parse(
        "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n",
        &vars(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("dependency cycle between services: a -> b -> a"),
        "{e}"
    );
    let e = parse(
        "services:\n  a:\n    image: x\n    volumes: [\"nope:/x\"]\n",
        &vars(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nope"), "{e}");
    let e = parse(
        "services:\n  a:\n    image: x\n    labels: {phoenix.stack: other}\n",
        &vars(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("reserved"), "{e}");
}

#[test]
fn ports() {
    let p = &parse_port("[::1]:80:8080/tcp").unwrap()[0];
    assert_eq!(p.host_ip.as_deref(), Some("::1"));
    assert_eq!((p.host_port, p.container_port), (Some(80), 8080));
    let r = parse_port("127.0.0.1:8000-8002:9000-9002/udp").unwrap();
    assert_eq!(
        r.iter()
            .map(|p| (p.host_port, p.container_port))
            .collect::<Vec<_>>(),
        [(Some(8000), 9000), (Some(8001), 9001), (Some(8002), 9002)]
    );
    assert!(parse_port("8000-8010:80").is_err(), "a range to pick from");
    assert!(parse_port("90-80").is_err());
    assert!(parse_port("1-65535").is_err(), "too many");
    assert!(parse_port("80:80/xyz").is_err());
}

#[test]
fn a_received_project_passes_the_parsers_checks() {
    // What the compiler sends round-trips unchanged.
    let p = parse(FULL, &vars(&[("B_VAL", "b"), ("PORT", "8080"), ("C", "c")])).unwrap();
    let json = serde_json::to_value(&p).unwrap();
    let back: ComposeProject = serde_json::from_value(json).unwrap();
    assert_eq!(back, p);
    // A hand-made or tampered project meets the same checks as a parsed file.
    for (project, why) in [
        (
            serde_json::json!({"services": {"a": {"image": "x", "depends_on": {"a": "service_started"}}}}),
            "services.a.depends_on: a service cannot depend on itself",
        ),
        (
            serde_json::json!({"services": {"a": {"image": "x", "volumes": [{"kind": "bind", "source": "etc", "target": "/e"}]}}}),
            "services.a.volumes: bind source \"etc\" must be an absolute path",
        ),
        (
            serde_json::json!({"services": {"a": {"image": "x", "labels": {"phoenix.owner": "forged"}}}}),
            "the phoenix. prefix is reserved",
        ),
        (
            serde_json::json!({"services": {"a": {"image": "Not An Image"}}}),
            "invalid image reference",
        ),
        (
            serde_json::json!({"services": {"a": {"image": "x", "privileged": true}}}),
            "unknown field `privileged`",
        ),
        (
            serde_json::json!({"services": {"a": {"image": "x", "network_mode": "container:evil"}}}),
            "services.a.network_mode",
        ),
        (
            serde_json::json!({"services": {"a": {"image": "x", "security_opt": ["seccomp:unconfined"]}}}),
            "only no-new-privileges",
        ),
    ] {
        let e = serde_json::from_value::<ComposeProject>(project)
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{why}: {e}");
    }
    // The implicit default network is added on this path too.
    let p: ComposeProject =
        serde_json::from_value(serde_json::json!({"services": {"a": {"image": "x"}}})).unwrap();
    assert!(p.networks().contains_key(DEFAULT_NETWORK));
}

#[test]
fn image_references_are_checked_with_the_service_named() {
    let e = parse("services:\n  web:\n    image: \"Nginx:1\"\n", &vars(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("services.web.image") && e.contains("\"Nginx:1\""),
        "{e}"
    );
}
