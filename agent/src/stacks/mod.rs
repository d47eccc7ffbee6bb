//! Docker stacks, converged through the Engine API (bollard) instead of `docker compose`.
//!
//! The Compose subset, its parser and the grant detection live in the shared model
//! (`phoenix_proto::model::compose`): a `StackSpec` arrives with the project already
//! parsed and checked. `plan` compares desired with observed and lists steps (pure),
//! `engine` is the small `ContainerEngine` trait with its Docker implementation, `files`
//! reads env files and writes stack files beneath the roots, and `StackConverger` below
//! ties them to the reconcile engine.
//!
//! Every object created here carries `phoenix.stack=<name>` and `phoenix.owner` (an HMAC
//! under a key only this agent holds, see `owner`); containers also carry
//! `phoenix.service`, `phoenix.config-hash` and `phoenix.image-digest` (the local image
//! ID they were created from). Nothing without a valid owner proof is ever changed or
//! adopted: an object that carries the stack label without the proof is reported as a
//! conflict and fails the stack. Host-root grants (the model's `grants`) are refused
//! unless the spec declares them in `host_access`, and env files are read only beneath
//! the allowed roots.
//!
//! `build` packs the context from the guest (`context`, beneath the file roots, links
//! never followed, `.dockerignore` honoured) and builds through the engine's build
//! endpoint (`build`); the context digest is on the image and in the container's config
//! hash, so a changed context rebuilds and recreates. Replicas are named
//! `<project>-<service>-<n>` as Compose names them, and a dependent waits for every
//! replica. `platform` is checked against the engine's own (`platform`); anonymous
//! volumes pass from the old container to the new one on a recreate. The parser's
//! warnings (unset variables) head the plan and are logged on apply.
//!
//! The converger (render → observe → plan → execute, with health gating and rollback)
//! stays in this one module of about 800 lines: its steps share the engine, the owner key
//! and the running map of containers, and cutting between them would spread one flow.
//!
//! A stack taken out of the desired state is brought down by `prune` (the reconcile
//! engine's `Prune`): its proven containers stopped and removed, its networks removed,
//! its named volumes kept.
//!
//! Limits: images are pulled only when absent locally (a moved `:latest` tag upstream is
//! not noticed until the image is removed); named volumes are never removed; services
//! are started one after another; a build context is read on every pass to hash it
//! (bounded to 64 MiB).

mod body;
mod build;
mod context;
pub mod engine;
mod error;
mod files;
pub mod owner;
pub mod plan;
mod platform;
mod prune;

use crate::hostfs as fsutil;
use crate::reconcile::{Check, Converge, PassContext, ResourceError};
use engine::{ContainerEngine, ContainerState, EngineError, RegistryAuth};
use owner::{Kind, LABEL_OWNER, OwnerKey};
use phoenix_proto::model::compose::{ComposeProject, Condition, grants};
use phoenix_proto::model::{SecretRef, StackSpec};
use plan::{ASIDE_SUFFIX, Desired, HostInputs, Observed, Plan, Step};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use error::StackError;
use files::{parse_env_file, read_env_file, write_stack_file};
pub use phoenix_proto::model::compose::LABEL_PREFIX;
pub const LABEL_STACK: &str = "phoenix.stack";
pub const LABEL_SERVICE: &str = "phoenix.service";
pub const LABEL_CONFIG_HASH: &str = "phoenix.config-hash";
pub const LABEL_IMAGE: &str = "phoenix.image-digest";
/// The services a container's service depends on (comma-separated): the order in which a
/// stack no longer declared is brought down, when its Compose file is gone.
pub const LABEL_DEPENDS_ON: &str = "phoenix.depends-on";
/// On an image built for a stack: the digest of the context it was built from.
pub const LABEL_BUILD_DIGEST: &str = "phoenix.build-digest";

const POLL: Duration = Duration::from_millis(100);
/// How long a replacement without a healthcheck must stay up to count as started: a bad
/// command or a missing file kills it within this window, and that is all that can be
/// known about it.
const SETTLE: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(600);

/// One container of a stack as reported to the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub service: String,
    pub name: String,
    pub state: String,
    pub health: Option<String>,
}

pub struct StackConverger {
    engine: Arc<dyn ContainerEngine>,
    file_roots: Vec<PathBuf>,
    owner: OwnerKey,
}

/// A desired state rendered against the host: the containers, and the stack files whose
/// content on disk differs from the spec.
struct Rendered {
    desired: Desired,
    stale_files: Vec<(PathBuf, String)>,
    /// The parser's warnings and secret-looking build-context files: printed in the plan
    /// and logged when the stack is applied. Names and fields only, never a value.
    warnings: Vec<String>,
}

impl StackConverger {
    /// `file_roots`: where a stack's `files` may be written and its env files read (the
    /// operator's policy, as for file resources). `owner`: the key that marks what this
    /// agent creates.
    pub fn new(
        engine: Arc<dyn ContainerEngine>,
        file_roots: Vec<PathBuf>,
        owner: OwnerKey,
    ) -> Self {
        StackConverger {
            engine,
            file_roots,
            owner,
        }
    }

    /// Every host-root grant of the project, bind sources judged by where their links
    /// lead on this host too; the owner key's directory is protected as well.
    fn grants(&self, project: &ComposeProject) -> Vec<grants::Grant> {
        grants::detect_resolved(project, &[self.owner.dir().to_path_buf()], |p| {
            std::fs::canonicalize(p).ok()
        })
    }

    /// Refuses the stack when it makes a grant its spec does not declare.
    fn check_grants(
        &self,
        spec: &StackSpec,
        project: &ComposeProject,
    ) -> Result<Vec<grants::Grant>, StackError> {
        let all = self.grants(project);
        let missing = grants::undeclared(&all, &spec.host_access);
        if missing.is_empty() {
            Ok(all)
        } else {
            Err(StackError::HostAccess {
                stack: spec.name.clone(),
                grants: missing
                    .iter()
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }

    fn extra_labels(
        spec: &StackSpec,
        project: &ComposeProject,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, StackError> {
        let mut out = BTreeMap::new();
        for (service, labels) in &spec.labels {
            let bad = |label: &str, why| StackError::Label {
                stack: spec.name.clone(),
                service: service.clone(),
                label: label.to_string(),
                why,
            };
            if !project.services().contains_key(service) {
                return Err(bad("", "no such service in the compose file"));
            }
            let mut map = BTreeMap::new();
            for l in labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| bad(l, "expected key=value"))?;
                if k.starts_with(LABEL_PREFIX) {
                    return Err(bad(l, "the phoenix. prefix is reserved"));
                }
                map.insert(k.to_string(), v.to_string());
            }
            out.insert(service.clone(), map);
        }
        Ok(out)
    }

    /// The allowed root a stack file is resolved beneath (links below it are refused).
    fn root_of(&self, spec: &StackSpec, path: &Path) -> Result<&Path, StackError> {
        fsutil::root_of(&self.file_roots, path).ok_or_else(|| StackError::FileOutsideRoots {
            stack: spec.name.clone(),
            path: path.display().to_string(),
        })
    }

    fn check_roots(&self, spec: &StackSpec) -> Result<(), StackError> {
        for f in &spec.files {
            let p = f.path.as_path();
            if !self
                .file_roots
                .iter()
                .any(|r| p.starts_with(r) && p != r.as_path())
                || p.components().any(|c| c == std::path::Component::ParentDir)
            {
                return Err(StackError::FileOutsideRoots {
                    stack: spec.name.clone(),
                    path: f.path.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Reads env files (from the stack's own files first, else the host) and compares
    /// stack files with the host. Reads only.
    fn render(&self, spec: &StackSpec) -> Result<Rendered, StackError> {
        let stack = spec.name.as_str();
        let project = &spec.project;
        let grants = self.check_grants(spec, project)?;
        let labels = Self::extra_labels(spec, project)?;
        let io = |action, path: &Path| {
            let path = path.display().to_string();
            move |source| StackError::Io {
                stack: stack.to_string(),
                action,
                path,
                source,
            }
        };
        let mut env_files = BTreeMap::new();
        for svc in project.services().values() {
            let all = svc.env_files.iter().map(|p| (p, true));
            let optional = svc.optional_env_files.iter().map(|p| (p, false));
            for (path, required) in all.chain(optional) {
                if env_files.contains_key(path) {
                    continue;
                }
                let text = match spec.files.iter().find(|f| f.path.as_str() == path) {
                    Some(f) => f.content.clone(),
                    None => match read_env_file(&self.file_roots, path) {
                        Ok(t) => t,
                        // `required: false`: an absent file adds nothing, as in Compose.
                        Err(why) if !required && why.contains("ENOENT") => continue,
                        Err(why) => {
                            return Err(StackError::EnvFile {
                                stack: stack.to_string(),
                                path: path.clone(),
                                why,
                            });
                        }
                    },
                };
                env_files.insert(path.clone(), parse_env_file(stack, path, &text)?);
            }
        }
        let mut digests = BTreeMap::new();
        let mut stale_files = Vec::new();
        for f in &spec.files {
            digests.insert(
                f.path.to_string(),
                hex::encode(Sha256::digest(f.content.as_bytes())),
            );
            let path = f.path.as_path();
            let root = self.root_of(spec, path)?;
            // A link planted at the file or a parent is refused here, before any change.
            match fsutil::read_beneath(root, path) {
                Ok(Some(have)) if have.bytes == f.content.as_bytes() => {}
                Ok(_) => stale_files.push((path.to_path_buf(), f.content.clone())),
                Err(e) => return Err(io("read stack file", path)(e.into())),
            }
        }
        let mut builds = BTreeMap::new();
        let mut warnings = project.warnings().to_vec();
        for (name, svc) in project.services() {
            let Some(b) = &svc.build else { continue };
            // A context not readable yet (shipped with the stack but not written, or
            // missing) has no digest: the plan then builds, and the build reports why
            // the context cannot be read.
            if let Ok(packed) = self.pack_context(stack, name, b) {
                builds.insert(name.clone(), packed.digest);
                warnings.extend(packed.secret_looking.iter().map(|f| {
                    format!("services.{name}.build: context file {f} is sent to the build; list it in .dockerignore")
                }));
            }
        }
        let host = HostInputs {
            env_files,
            stack_files: digests,
            builds,
        };
        let mut desired = plan::render_with(stack, project, &labels, &host);
        for c in &mut desired.containers {
            c.grants = grants
                .iter()
                .filter(|g| g.service == c.service)
                .map(|g| g.access.clone())
                .collect();
        }
        Ok(Rendered {
            desired,
            stale_files,
            warnings,
        })
    }

    pub(super) fn engine_err(stack: &str) -> impl FnOnce(EngineError) -> StackError + '_ {
        move |source| StackError::Engine {
            stack: stack.to_string(),
            source,
        }
    }

    async fn observe(&self, desired: &Desired) -> Result<Observed, StackError> {
        let stack = desired.stack.as_str();
        let e = || Self::engine_err(stack);
        let names: Vec<String> = desired.containers.iter().map(|c| c.name.clone()).collect();
        let containers = self
            .engine
            .list_containers(stack, &names)
            .await
            .map_err(e())?;
        let networks = self.engine.list_networks().await.map_err(e())?;
        let volumes = self
            .engine
            .list_volumes()
            .await
            .map_err(e())?
            .into_keys()
            .collect();
        let mut images = BTreeMap::new();
        let mut build_digests = BTreeMap::new();
        for c in &desired.containers {
            if !images.contains_key(c.spec.image.as_str()) {
                let id = self
                    .engine
                    .image_id(c.spec.image.as_str())
                    .await
                    .map_err(e())?;
                images.insert(c.spec.image.to_string(), id);
            }
            if c.spec.build.is_some() && !build_digests.contains_key(c.spec.image.as_str()) {
                let d = self
                    .engine
                    .image_build_digest(c.spec.image.as_str())
                    .await
                    .map_err(e())?;
                build_digests.insert(c.spec.image.to_string(), d);
            }
        }
        let owned = containers
            .iter()
            .filter(|c| {
                // A container set aside by a recreate that never finished keeps the proof
                // of the name it had; the plan puts it back (or removes it, when its
                // replacement runs).
                let name = c.name.strip_suffix(ASIDE_SUFFIX).unwrap_or(&c.name);
                self.owner
                    .proves(Kind::Container, stack, name, c.labels.get(LABEL_OWNER))
            })
            .map(|c| c.id.clone())
            .collect();
        let owned_networks = networks
            .iter()
            .filter(|(name, labels)| {
                self.owner
                    .proves(Kind::Network, stack, name, labels.get(LABEL_OWNER))
            })
            .map(|(name, _)| name.clone())
            .collect();
        Ok(Observed {
            containers,
            networks,
            volumes,
            images,
            build_digests,
            owned,
            owned_networks,
        })
    }

    /// Each container of the stack with its state and health, for the operator.
    pub async fn status(&self, spec: &StackSpec) -> Result<Vec<ContainerStatus>, StackError> {
        let stack = spec.name.as_str();
        let list = self
            .engine
            .list_containers(stack, &[])
            .await
            .map_err(Self::engine_err(stack))?;
        let mut out = Vec::new();
        for c in list {
            if !self
                .owner
                .proves(Kind::Container, stack, &c.name, c.labels.get(LABEL_OWNER))
            {
                continue;
            }
            let st = self
                .engine
                .inspect_state(&c.id)
                .await
                .map_err(Self::engine_err(stack))?;
            out.push(ContainerStatus {
                service: c.labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
                name: c.name,
                state: st.status,
                health: st.health,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn registry_auth(&self, spec: &StackSpec) -> Result<Option<RegistryAuth>, StackError> {
        let Some(secret) = &spec.registry_auth else {
            return Ok(None);
        };
        let (from, text) = match secret {
            SecretRef::File(p) => (
                p.to_string(),
                std::fs::read_to_string(p.as_path()).map_err(|e| e.to_string()),
            ),
            SecretRef::Env(v) => (format!("${v}"), std::env::var(v).map_err(|e| e.to_string())),
        };
        let fail = |why: String| StackError::RegistryAuth {
            stack: spec.name.clone(),
            from: from.clone(),
            why,
        };
        let text = text.map_err(fail)?;
        // The parser's message carries a position, never the secret's content.
        serde_json::from_str(&text).map(Some).map_err(|e| {
            fail(format!(
                "expected {{\"username\", \"password\"}} JSON ({e})"
            ))
        })
    }

    fn labels(
        owner: &OwnerKey,
        desired: &Desired,
        index: usize,
        image_id: &str,
    ) -> HashMap<String, String> {
        let c = &desired.containers[index];
        let mut l: HashMap<String, String> = c.spec.labels.clone().into_iter().collect();
        l.insert(LABEL_STACK.into(), desired.stack.clone());
        l.insert(
            LABEL_OWNER.into(),
            owner.tag(Kind::Container, &desired.stack, &c.name),
        );
        l.insert(LABEL_SERVICE.into(), c.service.clone());
        l.insert(LABEL_CONFIG_HASH.into(), c.config_hash());
        l.insert(LABEL_IMAGE.into(), image_id.to_string());
        let deps: Vec<&str> = c.spec.depends_on.keys().map(String::as_str).collect();
        l.insert(LABEL_DEPENDS_ON.into(), deps.join(","));
        l
    }

    /// Waits until `id` (service `service`) satisfies `cond`, bounded by what its
    /// healthcheck allows.
    async fn wait_for(
        &self,
        desired: &Desired,
        service: &str,
        id: &str,
        cond: Condition,
    ) -> Result<(), StackError> {
        let stack = desired.stack.as_str();
        let limit = desired
            .containers
            .iter()
            .find(|c| c.service == service)
            .and_then(|c| c.spec.healthcheck.as_ref())
            .map(|h| {
                let ns =
                    |v: Option<i64>, d: i64| Duration::from_nanos(v.unwrap_or(d).max(0) as u64);
                let s = 1_000_000_000;
                ns(h.start_period, 0)
                    + (ns(h.interval, 30 * s) + ns(h.timeout, 30 * s))
                        * (h.retries.unwrap_or(3).max(1) as u32)
                    + Duration::from_secs(10)
            })
            .unwrap_or(Duration::from_secs(60))
            .min(MAX_WAIT);
        let started = Instant::now();
        loop {
            let st: ContainerState = self
                .engine
                .inspect_state(id)
                .await
                .map_err(Self::engine_err(stack))?;
            match st.satisfies(cond) {
                Ok(true) => return Ok(()),
                Ok(false) if started.elapsed() < limit => tokio::time::sleep(POLL).await,
                Ok(false) => {
                    return Err(StackError::Dependency {
                        stack: stack.into(),
                        service: service.into(),
                        why: format!("did not reach {cond:?} within {limit:?}"),
                    });
                }
                Err(why) => {
                    return Err(StackError::Dependency {
                        stack: stack.into(),
                        service: service.into(),
                        why,
                    });
                }
            }
        }
    }

    /// Creates, connects and starts one container; with `gate`, also waits for it to
    /// become healthy (with a healthcheck) or to stay up for `SETTLE` (without). On failure returns the ID of what was
    /// created, so the caller can clean up.
    async fn create_and_start(
        &self,
        desired: &Desired,
        index: usize,
        image_id: &str,
        gate: bool,
        inherit: &BTreeMap<String, String>,
    ) -> Result<String, (Option<String>, StackError)> {
        let stack = desired.stack.as_str();
        let c = &desired.containers[index];
        let body = engine::create_body(
            c,
            Self::labels(&self.owner, desired, index, image_id),
            inherit,
        );
        let id = self
            .engine
            .create_container(&c.name, body)
            .await
            .map_err(|e| (None, Self::engine_err(stack)(e)))?;
        let fail = |e: StackError| (Some(id.clone()), e);
        for (net, aliases) in c.spec.networks.iter().skip(1) {
            self.engine
                .connect_network(
                    net,
                    &id,
                    aliases.clone(),
                    c.spec.addresses.get(net).cloned(),
                )
                .await
                .map_err(|e| fail(Self::engine_err(stack)(e)))?;
        }
        self.engine
            .start_container(&id)
            .await
            .map_err(|e| fail(Self::engine_err(stack)(e)))?;
        let has_health = c
            .spec
            .healthcheck
            .as_ref()
            .is_some_and(|h| h.test.first().map(String::as_str) != Some("NONE"));
        if gate && has_health {
            self.wait_for(desired, &c.service, &id, Condition::ServiceHealthy)
                .await
                .map_err(fail)?;
        } else if gate {
            let started = Instant::now();
            while started.elapsed() < SETTLE {
                tokio::time::sleep(POLL).await;
                let st = self
                    .engine
                    .inspect_state(&id)
                    .await
                    .map_err(|e| fail(Self::engine_err(stack)(e)))?;
                if matches!(st.status.as_str(), "exited" | "dead" | "restarting") {
                    return Err(fail(StackError::Dependency {
                        stack: stack.into(),
                        service: c.service.clone(),
                        why: format!(
                            "stopped right after starting (exit code {})",
                            st.exit_code.unwrap_or(-1)
                        ),
                    }));
                }
            }
        }
        Ok(id)
    }

    /// Replaces a container, keeping the old one aside until the new one runs (and is
    /// healthy, if it has a healthcheck). On failure, with `rollback`, the old one is put
    /// back under its name and restarted if it was running.
    async fn recreate(
        &self,
        desired: &Desired,
        index: usize,
        image_id: &str,
        old_id: &str,
        was_running: bool,
        rollback: bool,
    ) -> Result<String, StackError> {
        let stack = desired.stack.as_str();
        let c = &desired.containers[index];
        let e = || Self::engine_err(stack);
        // The new container mounts the old one's anonymous volumes, as Compose does.
        let inherit = self.engine.container_volumes(old_id).await.map_err(e())?;
        self.engine.stop_container(old_id).await.map_err(e())?;
        let aside = format!("{}{ASIDE_SUFFIX}", c.name);
        self.engine
            .rename_container(old_id, &aside)
            .await
            .map_err(e())?;
        match self
            .create_and_start(desired, index, image_id, true, &inherit)
            .await
        {
            Ok(id) => {
                self.engine.remove_container(old_id).await.map_err(e())?;
                Ok(id)
            }
            Err((new_id, cause)) => {
                let restored = if rollback {
                    let put_back = async {
                        if let Some(id) = &new_id {
                            self.engine.remove_container(id).await?;
                        }
                        self.engine.rename_container(old_id, &c.name).await?;
                        if was_running {
                            self.engine.start_container(old_id).await?;
                        }
                        Ok::<_, EngineError>(())
                    };
                    match put_back.await {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(stack, service = %c.service, error = %e, "rollback failed");
                            false
                        }
                    }
                } else {
                    false
                };
                Err(StackError::RecreateFailed {
                    stack: stack.into(),
                    service: c.service.clone(),
                    cause: cause.to_string(),
                    restored,
                })
            }
        }
    }

    async fn execute(
        &self,
        spec: &StackSpec,
        desired: &Desired,
        observed: &Observed,
        plan: &Plan,
    ) -> Result<Vec<String>, StackError> {
        let stack = desired.stack.as_str();
        let e = || Self::engine_err(stack);
        let owned_labels = |kind: Kind, name: &str| {
            HashMap::from([
                (LABEL_STACK.to_string(), stack.to_string()),
                (LABEL_OWNER.to_string(), self.owner.tag(kind, stack, name)),
            ])
        };
        // Container per container name (each replica) as it stands now; updated as
        // steps run.
        let mut ids: BTreeMap<&str, String> = BTreeMap::new();
        for c in &desired.containers {
            if let Some(o) = observed
                .containers
                .iter()
                .find(|o| o.name == c.name && observed.owned.contains(&o.id))
            {
                ids.insert(c.name.as_str(), o.id.clone());
            }
        }
        let image_id = |i: usize| -> Result<String, StackError> {
            let image = &desired.containers[i].spec.image;
            observed
                .images
                .get(image.as_str())
                .cloned()
                .flatten()
                .ok_or_else(|| StackError::PullMissing {
                    stack: stack.into(),
                    image: image.to_string(),
                })
        };
        let mut done = Vec::new();
        let described = plan.describe(desired);
        for (step, what) in plan.steps.iter().zip(described) {
            if let Step::Create { index }
            | Step::Recreate { index, .. }
            | Step::Start { index, .. } = step
            {
                let c = &desired.containers[*index];
                for (dep, cond) in &c.spec.depends_on {
                    // Every replica of the dependency, as Compose waits for them all.
                    let replicas = desired.containers.iter().filter(|d| &d.service == dep);
                    for r in replicas {
                        let Some(id) = ids.get(r.name.as_str()) else {
                            return Err(StackError::Dependency {
                                stack: stack.into(),
                                service: dep.clone(),
                                why: format!("has no container {}", r.name),
                            });
                        };
                        self.wait_for(desired, dep, id, *cond).await?;
                    }
                }
            }
            match step {
                Step::Pull { image } => {
                    return Err(StackError::PullMissing {
                        stack: stack.into(),
                        image: image.clone(),
                    });
                }
                // `apply` builds before it executes; a build left in the plan means the
                // image is still not what the context makes.
                Step::Build { index } => {
                    return Err(StackError::PullMissing {
                        stack: stack.into(),
                        image: desired.containers[*index].spec.image.to_string(),
                    });
                }
                Step::CreateNetwork { network } => self
                    .engine
                    .create_network(network, owned_labels(Kind::Network, &network.name))
                    .await
                    .map_err(e())?,
                Step::CreateVolume { volume } => self
                    .engine
                    .create_volume(volume, owned_labels(Kind::Volume, &volume.name))
                    .await
                    .map_err(e())?,
                Step::RemoveContainer { id, .. } => {
                    self.engine.remove_container(id).await.map_err(e())?
                }
                Step::Create { index } => {
                    let id = self
                        .create_and_start(
                            desired,
                            *index,
                            &image_id(*index)?,
                            false,
                            &BTreeMap::new(),
                        )
                        .await
                        .map_err(|(_, err)| err)?;
                    ids.insert(desired.containers[*index].name.as_str(), id);
                }
                Step::Recreate {
                    index,
                    old_id,
                    was_running,
                    ..
                } => {
                    let id = self
                        .recreate(
                            desired,
                            *index,
                            &image_id(*index)?,
                            old_id,
                            *was_running,
                            spec.rollback_on_failure,
                        )
                        .await?;
                    ids.insert(desired.containers[*index].name.as_str(), id);
                }
                Step::Start { index, id } => match self.engine.start_container(id).await {
                    Ok(()) => {}
                    // dockerd killed mid-start can leave containerd holding the
                    // container's task; no start succeeds until the container is gone.
                    Err(err) if err.is_stale_task() => {
                        tracing::warn!(stack, container = %id, error = %err, "container has a stale containerd task; recreating it");
                        let inherit = self.engine.container_volumes(id).await.map_err(e())?;
                        self.engine.remove_container(id).await.map_err(e())?;
                        let id = self
                            .create_and_start(desired, *index, &image_id(*index)?, false, &inherit)
                            .await
                            .map_err(|(_, err)| err)?;
                        ids.insert(desired.containers[*index].name.as_str(), id);
                        done.push(format!("{what}: recreated (its containerd task was stale)"));
                        continue;
                    }
                    Err(err) => return Err(e()(err)),
                },
                Step::Restore { index, id } => {
                    self.engine
                        .rename_container(id, &desired.containers[*index].name)
                        .await
                        .map_err(e())?;
                    ids.insert(desired.containers[*index].name.as_str(), id.clone());
                }
                Step::RemoveNetwork { name } => {
                    self.engine.remove_network(name).await.map_err(e())?
                }
            }
            done.push(what);
        }
        Ok(done)
    }
}

#[async_trait::async_trait]
impl Converge<StackSpec> for StackConverger {
    fn validate(&self, spec: &StackSpec) -> Result<(), ResourceError> {
        Self::extra_labels(spec, &spec.project)?;
        self.check_roots(spec)?;
        self.check_grants(spec, &spec.project)?;
        Ok(())
    }

    async fn check(&self, spec: &StackSpec, _cx: &PassContext) -> Result<Check, ResourceError> {
        let r = self.render(spec)?;
        self.check_platforms(spec).await?;
        let observed = self.observe(&r.desired).await?;
        let plan = plan::plan(&r.desired, &observed)?;
        let mut lines: Vec<String> = r
            .stale_files
            .iter()
            .map(|(p, _)| format!("write file {}", p.display()))
            .collect();
        lines.extend(plan.describe(&r.desired));
        if lines.is_empty() {
            Ok(Check::InSync)
        } else {
            let mut diff: Vec<String> =
                r.warnings.iter().map(|w| format!("warning: {w}")).collect();
            diff.extend(lines);
            Ok(Check::Drift {
                diff: diff.join("\n"),
            })
        }
    }

    async fn apply(&self, spec: &StackSpec, _cx: &PassContext) -> Result<String, ResourceError> {
        let stack = spec.name.as_str();
        self.check_roots(spec)?;
        let mut r = self.render(spec)?;
        self.check_platforms(spec).await?;
        for w in &r.warnings {
            tracing::warn!(stack, warning = %w, "compose");
        }
        // Plan first: a conflict or a missing external object fails the stack before any
        // file is written.
        let mut observed = self.observe(&r.desired).await?;
        let mut plan = plan::plan(&r.desired, &observed)?;
        let mut done = Vec::new();
        for (path, content) in &r.stale_files {
            write_stack_file(stack, self.root_of(spec, path)?, path, content)?;
            done.push(format!("write file {}", path.display()));
        }
        if !r.stale_files.is_empty() {
            // Build contexts and mounted files are now as desired: render again so the
            // digests (and config hashes) are those of what is on disk.
            r = self.render(spec)?;
            observed = self.observe(&r.desired).await?;
            plan = plan::plan(&r.desired, &observed)?;
        }
        if self.build_images(&r.desired, &plan, &mut done).await? {
            observed = self.observe(&r.desired).await?;
            plan = plan::plan(&r.desired, &observed)?;
        }
        let pulls: Vec<&String> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Pull { image } => Some(image),
                _ => None,
            })
            .collect();
        if !pulls.is_empty() {
            let auth = self.registry_auth(spec)?;
            for image in pulls {
                self.engine
                    .pull_image(image, auth.clone())
                    .await
                    .map_err(Self::engine_err(stack))?;
                done.push(format!("pull image {image}"));
            }
            // Level-triggered: decide recreations against what is there after the pull.
            observed = self.observe(&r.desired).await?;
            plan = plan::plan(&r.desired, &observed)?;
        }
        done.extend(self.execute(spec, &r.desired, &observed, &plan).await?);
        for s in self.status(spec).await? {
            let health = s.health.map(|h| format!(" ({h})")).unwrap_or_default();
            done.push(format!("{}: {}{health}", s.name, s.state));
        }
        Ok(done.join("\n"))
    }
}

#[cfg(test)]
mod tests;
