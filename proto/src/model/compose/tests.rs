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
            "services:\n  a:\n    image: x\n    platform: linux/arm64\n",
            "services.a.platform",
            "own platform",
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
    assert_eq!(interpolate("x${A}y$A", &v).unwrap(), "x1y1");
    assert_eq!(interpolate("${B:-d}", &v).unwrap(), "d");
    assert_eq!(interpolate("${E:-d}", &v).unwrap(), "d");
    assert_eq!(interpolate("${E-d}", &v).unwrap(), "");
    assert_eq!(interpolate("$$A", &v).unwrap(), "$A");
    assert_eq!(interpolate("${B}", &v), Err(Interp::Unset("B".into())));
    assert_eq!(interpolate("${A:?x}", &v).unwrap(), "1");
    assert_eq!(
        interpolate("${E:?must be set}", &v),
        Err(Interp::Required {
            var: "E".into(),
            message: "must be set".into()
        })
    );
    assert_eq!(interpolate("${E?unset}", &v).unwrap(), "");
    assert_eq!(interpolate("${A:+on}${B:+on}", &v).unwrap(), "on");
    assert_eq!(interpolate("${B:-${A}x}", &v).unwrap(), "1x");
    assert!(matches!(interpolate("${A:*x}", &v), Err(Interp::Syntax(_))));
    let e = parse("services:\n  a:\n    image: \"${IMG}\"\n", &vars(&[])).unwrap_err();
    assert!(
        matches!(&e, ComposeError::UnsetVariable { var, field } if var == "IMG" && field == "services.a.image"),
        "{e}"
    );
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
        "services:\n  a:\n    image: x\n    volumes: [\"/x\"]\n",
        &vars(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("anonymous"), "{e}");
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
