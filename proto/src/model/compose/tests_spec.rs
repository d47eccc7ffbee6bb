// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

//! The Compose keys beyond the first subset: extensions, project directory, profiles,
//! deploy, network modes, static addresses, secrets and configs, build; and hostile
//! values, which must be refused, never crash.

use super::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn opts(dir: Option<&str>, profiles: &[&str], vars: &[(&str, &str)]) -> ParseOptions {
    ParseOptions {
        variables: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        project_dir: dir.map(PathBuf::from),
        project_name: Some("proj".into()),
        profiles: profiles.iter().map(|p| p.to_string()).collect(),
        files: None,
        withheld: Default::default(),
    }
}

fn ok(compose: &str, o: &ParseOptions) -> ComposeProject {
    match parse_with(compose, o) {
        Ok(p) => p,
        Err(e) => panic!("{compose}\n→ {e}"),
    }
}

fn err(compose: &str, o: &ParseOptions) -> String {
    match parse_with(compose, o) {
        Ok(_) => panic!("accepted: {compose}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn extension_keys_are_ignored_everywhere_but_in_data() {
    let p = ok(
        r#"
x-common: &common
  restart: always
x-other: {anything: [1, 2]}
services:
  a:
    <<: *common
    image: x
    x-note: ignored
    labels: {x-team: web}
    environment: {x-var: "1"}
    deploy:
      x-inner: 1
      resources:
        x-deeper: 2
networks:
  n:
    x-meta: 1
"#,
        &opts(None, &[], &[]),
    );
    let a = &p.services()["a"];
    assert_eq!(
        a.restart.as_deref(),
        Some("always"),
        "merge key from an x- anchor"
    );
    assert_eq!(a.labels["x-team"], "web");
    assert_eq!(a.environment["x-var"], "1");
}

#[test]
fn required_variables_name_the_variable_and_message_never_a_value() {
    let o = opts(None, &[], &[("DB_PASSWORD", "hunter2"), ("EMPTY", "")]);
    let e = parse_with(
        "services:\n  a:\n    image: \"x:${TAG:?set TAG to the release}\"\n",
        &o,
    )
    .unwrap_err();
    assert!(
        matches!(&e, ComposeError::RequiredVariable { var, message, field }
            if var == "TAG" && message == "set TAG to the release" && field == "services.a.image"),
        "{e}"
    );
    let e = err(
        "services:\n  a:\n    image: x\n    environment: {P: \"${DB_PASSWORD}\", Q: \"${EMPTY:?empty}\"}\n",
        &o,
    );
    assert!(e.contains("EMPTY") && e.contains("empty"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    // `?` without a colon accepts a set, empty value.
    let p = ok(
        "services:\n  a:\n    image: x\n    environment: {Q: \"${EMPTY?unset}\"}\n",
        &o,
    );
    assert_eq!(p.services()["a"].environment["Q"], "");
}

#[test]
fn top_level_name_names_the_project() {
    let p = ok(
        "name: myapp\nservices:\n  web:\n    build: .\n",
        &opts(Some("/srv/s"), &[], &[]),
    );
    assert_eq!(p.name(), Some("myapp"));
    assert_eq!(p.services()["web"].image.as_str(), "myapp-web");
    let e = err(
        "name: My App\nservices:\n  a:\n    image: x\n",
        &opts(None, &[], &[]),
    );
    assert!(e.contains("compose name"), "{e}");
}

#[test]
fn relative_paths_resolve_in_the_project_directory_and_stay_there() {
    let o = opts(Some("/srv/phoenix/stacks/qdrant"), &[], &[]);
    let p = ok(
        r#"
services:
  q:
    image: qdrant/qdrant
    volumes:
      - ./qdrant_storage:/qdrant/storage:z
      - .:/app
      - type: bind
        source: conf/a.yml
        target: /a.yml
    env_file: ./q.env
"#,
        &o,
    );
    let q = &p.services()["q"];
    assert_eq!(
        q.volumes[0].source,
        "/srv/phoenix/stacks/qdrant/qdrant_storage"
    );
    assert_eq!(q.volumes[1].source, "/srv/phoenix/stacks/qdrant");
    assert_eq!(q.volumes[2].source, "/srv/phoenix/stacks/qdrant/conf/a.yml");
    assert_eq!(q.env_files, ["/srv/phoenix/stacks/qdrant/q.env"]);
    for escape in ["../other:/x", "./a/../../..:/x", "~/x:/x"] {
        let e = err(
            &format!("services:\n  q:\n    image: x\n    volumes: [\"{escape}\"]\n"),
            &o,
        );
        assert!(e.contains("services.q.volumes"), "{escape}: {e}");
    }
    // Without a project directory relative paths are refused, as before.
    let e = err(
        "services:\n  q:\n    image: x\n    volumes: [\"./d:/d\"]\n",
        &opts(None, &[], &[]),
    );
    assert!(e.contains("no project directory"), "{e}");
}

#[test]
fn profiles_keep_or_drop_services() {
    let file = r#"
services:
  app:
    image: x
  debug:
    image: x
    profiles: [debug]
  needs-debug:
    image: x
    profiles: [tools]
    depends_on: [debug]
  optional:
    image: x
    depends_on:
      debug: {condition: service_started, required: false}
"#;
    let p = ok(file, &opts(None, &[], &[]));
    assert_eq!(p.services().keys().collect::<Vec<_>>(), ["app", "optional"]);
    assert!(p.services()["optional"].depends_on.is_empty());
    let p = ok(file, &opts(None, &["debug"], &[]));
    assert!(p.services().contains_key("debug"));
    assert_eq!(p.services().len(), 3);
    let e = err(file, &opts(None, &["tools"], &[]));
    assert!(
        e.contains("services.needs-debug.depends_on") && e.contains("debug"),
        "{e}"
    );
    assert_eq!(ok(file, &opts(None, &["*"], &[])).services().len(), 4);
}

#[test]
fn deploy_replicas_resources_and_restart_policy() {
    let p = ok(
        r#"
services:
  a:
    image: x
    deploy:
      replicas: 3
      placement: {constraints: [node.role == manager]}
      labels: {}
      restart_policy: {condition: on-failure, max_attempts: 2, delay: 5s}
      resources:
        limits: {cpus: "0.5", memory: 512M, pids: 100}
        reservations: {cpus: 2, memory: 128m}
  b:
    image: x
    cpus: 1.5
    mem_limit: 1g
    pids_limit: 10
    deploy:
      resources:
        limits: {cpus: 4, memory: 2g}
"#,
        &opts(None, &[], &[]),
    );
    let a = &p.services()["a"];
    assert_eq!(a.replicas, Some(3));
    assert_eq!(a.restart.as_deref(), Some("on-failure:2"));
    assert_eq!(
        a.resources,
        Resources {
            nano_cpus: Some(500_000_000),
            memory: Some(512 << 20),
            pids: Some(100),
            memory_reservation: Some(128 << 20),
            // A CPU reservation sets nothing on the container, as in Compose.
            cpu_shares: None,
        }
    );
    let b = &p.services()["b"];
    // deploy.resources limits override the service-level keys, as Compose applies them
    // after those; what deploy leaves unset stays.
    assert_eq!(b.resources.nano_cpus, Some(4_000_000_000));
    assert_eq!(b.resources.memory, Some(2 << 30));
    assert_eq!(b.resources.pids, Some(10));
    assert_eq!(b.resources.cpu_shares, None);
    let c = ok(
        "services:\n  c:\n    image: x\n    cpu_shares: 512\n",
        &opts(None, &[], &[]),
    );
    assert_eq!(c.services()["c"].resources.cpu_shares, Some(512));
    for bad in [
        "limits: {cpus: -1}",
        "limits: {cpus: lots}",
        "limits: {memory: 0}",
        "limits: {memory: 12q}",
        "limits: {pids: 0}",
    ] {
        let e = err(
            &format!(
                "services:\n  a:\n    image: x\n    deploy:\n      resources:\n        {bad}\n"
            ),
            &opts(None, &[], &[]),
        );
        assert!(
            e.contains("services.a.deploy.resources.limits"),
            "{bad}: {e}"
        );
    }
    let e = err(
        "services:\n  a:\n    image: x\n    container_name: fixed\n    deploy: {replicas: 2}\n",
        &opts(None, &[], &[]),
    );
    assert!(e.contains("container_name"), "{e}");
}

#[test]
fn network_modes_and_static_addresses() {
    let p = ok(
        r#"
services:
  db:
    image: x
    networks:
      back:
        ipv4_address: 10.5.0.10
  sidecar:
    image: x
    network_mode: "service:db"
  offline:
    image: x
    network_mode: none
networks:
  back:
    ipam:
      config:
        - subnet: 10.5.0.0/16
          gateway: 10.5.0.1
"#,
        &opts(None, &[], &[]),
    );
    assert_eq!(p.start_order(), ["db", "offline", "sidecar"]);
    assert_eq!(
        p.services()["db"].addresses["back"].ipv4.as_deref(),
        Some("10.5.0.10")
    );
    assert!(
        !p.networks().contains_key(DEFAULT_NETWORK),
        "no service joins it"
    );
    for (bad, why) in [
        ("network_mode: \"service:nope\"", "unknown service"),
        ("network_mode: \"container:abc\"", "only none, bridge, host"),
        (
            "network_mode: none\n    networks: [back]",
            "cannot be combined",
        ),
        (
            "network_mode: none\n    ports: [\"80:80\"]",
            "cannot publish",
        ),
        (
            "networks:\n      back: {ipv4_address: 192.168.1.5}",
            "in no subnet",
        ),
        (
            "networks:\n      back: {ipv4_address: 10.5.0.300}",
            "not an IP address",
        ),
    ] {
        let e = err(
            &format!(
                "services:\n  a:\n    image: x\n    {bad}\nnetworks:\n  back:\n    ipam:\n      config: [{{subnet: 10.5.0.0/16}}]\n"
            ),
            &opts(None, &[], &[]),
        );
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn secrets_and_configs_are_read_only_binds_of_files_on_the_guest() {
    let p = ok(
        r#"
services:
  a:
    image: x
    secrets:
      - db_password
      - source: api_key
        target: key.txt
    configs:
      - app_conf
      - source: app_conf
        target: /etc/app/app.conf
secrets:
  db_password:
    file: ./secrets/db_password.txt
  api_key:
    file: /etc/phoenix/secrets/api.key
configs:
  app_conf:
    file: ./app.conf
"#,
        &opts(Some("/srv/p"), &[], &[]),
    );
    let m: Vec<(String, String, bool)> = p.services()["a"]
        .volumes
        .iter()
        .map(|m| (m.source.clone(), m.target.clone(), m.read_only))
        .collect();
    assert_eq!(
        m,
        [
            (
                "/srv/p/secrets/db_password.txt".into(),
                "/run/secrets/db_password".into(),
                true
            ),
            (
                "/etc/phoenix/secrets/api.key".into(),
                "/run/secrets/key.txt".into(),
                true
            ),
            ("/srv/p/app.conf".into(), "/app_conf".into(), true),
            ("/srv/p/app.conf".into(), "/etc/app/app.conf".into(), true),
        ]
    );
    let e = err(
        "services:\n  a:\n    image: x\n    secrets: [nope]\n",
        &opts(Some("/srv/p"), &[], &[]),
    );
    assert!(e.contains("not declared under top-level secrets"), "{e}");
    let e = err(
        "services:\n  a:\n    image: x\n    secrets: [{source: s, mode: 0400}]\nsecrets:\n  s: {file: ./s}\n",
        &opts(Some("/srv/p"), &[], &[]),
    );
    assert!(e.contains("mode"), "{e}");
}

#[test]
fn the_remaining_service_keys() {
    let p = ok(
        r#"
services:
  a:
    image: x
    expose: ["80", 443, "9000-9001/udp"]
    sysctls: [net.core.somaxconn=1024]
    stop_signal: SIGINT
    stop_grace_period: 1m30s
    tmpfs: [/run, "/tmp:size=64m"]
    shm_size: 256m
    read_only: true
    pull_policy: never
    tty: true
    stdin_open: true
    cap_drop: [NET_RAW]
    security_opt: ["no-new-privileges:true"]
    ports:
      - target: 80
        published: "8080"
        protocol: tcp
        mode: ingress
    volumes:
      - type: tmpfs
        target: /cache
        tmpfs: {size: 1048576, mode: 1777}
    healthcheck:
      test: [CMD, "true"]
      start_interval: 2s
"#,
        &opts(None, &[], &[]),
    );
    let a = &p.services()["a"];
    assert_eq!(a.expose, ["80/tcp", "443/tcp", "9000/udp", "9001/udp"]);
    assert_eq!(a.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(a.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(a.stop_grace_period, Some(90_000_000_000));
    assert_eq!(
        a.tmpfs,
        ["/cache:size=1048576,mode=3361", "/run", "/tmp:size=64m"]
    );
    assert_eq!(a.shm_size, Some(256 << 20));
    assert!(a.read_only && a.tty && a.stdin_open);
    assert_eq!(a.pull_policy.as_deref(), Some("never"));
    assert_eq!(a.ports[0].host_port, Some(8080));
    assert_eq!(
        a.healthcheck.as_ref().unwrap().start_interval,
        Some(2_000_000_000)
    );
}

#[test]
fn build_contexts_ship_with_the_stack() {
    let o = opts(Some("/srv/p"), &[], &[("TAG", "1")]);
    let p = ok(
        r#"
services:
  a:
    build:
      context: ./app
      dockerfile: docker/Dockerfile
      args: {VERSION: "${TAG}"}
      target: prod
    image: "myapp:${TAG}"
  b:
    build: .
"#,
        &o,
    );
    let a = p.services()["a"].build.as_ref().unwrap();
    assert_eq!(a.context, "/srv/p/app");
    assert_eq!(a.dockerfile.as_deref(), Some("docker/Dockerfile"));
    assert_eq!(a.args["VERSION"], "1");
    assert_eq!(p.services()["b"].image.as_str(), "proj-b");
    for (bad, why) in [
        ("build: https://github.com/x/y.git", "remote contexts"),
        ("build: ../elsewhere", "leads out of the project directory"),
        (
            "build: {context: ., dockerfile: ../Dockerfile}",
            "inside the context",
        ),
        ("build: {context: ., platforms: [arm64]}", "not a platform"),
        (
            "build: {context: ., network: host}",
            "default bridge or none",
        ),
    ] {
        let e = err(&format!("services:\n  a:\n    image: x\n    {bad}\n"), &o);
        assert!(e.contains(why), "{bad}: {e}");
    }
}

/// A service that uses none of the keys added after the first subset serializes exactly
/// as before: its config hash, and so its container, is unchanged by an upgrade.
#[test]
fn an_old_service_serializes_as_before() {
    let p = ok(
        "services:\n  a:\n    image: busybox:1\n    ports: [\"80:80\"]\n",
        &opts(None, &[], &[]),
    );
    let json = serde_json::to_string(&p.services()["a"]).unwrap();
    assert_eq!(
        json,
        r#"{"image":"busybox:1","container_name":null,"command":null,"entrypoint":null,"environment":{},"env_files":[],"ports":[{"host_ip":null,"host_port":80,"container_port":80,"protocol":"tcp"}],"volumes":[],"networks":{},"restart":null,"healthcheck":null,"depends_on":{},"labels":{},"user":null,"working_dir":null,"hostname":null,"devices":[],"gpus":[],"cap_add":[],"ulimits":{},"extra_hosts":[],"logging":null,"init":null,"dns":[]}"#
    );
}

/// Hostile values in every key: each is accepted or refused with a message, never a
/// panic, and never an unbounded expansion.
#[test]
fn hostile_values_are_refused_not_crashed_on() {
    let keys = [
        "image",
        "build",
        "command",
        "entrypoint",
        "environment",
        "env_file",
        "ports",
        "expose",
        "volumes",
        "tmpfs",
        "networks",
        "network_mode",
        "restart",
        "healthcheck",
        "depends_on",
        "labels",
        "user",
        "deploy",
        "cap_add",
        "ulimits",
        "sysctls",
        "extra_hosts",
        "logging",
        "dns",
        "profiles",
        "secrets",
        "configs",
        "stop_signal",
        "stop_grace_period",
        "shm_size",
        "pull_policy",
        "cpus",
        "mem_limit",
        "pids_limit",
        "scale",
        "security_opt",
        "read_only",
        "container_name",
    ];
    let values = [
        "~",
        "-1",
        "99999999999999999999999",
        "1e308",
        "\"\"",
        "\"${\"",
        "\"$\"",
        "\"${A:-${B:-${C:-${D:-${E:-${F:-${G:-${H:-${I:-${J}}}}}}}}}}\"",
        "\"../../../../etc/shadow\"",
        "\"0-65535:0-65535\"",
        "[\"1-65535\"]",
        "{a: {b: {c: [1, 2, {d: e}]}}}",
        "[[], {}, null]",
        "true",
        "\"\\u0000\\u202e\"",
        "{replicas: 4294967296, resources: {limits: {cpus: 1e300, memory: 1e30t}}}",
        "{context: /, dockerfile: /etc/passwd}",
        "[{source: /, target: /, type: bind}]",
        "[\"\\x00:/x\"]",
    ];
    let o = opts(Some("/srv/p"), &["*"], &[]);
    let mut outcomes = 0;
    for k in keys {
        for v in values {
            let compose = format!("services:\n  a:\n    image: x\n    {k}: {v}\n");
            let _ = parse_with(&compose, &o);
            outcomes += 1;
        }
    }
    assert_eq!(outcomes, keys.len() * values.len());
    // Nesting bombs stop at the parser's limits.
    let bomb = format!(
        "services:\n  a:\n    image: x\n    labels: {}\n",
        "[".repeat(5000)
    );
    assert!(parse_with(&bomb, &o).is_err());
}

#[test]
fn large_expansions_are_bounded() {
    let e = err(
        "services:\n  a:\n    image: x\n    ports: [\"1-65535:1-65535\"]\n",
        &opts(None, &[], &[]),
    );
    assert!(e.contains("more than"), "{e}");
    let vars: BTreeMap<String, String> = BTreeMap::new();
    let e = parse(
        "services:\n  a:\n    image: x\n    expose: [\"1-65535\"]\n",
        &vars,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("more than"), "{e}");
}
