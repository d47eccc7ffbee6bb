//! The container engine as the stack converger sees it: a small trait, and its
//! implementation over the Docker Engine API with bollard.
//!
//! bollard sends unversioned paths, so the daemon answers at its own API version; the
//! bodies here and in `body` only use fields that Engine API 1.41 (Docker 20.10) knows.

pub use super::body::create_body;
use super::body::endpoint;
use super::plan::{NetworkPlan, ObservedContainer, VolumePlan};
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummary, HealthStatusEnum, Ipam,
    IpamConfig, NetworkConnectRequest, NetworkCreateRequest, VolumeCreateRequest,
};
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptions, ListVolumesOptions,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
};
use phoenix_proto::model::ContainerName;
use phoenix_proto::model::compose::{Addresses, Build, Condition};
use std::collections::{BTreeMap, HashMap};
use tokio_stream::StreamExt;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{action} {object}: {source}")]
    Docker {
        action: &'static str,
        object: String,
        #[source]
        source: BollardError,
    },
    #[error("connect to the Docker engine: {0}")]
    Connect(#[source] BollardError),
}

impl EngineError {
    /// The daemon refused to start a container because containerd still holds a task of
    /// it ("task … already exists"), left by a dockerd killed mid-start.
    pub fn is_stale_task(&self) -> bool {
        match self {
            EngineError::Docker {
                source: BollardError::DockerResponseServerError { message, .. },
                ..
            } => message.contains("task") && message.contains("already exists"),
            _ => false,
        }
    }

    /// No daemon answered (no socket, or nothing listening on it), as opposed to a
    /// daemon refusing the request.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            EngineError::Connect(_)
                | EngineError::Docker {
                    source: BollardError::SocketNotFoundError(_)
                        | BollardError::IOError { .. }
                        | BollardError::HyperLegacyError { .. },
                    ..
                }
        )
    }
}

fn err(action: &'static str, object: &str) -> impl FnOnce(BollardError) -> EngineError {
    let object = object.to_string();
    move |source| EngineError::Docker {
        action,
        object,
        source,
    }
}

fn is_status(e: &BollardError, code: u16) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// What `inspect` tells about a running or finished container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// created, running, restarting, exited, …
    pub status: String,
    pub running: bool,
    /// healthy, unhealthy, starting; `None` without a healthcheck.
    pub health: Option<String>,
    pub exit_code: Option<i64>,
}

impl ContainerState {
    /// Whether a dependent waiting with `cond` may start. `Err` when it never will.
    pub fn satisfies(&self, cond: Condition) -> Result<bool, String> {
        match cond {
            // A one-shot service that already finished has started, too.
            Condition::ServiceStarted => Ok(self.running || self.status == "exited"),
            Condition::ServiceHealthy => match self.health.as_deref() {
                Some("healthy") => Ok(true),
                Some("unhealthy") => Err("is unhealthy".into()),
                Some(_) if self.running => Ok(false),
                Some(_) => Err(format!("is {}", self.status)),
                None => Err("has no healthcheck".into()),
            },
            Condition::ServiceCompletedSuccessfully => match (self.running, self.exit_code) {
                (true, _) => Ok(false),
                (false, Some(0)) if self.status == "exited" => Ok(true),
                (false, Some(c)) if self.status == "exited" => Err(format!("exited with {c}")),
                _ => Ok(false),
            },
        }
    }
}

/// Registry credentials for a pull; never logged.
#[derive(Clone, serde::Deserialize)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub serveraddress: Option<String>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[async_trait::async_trait]
pub trait ContainerEngine: Send + Sync {
    /// Containers (running or not) carrying `phoenix.stack=<stack>`, plus any container
    /// holding one of `names`.
    async fn list_containers(
        &self,
        stack: &str,
        names: &[String],
    ) -> Result<Vec<ObservedContainer>, EngineError>;
    async fn inspect_state(&self, id: &str) -> Result<ContainerState, EngineError>;
    /// Every network: name → labels.
    async fn list_networks(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, EngineError>;
    /// Every container carrying a `phoenix.stack` label, whatever the stack: where
    /// removing the stacks no longer declared starts.
    async fn list_labelled_containers(&self) -> Result<Vec<ObservedContainer>, EngineError>;
    /// Every volume: name → labels.
    async fn list_volumes(&self)
    -> Result<BTreeMap<String, BTreeMap<String, String>>, EngineError>;
    /// Local image ID for a reference, `None` when absent.
    async fn image_id(&self, image: &str) -> Result<Option<String>, EngineError>;
    /// The `phoenix.build-digest` label of a local image: the context digest it was
    /// built from. `None` when the image is absent or was not built by Phoenix.
    async fn image_build_digest(&self, image: &str) -> Result<Option<String>, EngineError>;
    /// Builds `image` with the engine's (classic) builder from a tar of its context;
    /// `labels` go on the image. Fails with the builder's last output lines.
    async fn build_image(
        &self,
        image: &str,
        build: &Build,
        dockerfile: &str,
        context_tar: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError>;

    async fn pull_image(&self, image: &str, auth: Option<RegistryAuth>) -> Result<(), EngineError>;
    async fn create_network(
        &self,
        network: &NetworkPlan,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError>;
    async fn remove_network(&self, name: &str) -> Result<(), EngineError>;
    async fn create_volume(
        &self,
        volume: &VolumePlan,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError>;
    /// Creates the container attached to its first network; returns its ID.
    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, EngineError>;
    async fn connect_network(
        &self,
        network: &str,
        container: &str,
        aliases: Vec<String>,
        addresses: Option<Addresses>,
    ) -> Result<(), EngineError>;
    async fn start_container(&self, id: &str) -> Result<(), EngineError>;
    async fn stop_container(&self, id: &str) -> Result<(), EngineError>;
    async fn rename_container(&self, id: &str, name: &str) -> Result<(), EngineError>;
    /// Removes a container (forcing it if running); its named volumes stay.
    async fn remove_container(&self, id: &str) -> Result<(), EngineError>;
    /// The engine's own platform, `os/arch` as the engine reports it (`linux/amd64`).
    async fn platform(&self) -> Result<String, EngineError>;
    /// The volumes a container mounts: container path → volume name. A recreate hands
    /// the anonymous ones to the new container.
    async fn container_volumes(&self, id: &str) -> Result<BTreeMap<String, String>, EngineError>;
    /// Restarts a container by name (starts it if stopped), with its own stop timeout.
    /// The name goes into the request path, hence the validated type.
    async fn restart_container(&self, name: &ContainerName) -> Result<(), EngineError>;
}

/// The builder's output kept for an error message.
const BUILD_LOG_LINES: usize = 20;

/// The real engine.
pub struct DockerEngine {
    docker: Docker,
}

impl DockerEngine {
    /// Honours `DOCKER_HOST=unix://…`, else the default socket. Connects lazily: an
    /// agent on a guest without Docker only fails the stacks it is asked to run.
    pub fn connect() -> Result<Self, EngineError> {
        let docker = Docker::connect_with_defaults().map_err(EngineError::Connect)?;
        Ok(DockerEngine { docker })
    }

    /// A specific daemon socket (tests run a private daemon).
    pub fn connect_unix(socket: &str) -> Result<Self, EngineError> {
        let docker = Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(EngineError::Connect)?;
        Ok(DockerEngine { docker })
    }
}

fn string_map(m: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    m.unwrap_or_default().into_iter().collect()
}

/// A listed container as the planner sees it; `None` without an ID.
fn observed(c: ContainerSummary) -> Option<ObservedContainer> {
    let id = c.id?;
    let name = c
        .names
        .unwrap_or_default()
        .first()
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    let state = c.state.map(|s| s.to_string()).unwrap_or_default();
    let exit_code = c.status.as_deref().and_then(|s| {
        s.strip_prefix("Exited (")
            .and_then(|r| r.split(')').next())
            .and_then(|n| n.parse().ok())
    });
    Some(ObservedContainer {
        id,
        name,
        labels: string_map(c.labels),
        running: state == "running" || state == "restarting",
        exit_code,
    })
}

#[async_trait::async_trait]
impl ContainerEngine for DockerEngine {
    async fn list_containers(
        &self,
        stack: &str,
        names: &[String],
    ) -> Result<Vec<ObservedContainer>, EngineError> {
        let mut out: Vec<ObservedContainer> = Vec::new();
        let by_label = HashMap::from([("label", vec![format!("{}={stack}", super::LABEL_STACK)])]);
        let mut queries = vec![by_label];
        if !names.is_empty() {
            // The name filter matches substrings; exact names are checked below.
            queries.push(HashMap::from([("name", names.to_vec())]));
        }
        for filters in queries {
            let opts = ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build();
            let list = self
                .docker
                .list_containers(Some(opts))
                .await
                .map_err(err("list containers of stack", stack))?;
            for c in list.into_iter().filter_map(observed) {
                if out.iter().any(|o| o.id == c.id) {
                    continue;
                }
                let ours = c.labels.get(super::LABEL_STACK).map(String::as_str) == Some(stack);
                if ours || names.contains(&c.name) {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    async fn inspect_state(&self, id: &str) -> Result<ContainerState, EngineError> {
        let c = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(err("inspect container", id))?;
        let st = c.state.unwrap_or_default();
        let status = st.status.unwrap_or(ContainerStateStatusEnum::EMPTY);
        let health = st
            .health
            .and_then(|h| h.status)
            .filter(|h| !matches!(h, HealthStatusEnum::EMPTY | HealthStatusEnum::NONE))
            .map(|h| h.to_string());
        Ok(ContainerState {
            status: status.to_string(),
            running: st.running.unwrap_or(false),
            health,
            exit_code: st.exit_code,
        })
    }

    async fn list_networks(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, EngineError> {
        let list = self
            .docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .map_err(err("list", "networks"))?;
        Ok(list
            .into_iter()
            .filter_map(|n| Some((n.name?, string_map(n.labels))))
            .collect())
    }

    async fn list_labelled_containers(&self) -> Result<Vec<ObservedContainer>, EngineError> {
        // A label filter without a value matches the key whatever its value.
        let filters = HashMap::from([("label", vec![super::LABEL_STACK.to_string()])]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(err("list", "containers of stacks"))?;
        Ok(list.into_iter().filter_map(observed).collect())
    }

    async fn list_volumes(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, EngineError> {
        let list = self
            .docker
            .list_volumes(None::<ListVolumesOptions>)
            .await
            .map_err(err("list", "volumes"))?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.name, v.labels.into_iter().collect()))
            .collect())
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(i.id),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(err("inspect image", image)(e)),
        }
    }

    async fn image_build_digest(&self, image: &str) -> Result<Option<String>, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(i
                .config
                .and_then(|c| c.labels)
                .and_then(|l| l.get(super::LABEL_BUILD_DIGEST).cloned())),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(err("inspect image", image)(e)),
        }
    }

    async fn build_image(
        &self,
        image: &str,
        build: &Build,
        dockerfile: &str,
        context_tar: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        let fail = |why: String| EngineError::Docker {
            action: "build image",
            object: image.to_string(),
            source: BollardError::DockerStreamError { error: why },
        };
        let mut all_labels: HashMap<String, String> = build.labels.clone().into_iter().collect();
        all_labels.extend(labels);
        let opts = BuildImageOptions {
            dockerfile: dockerfile.to_string(),
            t: Some(image.to_string()),
            nocache: build.no_cache,
            pull: build.pull.then(|| "1".to_string()),
            rm: true,
            forcerm: true,
            buildargs: Some(build.args.clone().into_iter().collect()),
            labels: Some(all_labels),
            networkmode: build.network.clone(),
            shmsize: build
                .shm_size
                .map(|n| {
                    i32::try_from(n)
                        .map_err(|_| fail(format!("shm_size {n} is too large for a build")))
                })
                .transpose()?,
            target: build.target.clone().unwrap_or_default(),
            ..Default::default()
        };
        let mut stream =
            self.docker
                .build_image(opts, None, Some(bollard::body_full(context_tar.into())));
        let mut log: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                // The builder's failure arrives as a stream error; it may quote a RUN
                // line, so it is redacted like the output.
                Err(BollardError::DockerStreamError { error }) => {
                    let tail: Vec<String> = log.into_iter().collect();
                    return Err(fail(format!(
                        "{}; last output: {}",
                        phoenix_proto::redact::redact_line(&error),
                        tail.join(" | ")
                    )));
                }
                Err(e) => return Err(err("build image", image)(e)),
            };
            if let Some(line) = info.stream {
                for l in line.lines().filter(|l| !l.trim().is_empty()) {
                    if log.len() == BUILD_LOG_LINES {
                        log.pop_front();
                    }
                    // A RUN step may print what a build arg or a context file holds;
                    // the error is logged and shown, so its secrets are hidden first.
                    log.push_back(phoenix_proto::redact::redact_line(l).into_owned());
                }
            }
            if let Some(detail) = info.error_detail {
                let tail: Vec<String> = log.into_iter().collect();
                let message = detail.message.unwrap_or_default();
                return Err(fail(format!(
                    "{}; last output: {}",
                    phoenix_proto::redact::redact_line(&message),
                    tail.join(" | ")
                )));
            }
        }
        Ok(())
    }

    async fn pull_image(&self, image: &str, auth: Option<RegistryAuth>) -> Result<(), EngineError> {
        // A reference without a tag would pull every tag; Compose pulls :latest.
        let last = image.rsplit('/').next().unwrap_or(image);
        let reference = if last.contains(':') || last.contains('@') {
            image.to_string()
        } else {
            format!("{image}:latest")
        };
        let opts = CreateImageOptionsBuilder::new()
            .from_image(&reference)
            .build();
        let creds = auth.map(|a| bollard::auth::DockerCredentials {
            username: Some(a.username),
            password: Some(a.password),
            serveraddress: a.serveraddress,
            ..Default::default()
        });
        let mut stream = self.docker.create_image(Some(opts), None, creds);
        while let Some(item) = stream.next().await {
            let info = item.map_err(err("pull image", image))?;
            if let Some(detail) = info.error_detail {
                return Err(EngineError::Docker {
                    action: "pull image",
                    object: image.to_string(),
                    source: BollardError::DockerStreamError {
                        error: detail.message.unwrap_or_default(),
                    },
                });
            }
        }
        Ok(())
    }

    async fn create_network(
        &self,
        network: &NetworkPlan,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        let mut all_labels: HashMap<String, String> = network.labels.clone().into_iter().collect();
        all_labels.extend(labels);
        let ipam = network.ipam.as_ref().map(|i| Ipam {
            driver: i.driver.clone(),
            config: Some(
                i.config
                    .iter()
                    .map(|p| IpamConfig {
                        subnet: p.subnet.clone(),
                        ip_range: p.ip_range.clone(),
                        gateway: p.gateway.clone(),
                        auxiliary_addresses: (!p.aux_addresses.is_empty())
                            .then(|| p.aux_addresses.clone().into_iter().collect()),
                    })
                    .collect(),
            ),
            options: (!i.options.is_empty()).then(|| i.options.clone().into_iter().collect()),
        });
        let req = NetworkCreateRequest {
            name: network.name.clone(),
            driver: network.driver.clone(),
            internal: network.internal.then_some(true),
            attachable: network.attachable.then_some(true),
            enable_ipv6: network.enable_ipv6.then_some(true),
            ipam,
            options: Some(network.driver_opts.clone().into_iter().collect()),
            labels: Some(all_labels),
            ..Default::default()
        };
        self.docker
            .create_network(req)
            .await
            .map_err(err("create network", &network.name))?;
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        self.docker
            .remove_network(name)
            .await
            .map_err(err("remove network", name))
    }

    async fn create_volume(
        &self,
        volume: &VolumePlan,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        let mut all_labels: HashMap<String, String> = volume.labels.clone().into_iter().collect();
        all_labels.extend(labels);
        let req = VolumeCreateRequest {
            name: Some(volume.name.clone()),
            driver: volume.driver.clone(),
            driver_opts: Some(volume.driver_opts.clone().into_iter().collect()),
            labels: Some(all_labels),
            ..Default::default()
        };
        self.docker
            .create_volume(req)
            .await
            .map_err(err("create volume", &volume.name))?;
        Ok(())
    }

    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, EngineError> {
        let opts = CreateContainerOptionsBuilder::new().name(name).build();
        let r = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(err("create container", name))?;
        Ok(r.id)
    }

    async fn connect_network(
        &self,
        network: &str,
        container: &str,
        aliases: Vec<String>,
        addresses: Option<Addresses>,
    ) -> Result<(), EngineError> {
        let req = NetworkConnectRequest {
            container: container.to_string(),
            endpoint_config: Some(endpoint(aliases, addresses)),
        };
        self.docker
            .connect_network(network, req)
            .await
            .map_err(err("connect to network", network))
    }

    async fn platform(&self) -> Result<String, EngineError> {
        let v = self
            .docker
            .version()
            .await
            .map_err(err("read the version of", "the engine"))?;
        Ok(format!(
            "{}/{}",
            v.os.unwrap_or_default(),
            v.arch.unwrap_or_default()
        ))
    }

    async fn container_volumes(&self, id: &str) -> Result<BTreeMap<String, String>, EngineError> {
        let c = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(err("inspect container", id))?;
        Ok(c.mounts
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.typ.as_deref() == Some("volume"))
            .filter_map(|m| Some((m.destination?, m.name?)))
            .collect())
    }

    async fn restart_container(&self, name: &ContainerName) -> Result<(), EngineError> {
        self.docker
            .restart_container(name, None)
            .await
            .map_err(err("restart container", name))
    }

    async fn start_container(&self, id: &str) -> Result<(), EngineError> {
        match self.docker.start_container(id, None).await {
            // 304: already running.
            Err(e) if is_status(&e, 304) => Ok(()),
            r => r.map_err(err("start container", id)),
        }
    }

    async fn stop_container(&self, id: &str) -> Result<(), EngineError> {
        // No timeout of ours: the engine uses the container's own (`stop_grace_period`,
        // 10 s by default), as `docker compose stop` does.
        match self
            .docker
            .stop_container(id, None::<bollard::query_parameters::StopContainerOptions>)
            .await
        {
            Err(e) if is_status(&e, 304) => Ok(()),
            r => r.map_err(err("stop container", id)),
        }
    }

    async fn rename_container(&self, id: &str, name: &str) -> Result<(), EngineError> {
        let opts = RenameContainerOptionsBuilder::new().name(name).build();
        self.docker
            .rename_container(id, opts)
            .await
            .map_err(err("rename container", id))
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(id, Some(opts)).await {
            Err(e) if is_status(&e, 404) => Ok(()),
            r => r.map_err(err("remove container", id)),
        }
    }
}
