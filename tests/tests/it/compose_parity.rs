//! Phoenix against Compose itself on the real engine: one file converged by the agent and
//! brought up by `docker-compose` (Debian's, /usr/bin/docker-compose) must give the same
//! containers (image, command, environment, mounts, ports, networks, limits; labels and
//! project-derived names aside). And every file of the shared corpus the parser accepts
//! gets a dry-run plan from the real engine that names each container it would create.

// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use phoenix_agent::stacks::StackConverger;
use phoenix_agent::stacks::engine::ContainerEngine;
use phoenix_proto::model::compose::{self, ParseOptions};
use phoenix_proto::model::{AbsPath, StackSpec};
use phoenix_tests::stacks::{DockerEnv, Pass, Teardown, owner_key, pass};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const COMPOSE_BIN: &str = "/usr/bin/docker-compose";

fn spec_in(name: &str, text: &str, dir: &Path) -> Result<StackSpec, String> {
    let opts = ParseOptions {
        variables: BTreeMap::new(),
        project_dir: Some(dir.to_path_buf()),
        project_name: Some(name.to_string()),
        profiles: Vec::new(),
        files: None,
        withheld: Default::default(),
    };
    let project = compose::parse_with(text, &opts).map_err(|e| e.to_string())?;
    let mut spec = StackSpec::new(name, project);
    spec.project_dir = Some(AbsPath::try_from(dir.display().to_string()).unwrap());
    Ok(spec)
}

fn converger(env: &DockerEnv, root: &Path) -> StackConverger {
    StackConverger::new(
        env.engine() as Arc<dyn ContainerEngine>,
        vec![root.to_path_buf()],
        owner_key(),
    )
}

/// `docker-compose -p <project> down -v` when dropped.
struct ComposeDown {
    host: String,
    dir: PathBuf,
    project: String,
}

impl ComposeDown {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(COMPOSE_BIN)
            .env("DOCKER_HOST", &self.host)
            .current_dir(&self.dir)
            .args(["-p", &self.project, "-f", "docker-compose.yml"])
            .args(args)
            .output()
            .expect("run docker-compose")
    }
}

impl Drop for ComposeDown {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v"]);
    }
}

const PARITY: &str = r#"
services:
  web:
    image: phoenix-test/busybox:1
    init: true
    command: ["sh", "-c", "mkdir -p /www && exec httpd -f -p 8080 -h /www"]
    environment:
      MODE: prod
      LIST: "a b"
    ports:
      - "127.0.0.1::8080"
    volumes:
      - ./data:/data
      - named:/named:ro
    networks: [back]
    restart: unless-stopped
    deploy:
      resources:
        limits: {cpus: "0.5", memory: 64m}
        reservations: {cpus: "2", memory: 32m}
    stop_signal: SIGINT
    tmpfs: [/scratch]
networks:
  back: {}
volumes:
  named: {}
"#;

/// What both must agree on, with the project name replaced by `<p>`.
fn essentials(inspect: &Value, project: &str) -> Value {
    let c = &inspect[0];
    let norm = |s: &str| s.replace(&format!("{project}_"), "<p>_");
    let mut env: Vec<String> = c["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    env.sort();
    let mut mounts: Vec<String> = c["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let source = match m["Type"].as_str() {
                Some("volume") => norm(m["Name"].as_str().unwrap_or_default()),
                _ => m["Source"].as_str().unwrap_or_default().to_string(),
            };
            format!(
                "{} {} -> {} rw={}",
                m["Type"].as_str().unwrap_or_default(),
                source,
                m["Destination"].as_str().unwrap_or_default(),
                m["RW"]
            )
        })
        .collect();
    mounts.sort();
    let mut ports: Vec<String> = c["HostConfig"]["PortBindings"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k} on {}", v[0]["HostIp"].as_str().unwrap_or_default()))
        .collect();
    ports.sort();
    let networks: Vec<String> = c["NetworkSettings"]["Networks"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| norm(k))
        .collect();
    let h = &c["HostConfig"];
    serde_json::json!({
        "image": c["Config"]["Image"],
        "cmd": c["Config"]["Cmd"],
        "entrypoint": c["Config"]["Entrypoint"],
        "env": env,
        "mounts": mounts,
        "ports": ports,
        "networks": networks,
        "nano_cpus": h["NanoCpus"],
        "memory": h["Memory"],
        // A CPU reservation: docker-compose sets no CPU shares for it, nor does Phoenix.
        "cpu_shares": h["CpuShares"],
        "memory_reservation": h["MemoryReservation"],
        "init": h["Init"],
        "restart": h["RestartPolicy"]["Name"],
        "stop_signal": c["Config"]["StopSignal"],
        "tmpfs": h["Tmpfs"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converged_stack_matches_what_docker_compose_makes() {
    let Some(env) = DockerEnv::get() else { return };
    if !phoenix_tests::require(
        "docker-compose (Debian package)",
        Path::new(COMPOSE_BIN).exists(),
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("parity");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("docker-compose.yml"), PARITY).unwrap();

    let ours = "phxparp";
    let _down = Teardown {
        env: env.clone(),
        stack: ours.into(),
        extra: vec![],
    };
    let theirs = ComposeDown {
        host: env.host.clone(),
        dir: dir.clone(),
        project: "phxparc".into(),
    };
    let up = theirs.run(&["up", "-d"]);
    assert!(
        up.status.success(),
        "docker-compose up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let conv = converger(&env, root.path());
    let spec = spec_in(ours, PARITY, &dir).unwrap();
    assert!(matches!(
        pass(&conv, &spec, false).await.unwrap(),
        Pass::Applied { .. }
    ));

    let inspect =
        |name: &str| -> Value { serde_json::from_str(&env.docker(&["inspect", name])).unwrap() };
    // docker-compose 1.x names containers `<project>_<service>_1`; Compose v2 and
    // Phoenix `<project>-<service>-1`.
    let a = essentials(&inspect("phxparp-web-1"), ours);
    let b = essentials(&inspect("phxparc_web_1"), "phxparc");
    println!("compared:\n{}", serde_json::to_string_pretty(&a).unwrap());
    assert_eq!(
        a,
        b,
        "Phoenix (left) and docker-compose (right) differ:\n{}\n{}",
        serde_json::to_string_pretty(&a).unwrap(),
        serde_json::to_string_pretty(&b).unwrap()
    );
}

/// Every accepted corpus file gets a dry-run plan from the real engine that creates each
/// of its containers by the name Compose would give it; the counts are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_corpus_file_plans_each_container_against_the_engine() {
    let Some(env) = DockerEnv::get() else { return };
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/compose-corpus/docker-compose-e2e");
    if !phoenix_tests::require("the shared Compose corpus", corpus.is_dir()) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("corpus");
    let conv = converger(&env, root.path());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
        .collect();
    files.sort();
    let (mut planned, mut needs_host, mut other_platform) = (0, Vec::new(), Vec::new());
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let Ok(spec) = spec_in("corpus", &text, &dir) else {
            continue;
        };
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        match pass(&conv, &spec, true).await {
            Ok(Pass::Planned(diff)) => {
                let project = spec.project.name().unwrap_or("corpus");
                for (svc, s) in spec.project.services() {
                    for n in 1..=s.replicas.unwrap_or(1) {
                        let c = s
                            .container_name
                            .clone()
                            .unwrap_or_else(|| format!("{project}-{svc}-{n}"));
                        assert!(
                            diff.contains(&format!("create container {c} ({svc})")),
                            "{name}: {c} not planned:\n{diff}"
                        );
                    }
                }
                planned += 1;
            }
            Ok(other) => panic!("{name}: dry-run gave {other:?}"),
            // The plan needs files only the guest has (an env file): named, not a crash.
            // A platform other than the engine's: refused by the plan, naming the key.
            Err(e) if e.contains("is not the engine's platform") => {
                assert!(e.contains("platform"), "{name}: {e}");
                other_platform.push(format!("{name}: {e}"));
            }
            Err(e) => {
                assert!(e.contains("env file"), "{name}: {e}");
                needs_host.push(format!("{name}: {e}"));
            }
        }
    }
    for n in &needs_host {
        println!("NEEDS HOST FILES {n}");
    }
    for n in &other_platform {
        println!("OTHER PLATFORM {n}");
    }
    println!(
        "compose corpus dry-run: {planned} planned every container, {} need files on the guest, {} name another platform than the engine's",
        needs_host.len(),
        other_platform.len()
    );
    assert!(planned >= 20, "only {planned} planned");
}
