//! Harness for the stack tests and the stack benchmark: the private Docker engine started
//! by tests/setup/20-docker.sh, a counting decorator over the real engine, a docker CLI
//! helper for independent observation, and teardown guards.

use async_trait::async_trait;
use bollard::models::ContainerCreateBody;
use phoenix_agent::reconcile::{Check, Converge, PassContext};
use phoenix_agent::stacks::StackConverger;
use phoenix_agent::stacks::engine::{
    ContainerEngine, ContainerState, DockerEngine, EngineError, RegistryAuth,
};
use phoenix_agent::stacks::owner::OwnerKey;
use phoenix_agent::stacks::plan::{NetworkPlan, ObservedContainer, VolumePlan};
use phoenix_proto::model::StackSpec;
use phoenix_proto::model::compose::{self, ComposeError, ComposeProject};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

/// What tests/setup/20-docker.sh exported.
#[derive(Debug, Clone)]
pub struct DockerEnv {
    /// `unix:///…/docker.sock`
    pub host: String,
    pub ctl: String,
    pub dir: String,
    pub image: String,
    pub registry_image: String,
}

impl DockerEnv {
    /// `None` (after `crate::require`) when the setup did not run.
    pub fn get() -> Option<DockerEnv> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let env = (|| {
            Some(DockerEnv {
                host: var("PHOENIX_DOCKER_HOST")?,
                ctl: var("PHOENIX_DOCKERD_CTL")?,
                dir: var("PHOENIX_DOCKERD_DIR")?,
                image: var("PHOENIX_TEST_IMAGE")?,
                registry_image: var("PHOENIX_REGISTRY_IMAGE")?,
            })
        })();
        let ok = crate::require(
            "private Docker engine (tests/setup/20-docker.sh)",
            env.is_some(),
        );
        if ok { env } else { None }
    }

    pub fn socket(&self) -> &str {
        self.host.trim_start_matches("unix://")
    }

    pub fn engine(&self) -> Arc<DockerEngine> {
        Arc::new(DockerEngine::connect_unix(self.socket()).expect("connect to the private dockerd"))
    }

    /// Runs the docker CLI against the private engine; panics on failure.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = self.docker_raw(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn docker_raw(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(&self.host)
            .args(args)
            .output()
            .expect("run docker")
    }

    /// `ctl.sh stop|start|restart` of the private daemon.
    pub fn daemon(&self, action: &str) {
        let st = Command::new("bash")
            .args([&self.ctl, action, &self.dir])
            .status()
            .expect("run ctl.sh");
        assert!(st.success(), "dockerd {action} failed");
    }

    /// name → (id, state, health) of every container (labelled or not) whose name starts with `prefix`.
    pub fn containers(&self, prefix: &str) -> BTreeMap<String, (String, String, String)> {
        let out = self.docker(&["ps", "-a", "--format", "{{.Names}} {{.ID}} {{.State}}"]);
        let mut map = BTreeMap::new();
        for line in out.lines() {
            let mut it = line.split_whitespace();
            let (Some(name), Some(id), Some(state)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if name.starts_with(prefix) {
                let health = self.docker(&[
                    "inspect",
                    "-f",
                    "{{if .State.Health}}{{.State.Health.Status}}{{end}}",
                    id,
                ]);
                map.insert(
                    name.to_string(),
                    (id.to_string(), state.to_string(), health),
                );
            }
        }
        map
    }
}

/// The owner key of "this agent" in the tests. Like a real agent's state directory it
/// persists (in the temp directory), so objects a crashed earlier run left on the engine
/// are recognised and cleaned up by the next pass instead of blocking it as conflicts.
pub fn owner_key() -> OwnerKey {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("phoenix-tests-stack-owner");
        phoenix_pki::statedir::ensure_dir(&dir, 0o700).expect("owner key directory");
        dir
    });
    OwnerKey::load_or_create(dir).expect("owner key")
}

/// Removes everything labelled with the stack (and the named extra containers) when
/// dropped, so a failing test leaves nothing behind on the engine.
pub struct Teardown {
    pub env: DockerEnv,
    pub stack: String,
    pub extra: Vec<String>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let filter = format!("label=phoenix.stack={}", self.stack);
        let list = |kind: &[&str]| -> Vec<String> {
            let mut args: Vec<&str> = kind.to_vec();
            args.extend(["--filter", &filter, "-q"]);
            let out = self.env.docker_raw(&args);
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        let mut containers = list(&["ps", "-a"]);
        containers.extend(self.extra.iter().cloned());
        for c in containers {
            let _ = self.env.docker_raw(&["rm", "-f", &c]);
        }
        for n in list(&["network", "ls"]) {
            let _ = self.env.docker_raw(&["network", "rm", &n]);
        }
        for v in list(&["volume", "ls"]) {
            let _ = self.env.docker_raw(&["volume", "rm", &v]);
        }
    }
}

/// What the next `start_container` does instead of starting.
#[derive(Debug, Clone)]
pub enum StartFault {
    /// Never returns, as a start the agent is killed in the middle of.
    Hang,
    /// Fails with this daemon message (HTTP 500), once.
    Fail(String),
}

/// Counts the calls that change the engine, passing everything to the real engine
/// (except a `StartFault` a test injects).
pub struct CountingEngine {
    inner: Arc<dyn ContainerEngine>,
    calls: Mutex<Vec<String>>,
    start_fault: Mutex<Option<StartFault>>,
}

impl CountingEngine {
    pub fn new(inner: Arc<dyn ContainerEngine>) -> Arc<Self> {
        Arc::new(CountingEngine {
            inner,
            calls: Mutex::new(Vec::new()),
            start_fault: Mutex::new(None),
        })
    }

    pub fn fault_next_start(&self, fault: StartFault) {
        *self.start_fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(fault);
    }

    /// The mutating calls so far ("create_container s-api-1", …), and resets the log.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn note(&self, call: &str, object: &str) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{call} {object}"));
    }
}

#[async_trait]
impl ContainerEngine for CountingEngine {
    async fn list_containers(
        &self,
        stack: &str,
        names: &[String],
    ) -> Result<Vec<ObservedContainer>, EngineError> {
        self.inner.list_containers(stack, names).await
    }
    async fn inspect_state(&self, id: &str) -> Result<ContainerState, EngineError> {
        self.inner.inspect_state(id).await
    }
    async fn list_networks(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, EngineError> {
        self.inner.list_networks().await
    }
    async fn list_labelled_containers(&self) -> Result<Vec<ObservedContainer>, EngineError> {
        self.inner.list_labelled_containers().await
    }
    async fn list_volumes(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, EngineError> {
        self.inner.list_volumes().await
    }
    async fn image_id(&self, image: &str) -> Result<Option<String>, EngineError> {
        self.inner.image_id(image).await
    }
    async fn image_build_digest(&self, image: &str) -> Result<Option<String>, EngineError> {
        self.inner.image_build_digest(image).await
    }
    async fn build_image(
        &self,
        image: &str,
        build: &compose::Build,
        dockerfile: &str,
        context_tar: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        self.note("build_image", image);
        self.inner
            .build_image(image, build, dockerfile, context_tar, labels)
            .await
    }
    async fn pull_image(&self, image: &str, auth: Option<RegistryAuth>) -> Result<(), EngineError> {
        self.note("pull_image", image);
        self.inner.pull_image(image, auth).await
    }
    async fn create_network(
        &self,
        network: &NetworkPlan,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        self.note("create_network", &network.name);
        self.inner.create_network(network, labels).await
    }
    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        self.note("remove_network", name);
        self.inner.remove_network(name).await
    }
    async fn create_volume(
        &self,
        volume: &VolumePlan,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        self.note("create_volume", &volume.name);
        self.inner.create_volume(volume, labels).await
    }
    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, EngineError> {
        self.note("create_container", name);
        self.inner.create_container(name, body).await
    }
    async fn connect_network(
        &self,
        network: &str,
        container: &str,
        aliases: Vec<String>,
        addresses: Option<compose::Addresses>,
    ) -> Result<(), EngineError> {
        self.note("connect_network", network);
        self.inner
            .connect_network(network, container, aliases, addresses)
            .await
    }
    async fn start_container(&self, id: &str) -> Result<(), EngineError> {
        self.note("start_container", id);
        let fault = self
            .start_fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match fault {
            None => self.inner.start_container(id).await,
            Some(StartFault::Hang) => std::future::pending().await,
            Some(StartFault::Fail(message)) => Err(EngineError::Docker {
                action: "start container",
                object: id.to_string(),
                source: bollard::errors::Error::DockerResponseServerError {
                    status_code: 500,
                    message,
                },
            }),
        }
    }
    async fn stop_container(&self, id: &str) -> Result<(), EngineError> {
        self.note("stop_container", id);
        self.inner.stop_container(id).await
    }
    async fn rename_container(&self, id: &str, name: &str) -> Result<(), EngineError> {
        self.note("rename_container", name);
        self.inner.rename_container(id, name).await
    }
    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        self.note("remove_container", id);
        self.inner.remove_container(id).await
    }
    async fn platform(&self) -> Result<String, EngineError> {
        self.inner.platform().await
    }
    async fn container_volumes(&self, id: &str) -> Result<BTreeMap<String, String>, EngineError> {
        self.inner.container_volumes(id).await
    }
    async fn restart_container(
        &self,
        name: &phoenix_proto::model::ContainerName,
    ) -> Result<(), EngineError> {
        self.note("restart_container", name);
        self.inner.restart_container(name).await
    }
}

/// What one reconcile pass did to a stack.
#[derive(Debug)]
pub enum Pass {
    InSync,
    /// Drift found; in dry-run this is all that happens.
    Planned(String),
    Applied {
        diff: String,
        report: String,
    },
}

/// One pass as the reconcile engine runs it: validate, check, and apply on drift unless
/// dry-run. Errors come back as their message.
pub async fn pass(conv: &StackConverger, spec: &StackSpec, dry_run: bool) -> Result<Pass, String> {
    let cx = PassContext {
        dry_run,
        ..Default::default()
    };
    conv.validate(spec).map_err(|e| e.to_string())?;
    match conv.check(spec, &cx).await.map_err(|e| e.to_string())? {
        Check::InSync => Ok(Pass::InSync),
        Check::Drift { diff } if dry_run => Ok(Pass::Planned(diff)),
        Check::Drift { diff } => {
            let report = conv.apply(spec, &cx).await.map_err(|e| e.to_string())?;
            Ok(Pass::Applied { diff, report })
        }
    }
}

/// The 4-service stack of the tests and the benchmark: `db` with a healthcheck, `api`
/// waiting for it to be healthy, `web` (published port) after `api`, `worker` after `api`.
/// `${IMAGE}` and `${MODE:-prod}` are interpolated.
pub const FOUR_SERVICES: &str = r#"
services:
  db:
    image: "${IMAGE}"
    init: true
    command: ["sh", "-c", "touch /data/ready; exec sleep 100000"]
    healthcheck:
      test: ["CMD", "test", "-f", "/data/ready"]
      interval: 1s
      timeout: 1s
      retries: 30
    volumes:
      - data:/data
    networks: [back]
  api:
    image: "${IMAGE}"
    init: true
    command: sh -c "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"
    environment:
      DB_HOST: db
      MODE: "${MODE:-prod}"
    depends_on:
      db:
        condition: service_healthy
    networks: [back, front]
  web:
    image: "${IMAGE}"
    init: true
    command: ["sleep", "100000"]
    ports:
      - "127.0.0.1::80"
    labels:
      example.role: frontend
    restart: unless-stopped
    depends_on: [api]
    networks: [front]
  worker:
    image: "${IMAGE}"
    init: true
    command: ["sleep", "100000"]
    restart: "on-failure:3"
    depends_on:
      api:
        condition: service_started
    networks: [back]
networks:
  back: {}
  front: {}
volumes:
  data: {}
"#;

/// `compose` parsed and interpolated with `vars` by the model's parser, as the
/// coordinator compiles it; panics on a parse error.
pub fn project(compose: &str, vars: &[(&str, &str)]) -> ComposeProject {
    let variables: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    compose::parse(compose, &variables).expect("compose file")
}

pub fn spec(name: &str, compose: &str, vars: &[(&str, &str)]) -> StackSpec {
    StackSpec::new(name, project(compose, vars))
}

/// A stack directory of the Phoenix repo (`phoenix.json` + `docker-compose.yml`) as the
/// coordinator would hand it to the agent: environment "production", its variables (plus
/// `extra` for variables the manifest lacks) interpolated, its traefik labels. The parse
/// error when the compose file does not parse with them.
pub fn sample_spec(dir: &Path, extra: &[(&str, &str)]) -> Result<StackSpec, ComposeError> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("phoenix.json")).expect("read phoenix.json"),
    )
    .expect("parse phoenix.json");
    let text = std::fs::read_to_string(dir.join("docker-compose.yml")).expect("read compose");
    let env = &manifest["environments"]["production"];
    let mut variables = BTreeMap::new();
    for v in env["variables"].as_array().into_iter().flatten() {
        if let (Some(k), Some(val)) = (v["name"].as_str(), v["value"].as_str()) {
            variables.insert(k.to_string(), val.to_string());
        }
    }
    for (k, v) in extra {
        variables.insert(k.to_string(), v.to_string());
    }
    let mut spec = StackSpec::new(name, compose::parse(&text, &variables)?);
    for (svc, cfg) in env["services"].as_object().into_iter().flatten() {
        let l: Vec<String> = cfg["traefik_labels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
        spec.labels.insert(svc.clone(), l);
    }
    Ok(spec)
}
