//! The Compose keys beyond the first subset, converged through the agent's
//! `StackConverger` against the real (private) Docker engine and checked with
//! `docker inspect`: replicas, resource limits, sysctls, tmpfs, read-only root, stop
//! signal and grace, expose, network_mode service:, static addresses, file secrets and
//! configs, relative binds in the project directory, `build` from a context shipped
//! with the stack (`.dockerignore` honoured), anonymous volumes kept across a recreate,
//! `platform` against the engine's own, `depends_on` on every replica, and the warning
//! for an unset variable.

// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use phoenix_agent::stacks::StackConverger;
use phoenix_agent::stacks::engine::ContainerEngine;
use phoenix_proto::model::compose::{self, ParseOptions};
use phoenix_proto::model::{AbsPath, StackFile, StackSpec};
use phoenix_tests::stacks::{CountingEngine, DockerEnv, Pass, Teardown, owner_key, pass};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Held to the test's end: the stack's removal (also on panic) and the project root.
struct Guard {
    _down: Teardown,
    _root: tempfile::TempDir,
}

/// What every test here starts with: the engine, a guard, the stack's project directory,
/// and a converger over the counted engine.
fn fixture(
    stack: &str,
) -> Option<(
    Guard,
    DockerEnv,
    PathBuf,
    Arc<CountingEngine>,
    StackConverger,
)> {
    let env = DockerEnv::get()?;
    let _down = Teardown {
        env: env.clone(),
        stack: stack.into(),
        extra: vec![],
    };
    let root = tempfile::tempdir().unwrap();
    let count = CountingEngine::new(env.engine());
    let conv = StackConverger::new(
        count.clone() as Arc<dyn ContainerEngine>,
        vec![root.path().to_path_buf()],
        owner_key(),
    );
    let dir = root.path().join(stack);
    Some((Guard { _down, _root: root }, env, dir, count, conv))
}

/// A stack compiled as the coordinator does: project directory on the guest, variables.
fn spec_in(name: &str, compose: &str, dir: &Path, vars: &[(&str, &str)]) -> StackSpec {
    let opts = ParseOptions {
        variables: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        project_dir: Some(dir.to_path_buf()),
        project_name: Some(name.to_string()),
        profiles: Vec::new(),
        files: None,
        withheld: Default::default(),
    };
    let project = compose::parse_with(compose, &opts).unwrap();
    let mut spec = StackSpec::new(name, project);
    spec.project_dir = Some(AbsPath::try_from(dir.display().to_string()).unwrap());
    spec
}

fn file(path: &Path, content: &str) -> StackFile {
    StackFile {
        path: AbsPath::try_from(path.display().to_string()).unwrap(),
        content: content.to_string(),
    }
}

fn inspect(env: &DockerEnv, name: &str, format: &str) -> String {
    env.docker(&["inspect", "-f", format, name])
}

const KEYS: &str = r#"
x-common: &common
  image: "${IMAGE}"
  init: true
  command: ["sleep", "100000"]
services:
  app:
    <<: *common
    x-note: extensions are ignored
    deploy:
      replicas: 2
      placement: {constraints: [node.role == manager]}
      resources:
        limits: {cpus: "0.5", memory: 64m, pids: 50}
        reservations: {memory: 32m}
    expose: ["8080"]
    sysctls: {net.core.somaxconn: "1024"}
    stop_signal: SIGINT
    stop_grace_period: 3s
    tmpfs: ["/scratch:size=1m"]
    shm_size: 8m
    read_only: true
    security_opt: [no-new-privileges]
    volumes: ["./data:/data"]
    secrets: [token]
    configs:
      - source: conf
        target: /etc/app.conf
  db:
    <<: *common
    networks:
      back:
        ipv4_address: 10.213.57.10
  side:
    <<: *common
    network_mode: "service:db"
    depends_on: [db]
secrets:
  token:
    file: ./secrets/token.txt
configs:
  conf:
    file: ./app.conf
networks:
  back:
    ipam:
      config:
        - subnet: 10.213.57.0/24
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_keys_reach_the_engine() {
    let stack = "phxkeys";
    let Some((_guard, env, dir, _count, conv)) = fixture(stack) else {
        return;
    };
    // The secret stays on the guest (by reference); the config ships with the stack.
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    std::fs::write(dir.join("secrets/token.txt"), "s3cret-token").unwrap();
    let mut spec = spec_in(stack, KEYS, &dir, &[("IMAGE", &env.image)]);
    spec.files = vec![file(&dir.join("app.conf"), "level=debug\n")];

    let Pass::Applied { diff, .. } = pass(&conv, &spec, false).await.unwrap() else {
        panic!("first pass must apply")
    };
    for c in [
        "phxkeys-app-1",
        "phxkeys-app-2",
        "phxkeys-db-1",
        "phxkeys-side-1",
    ] {
        assert!(
            diff.contains(&format!("create container {c} ")),
            "{c}: {diff}"
        );
        assert_eq!(inspect(&env, c, "{{.State.Status}}"), "running", "{c}");
    }
    let app = "phxkeys-app-1";
    let host = |f: &str| inspect(&env, app, &format!("{{{{.HostConfig.{f}}}}}"));
    assert_eq!(host("NanoCpus"), "500000000");
    assert_eq!(host("Memory"), (64 << 20).to_string());
    assert_eq!(host("PidsLimit"), "50");
    assert_eq!(host("MemoryReservation"), (32 << 20).to_string());
    assert_eq!(host("ShmSize"), (8 << 20).to_string());
    assert_eq!(host("ReadonlyRootfs"), "true");
    assert_eq!(host("Sysctls"), "map[net.core.somaxconn:1024]");
    assert_eq!(host("Tmpfs"), "map[/scratch:size=1m]");
    assert_eq!(host("SecurityOpt"), "[no-new-privileges]");
    assert_eq!(inspect(&env, app, "{{.Config.StopSignal}}"), "SIGINT");
    assert_eq!(inspect(&env, app, "{{.Config.StopTimeout}}"), "3");
    assert_eq!(
        inspect(
            &env,
            app,
            "{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}"
        ),
        "8080/tcp"
    );
    // The relative bind is the project directory's, secrets and configs are read-only
    // binds of their files.
    let mounts = inspect(
        &env,
        app,
        "{{range .Mounts}}{{.Source}}>{{.Destination}}:{{.RW}} {{end}}",
    );
    let d = dir.display();
    for m in [
        format!("{d}/data>/data:true"),
        format!("{d}/secrets/token.txt>/run/secrets/token:false"),
        format!("{d}/app.conf>/etc/app.conf:false"),
    ] {
        assert!(mounts.contains(&m), "{m} in {mounts}");
    }
    assert_eq!(
        env.docker(&["exec", app, "cat", "/run/secrets/token"]),
        "s3cret-token"
    );
    assert_eq!(
        env.docker(&["exec", app, "cat", "/etc/app.conf"]),
        "level=debug"
    );
    let write = env.docker_raw(&["exec", app, "touch", "/rootfs-write"]);
    assert!(!write.status.success(), "the root file system is read-only");
    // The fixed address, and the sidecar in db's network namespace.
    assert_eq!(
        inspect(
            &env,
            "phxkeys-db-1",
            "{{(index .NetworkSettings.Networks \"phxkeys_back\").IPAddress}}"
        ),
        "10.213.57.10"
    );
    assert!(
        inspect(&env, "phxkeys-side-1", "{{.HostConfig.NetworkMode}}").starts_with("container:")
    );
    let side_addr = env.docker(&["exec", "phxkeys-side-1", "ip", "-4", "addr"]);
    assert!(side_addr.contains("10.213.57.10"), "{side_addr}");

    // Level-triggered: nothing to do on the next pass.
    assert!(
        matches!(pass(&conv, &spec, false).await.unwrap(), Pass::InSync),
        "second pass must be in sync"
    );

    // Scaling down removes the extra replica and keeps the first.
    let first = inspect(&env, app, "{{.Id}}");
    let mut one = spec_in(
        stack,
        &KEYS.replace("replicas: 2", "replicas: 1"),
        &dir,
        &[("IMAGE", &env.image)],
    );
    one.files = spec.files.clone();
    let Pass::Applied { diff, .. } = pass(&conv, &one, false).await.unwrap() else {
        panic!("scale-down must apply")
    };
    assert!(
        diff.contains("remove container phxkeys-app-2: orphan"),
        "{diff}"
    );
    assert_eq!(inspect(&env, app, "{{.Id}}"), first, "replica 1 untouched");
    assert!(
        !env.docker_raw(&["inspect", "phxkeys-app-2"])
            .status
            .success()
    );
}

/// Removes the images a test built.
struct Images(DockerEnv, Vec<String>);
impl Drop for Images {
    fn drop(&mut self) {
        for i in &self.1 {
            let _ = self.0.docker_raw(&["rmi", "-f", i]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_makes_the_image_on_the_guest_and_a_context_change_rebuilds_and_recreates() {
    let stack = "phxbuild";
    let Some((_guard, env, dir, count, conv)) = fixture(stack) else {
        return;
    };
    let _images = Images(env.clone(), vec!["phxbuild-app".into()]);
    let compose = "services:\n  app:\n    build: ./app\n    init: true\n";
    let dockerfile = format!(
        "FROM {}\nCOPY msg.txt /msg.txt\nCMD [\"sleep\", \"100000\"]\n",
        env.image
    );
    let with_msg = |msg: &str| {
        let mut s = spec_in(stack, compose, &dir, &[]);
        s.files = vec![
            file(&dir.join("app/Dockerfile"), &dockerfile),
            file(&dir.join("app/msg.txt"), msg),
        ];
        s
    };
    let v1 = with_msg("v1");
    assert_eq!(v1.project.services()["app"].image.as_str(), "phxbuild-app");

    let Pass::Applied { report, .. } = pass(&conv, &v1, false).await.unwrap() else {
        panic!("first pass must apply")
    };
    assert!(
        report.contains("build image phxbuild-app for app"),
        "{report}"
    );
    let c = "phxbuild-app-1";
    assert_eq!(env.docker(&["exec", c, "cat", "/msg.txt"]), "v1");
    let built_from = env.docker(&[
        "image",
        "inspect",
        "-f",
        "{{index .Config.Labels \"phoenix.build-digest\"}}",
        "phxbuild-app",
    ]);
    assert_eq!(built_from.len(), 64, "{built_from}");
    assert!(matches!(
        pass(&conv, &v1, false).await.unwrap(),
        Pass::InSync
    ));
    count.take();

    // A changed file of the context: rebuilt, and the container recreated from it.
    let old = inspect(&env, c, "{{.Id}}");
    let v2 = with_msg("v2");
    let Pass::Applied { diff, .. } = pass(&conv, &v2, false).await.unwrap() else {
        panic!("a context change must apply")
    };
    assert!(diff.contains("write file"), "{diff}");
    let calls = count.take();
    assert!(
        calls.iter().any(|c| c == "build_image phxbuild-app"),
        "{calls:?}"
    );
    assert_ne!(inspect(&env, c, "{{.Id}}"), old, "recreated");
    assert_eq!(env.docker(&["exec", c, "cat", "/msg.txt"]), "v2");
    assert!(matches!(
        pass(&conv, &v2, false).await.unwrap(),
        Pass::InSync
    ));
}

/// A stack with an undeclared host network is refused before anything runs; declared,
/// it runs in the guest's namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_network_needs_its_grant() {
    let stack = "phxhostnet";
    let Some((_guard, env, dir, count, conv)) = fixture(stack) else {
        return;
    };
    let compose = "services:\n  a:\n    image: \"${IMAGE}\"\n    command: [sleep, \"100000\"]\n    network_mode: host\n";
    let mut spec = spec_in(stack, compose, &dir, &[("IMAGE", &env.image)]);
    let e = pass(&conv, &spec, false).await.unwrap_err();
    assert!(e.contains("network_mode host"), "{e}");
    assert!(count.take().is_empty(), "nothing reached the engine");
    spec.host_access = vec!["network_mode host".into()];
    let Pass::Applied { diff, .. } = pass(&conv, &spec, false).await.unwrap() else {
        panic!("declared: must apply")
    };
    assert!(
        diff.contains("GRANTS HOST ACCESS: network_mode host"),
        "{diff}"
    );
    assert_eq!(
        inspect(&env, "phxhostnet-a-1", "{{.HostConfig.NetworkMode}}"),
        "host"
    );
}

/// Removes the containers, then the volumes, when dropped (anonymous volumes carry no
/// stack label, so `Teardown` leaves them).
struct Volumes(DockerEnv, Vec<String>, Vec<String>);
impl Drop for Volumes {
    fn drop(&mut self) {
        for c in &self.1 {
            let _ = self.0.docker_raw(&["rm", "-f", c]);
        }
        for v in &self.2 {
            let _ = self.0.docker_raw(&["volume", "rm", "-f", v]);
        }
    }
}

/// The volume mounted at `target` in container `c`.
fn volume_at(env: &DockerEnv, c: &str, target: &str) -> String {
    inspect(
        env,
        c,
        &format!(
            "{{{{range .Mounts}}}}{{{{if eq .Destination \"{target}\"}}}}{{{{.Name}}}}{{{{end}}}}{{{{end}}}}"
        ),
    )
}

/// `- /data` is an anonymous volume the engine creates; a recreate hands it (and its
/// content) to the new container, as Compose does. An unset variable is an empty string
/// and a warning in the plan, naming the field and the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_volumes_survive_a_recreate_and_unset_variables_warn() {
    let stack = "phxanon";
    let Some((_guard, env, dir, _count, conv)) = fixture(stack) else {
        return;
    };
    let compose = "services:\n  app:\n    image: \"${IMAGE}\"\n    init: true\n    command: [sleep, \"100000\"]\n    environment:\n      MODE: \"${MODE}\"\n    volumes:\n      - /data\n      - type: volume\n        target: /cache\n";
    let v1 = spec_in(stack, compose, &dir, &[("IMAGE", &env.image)]);

    let Pass::Planned(plan) = pass(&conv, &v1, true).await.unwrap() else {
        panic!("dry run must plan")
    };
    assert!(
        plan.contains("warning: services.app.environment: variable MODE is not set"),
        "{plan}"
    );
    let Pass::Applied { .. } = pass(&conv, &v1, false).await.unwrap() else {
        panic!("first pass must apply")
    };
    let c = "phxanon-app-1";
    let data = volume_at(&env, c, "/data");
    let cache = volume_at(&env, c, "/cache");
    let _volumes = Volumes(
        env.clone(),
        vec![c.to_string()],
        vec![data.clone(), cache.clone()],
    );
    assert_eq!(data.len(), 64, "an engine-named volume: {data}");
    assert_ne!(data, cache);
    assert!(inspect(&env, c, "{{json .Config.Env}}").contains("\"MODE=\""));
    env.docker(&[
        "exec",
        c,
        "sh",
        "-c",
        "echo kept > /data/f && echo also > /cache/f",
    ]);
    assert!(matches!(
        pass(&conv, &v1, false).await.unwrap(),
        Pass::InSync
    ));

    // A changed variable recreates the container; the anonymous volumes go with it.
    let old = inspect(&env, c, "{{.Id}}");
    let v2 = spec_in(
        stack,
        compose,
        &dir,
        &[("IMAGE", &env.image), ("MODE", "2")],
    );
    let Pass::Applied { diff, .. } = pass(&conv, &v2, false).await.unwrap() else {
        panic!("a changed variable must apply")
    };
    assert!(!diff.contains("warning:"), "{diff}");
    assert!(diff.contains("recreate container phxanon-app-1"), "{diff}");
    assert_ne!(inspect(&env, c, "{{.Id}}"), old, "recreated");
    assert_eq!(volume_at(&env, c, "/data"), data);
    assert_eq!(volume_at(&env, c, "/cache"), cache);
    assert_eq!(env.docker(&["exec", c, "cat", "/data/f"]), "kept");
    assert_eq!(env.docker(&["exec", c, "cat", "/cache/f"]), "also");
}

/// `platform` is checked against the engine's own (asked through the Engine API): its
/// own runs; another is refused before anything reaches the engine, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_engines_own_platform_runs() {
    let stack = "phxplat";
    let Some((_guard, env, dir, count, conv)) = fixture(stack) else {
        return;
    };
    let own = env.docker(&["version", "-f", "{{.Server.Os}}/{{.Server.Arch}}"]);
    let other = if own.ends_with("/amd64") {
        "linux/arm64"
    } else {
        "linux/amd64"
    };
    let compose = |p: &str| {
        format!(
            "services:\n  a:\n    image: \"${{IMAGE}}\"\n    command: [sleep, \"100000\"]\n    platform: {p}\n"
        )
    };
    let spec = spec_in(stack, &compose(other), &dir, &[("IMAGE", &env.image)]);
    let e = pass(&conv, &spec, false).await.unwrap_err();
    assert!(
        e.contains(&format!(
            "service a: platform {other} is not the engine's platform ({own})"
        )) && e.contains("no emulation"),
        "{e}"
    );
    assert!(count.take().is_empty(), "nothing reached the engine");
    let spec = spec_in(stack, &compose(&own), &dir, &[("IMAGE", &env.image)]);
    let Pass::Applied { .. } = pass(&conv, &spec, false).await.unwrap() else {
        panic!("the engine's own platform must apply")
    };
    assert_eq!(inspect(&env, "phxplat-a-1", "{{.State.Status}}"), "running");
}

/// A dependent waits for every replica of its dependency: the first replica becomes
/// healthy seconds after the second, and the dependent, started last, sees both ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depends_on_waits_for_every_replica() {
    let stack = "phxreps";
    let Some((_guard, env, dir, _count, conv)) = fixture(stack) else {
        return;
    };
    std::fs::create_dir_all(dir.join("shared")).unwrap();
    // The replica that starts first (replica 1) takes 3 s to become ready.
    let compose = r#"
services:
  db:
    image: "${IMAGE}"
    init: true
    command: ["sh", "-c", "if mkdir /shared/first; then sleep 3; fi; touch /shared/ready.$$(hostname) /tmp/ready; exec sleep 100000"]
    volumes: ["./shared:/shared"]
    deploy: {replicas: 2}
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 500ms
      timeout: 1s
      retries: 30
  web:
    image: "${IMAGE}"
    init: true
    command: ["sh", "-c", "ls /shared | grep -c '^ready' > /shared/seen-by-web; exec sleep 100000"]
    volumes: ["./shared:/shared"]
    depends_on:
      db: {condition: service_healthy}
"#;
    let spec = spec_in(stack, compose, &dir, &[("IMAGE", &env.image)]);
    let Pass::Applied { .. } = pass(&conv, &spec, false).await.unwrap() else {
        panic!("must apply")
    };
    // The dependent's first act, written before it could wait for anything itself; the
    // plan started it without a gate, so it may not have run yet.
    let file = dir.join("shared/seen-by-web");
    let started = std::time::Instant::now();
    let seen = loop {
        match std::fs::read_to_string(&file) {
            Ok(s) if !s.trim().is_empty() => break s,
            _ if started.elapsed() > std::time::Duration::from_secs(60) => {
                panic!("web never wrote {}", file.display())
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    };
    assert_eq!(
        seen.trim(),
        "2",
        "web started before every db replica was ready"
    );
}

/// `.dockerignore` as the Docker CLI reads it: ignored files are not in the image, and
/// changing one rebuilds and recreates nothing; a secret-looking file still sent is named
/// in the plan (never its content); a failing build's output is redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerignore_is_honoured_and_secret_looking_files_are_named() {
    let stack = "phxignore";
    let Some((_guard, env, dir, count, conv)) = fixture(stack) else {
        return;
    };
    let _images = Images(env.clone(), vec!["phxignore-app".into()]);
    let compose = "services:\n  app:\n    build: ./app\n    init: true\n";
    let dockerfile = format!(
        "FROM {}\nCOPY . /ctx\nCMD [\"sleep\", \"100000\"]\n",
        env.image
    );
    let with = |notes: &str| {
        let mut s = spec_in(stack, compose, &dir, &[]);
        s.files = vec![
            file(&dir.join("app/Dockerfile"), &dockerfile),
            file(&dir.join("app/.dockerignore"), "notes/\n*.log\n"),
            file(&dir.join("app/notes/todo.txt"), notes),
            file(&dir.join("app/build.log"), notes),
            file(&dir.join("app/main.txt"), "main"),
            file(&dir.join("app/deploy.key"), "not-a-real-key"),
        ];
        s
    };
    let v1 = with("one");
    let Pass::Applied { report, .. } = pass(&conv, &v1, false).await.unwrap() else {
        panic!("first pass must apply")
    };
    assert!(report.contains("build image phxignore-app"), "{report}");
    let c = "phxignore-app-1";
    let listed = env.docker(&["exec", c, "find", "/ctx", "-type", "f"]);
    assert!(
        listed.contains("/ctx/main.txt") && listed.contains("/ctx/Dockerfile"),
        "{listed}"
    );
    assert!(
        !listed.contains("todo.txt") && !listed.contains("build.log"),
        "{listed}"
    );
    assert!(matches!(
        pass(&conv, &v1, false).await.unwrap(),
        Pass::InSync
    ));
    count.take();

    // An ignored file changes: written to the guest, but nothing is rebuilt or recreated.
    let old = inspect(&env, c, "{{.Id}}");
    let v2 = with("two");
    let Pass::Planned(plan) = pass(&conv, &v2, true).await.unwrap() else {
        panic!("the changed files must be planned")
    };
    assert!(
        plan.contains("warning: services.app.build: context file deploy.key (is named like a credentials file)"),
        "{plan}"
    );
    assert!(!plan.contains("not-a-real-key"), "{plan}");
    let Pass::Applied { diff, .. } = pass(&conv, &v2, false).await.unwrap() else {
        panic!("the changed files must be written")
    };
    assert!(diff.contains("write file"), "{diff}");
    let calls = count.take();
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("build_image") || c.starts_with("create_container")),
        "{calls:?}"
    );
    assert_eq!(inspect(&env, c, "{{.Id}}"), old, "not recreated");
    assert!(matches!(
        pass(&conv, &v2, false).await.unwrap(),
        Pass::InSync
    ));

    // A build that fails after printing a secret: the error hides it.
    let mut bad = with("two");
    bad.files[0] = file(
        &dir.join("app/Dockerfile"),
        &format!(
            "FROM {}\nRUN echo \"password=hunter2-in-build\" && false\n",
            env.image
        ),
    );
    let e = pass(&conv, &bad, false).await.unwrap_err();
    assert!(e.contains("build image"), "{e}");
    assert!(!e.contains("hunter2-in-build"), "{e}");
}
