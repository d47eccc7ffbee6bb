//! Desired versus observed, as a list of steps. Pure: the converger observes the engine,
//! calls `plan`, and executes (or, in dry-run, only prints) the steps.
//!
//! Guarantees: a container is recreated only when its config hash or the ID of the image
//! its tag points at differs from the labels it was created with; only objects the
//! converger proved its own (`Observed::owned`) are ever removed or adopted, and an object
//! that carries the stack label without that proof fails the plan as a conflict; named
//! volumes are never removed; a container set aside by a recreate that was interrupted
//! (`<name>-phoenix-old`) is never removed as an orphan while its replacement is not
//! running: it is put back under its name, so the recreate runs again with it as the
//! rollback copy.

use super::{LABEL_CONFIG_HASH, LABEL_IMAGE, LABEL_SERVICE, LABEL_STACK};
use phoenix_proto::model::compose::{self, ComposeProject, Condition, MountKind, Service, grants};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("stack {stack}: external {kind} {name:?} does not exist")]
    MissingExternal {
        stack: String,
        kind: &'static str,
        name: String,
    },
    #[error(
        "stack {stack}: image {image} of service {service} is not present and its pull_policy is never"
    )]
    ImageAbsent {
        stack: String,
        service: String,
        image: String,
    },
    #[error(
        "stack {stack}: container {name:?} exists but is not labelled as part of this stack; refusing to touch it"
    )]
    NameTaken { stack: String, name: String },
    #[error(
        "stack {stack}: conflict: {}; refusing to touch the stack. If it is an object of an older Phoenix agent, or of this guest before its agent state was lost, remove it by hand (docker rm -f / docker network rm) and the next pass recreates it",
        .objects.iter().map(|o| format!("{o} carries phoenix labels but was not created by this agent")).collect::<Vec<_>>().join("; ")
    )]
    Conflict { stack: String, objects: Vec<String> },
}

/// One container as the stack wants it. Everything that should recreate the container
/// when it changes is in here, and nothing else: its hash is the config-hash label.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerConfig {
    pub service: String,
    pub name: String,
    /// The Compose service with env files merged, extra labels added and volume and
    /// network keys replaced by engine-side names.
    pub spec: Service,
    /// Digest of each stack file this container bind-mounts, so editing one recreates it.
    pub files: BTreeMap<String, String>,
    /// Digest of the build context (and Dockerfile) the image is built from, so a change
    /// rebuilds the image and recreates the container. Skipped when absent, so a
    /// container without `build` hashes as it always did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_digest: Option<String>,
    /// Host-root grants (`grants::Grant::access`) the container receives, shown on every
    /// plan line that creates it. Derived from `spec`, so not hashed again.
    #[serde(skip)]
    pub grants: Vec<String>,
}

impl ContainerConfig {
    pub fn config_hash(&self) -> String {
        // Serializing our own BTreeMap-based types is deterministic.
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(json))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkPlan {
    pub name: String,
    pub external: bool,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub internal: bool,
    pub attachable: bool,
    pub enable_ipv6: bool,
    pub ipam: Option<compose::Ipam>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VolumePlan {
    pub name: String,
    pub external: bool,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub stack: String,
    /// In start order (dependencies first).
    pub containers: Vec<ContainerConfig>,
    pub networks: Vec<NetworkPlan>,
    pub volumes: Vec<VolumePlan>,
}

/// Suffix of the previous container's name while its replacement starts.
pub const ASIDE_SUFFIX: &str = "-phoenix-old";

/// Engine-side name of a stack object: `<stack>_<key>`, as Compose names networks and volumes.
pub fn object_name(stack: &str, key: &str, explicit: &Option<String>) -> String {
    explicit.clone().unwrap_or_else(|| format!("{stack}_{key}"))
}

/// Engine-side container name: `container_name`, or `<project>-<service>-1` (Compose v2).
pub fn container_name(stack: &str, service: &str, explicit: &Option<String>) -> String {
    replica_name(stack, service, explicit, 1)
}

/// Engine-side name of replica `n` (from 1): `<project>-<service>-<n>`, as Compose names
/// them; `container_name` only for a service of one container.
pub fn replica_name(stack: &str, service: &str, explicit: &Option<String>, n: u32) -> String {
    explicit
        .clone()
        .unwrap_or_else(|| format!("{stack}-{service}-{n}"))
}

/// What the host adds to a project when it is rendered: env file contents, stack file
/// digests and build-context digests.
#[derive(Debug, Clone, Default)]
pub struct HostInputs {
    /// env_file path → its variables (optional files that are absent are missing here).
    pub env_files: BTreeMap<String, BTreeMap<String, String>>,
    /// Stack file path → content digest.
    pub stack_files: BTreeMap<String, String>,
    /// Service → digest of its build context and Dockerfile.
    pub builds: BTreeMap<String, String>,
}

/// Builds the desired containers. `env_files` maps each env_file path to its content,
/// `stack_files` each stack file path to its content digest.
pub fn render(
    stack: &str,
    project: &ComposeProject,
    extra_labels: &BTreeMap<String, BTreeMap<String, String>>,
    env_files: &BTreeMap<String, BTreeMap<String, String>>,
    stack_files: &BTreeMap<String, String>,
) -> Desired {
    render_with(
        stack,
        project,
        extra_labels,
        &HostInputs {
            env_files: env_files.clone(),
            stack_files: stack_files.clone(),
            builds: BTreeMap::new(),
        },
    )
}

/// As `render`, with build-context digests. Objects are named after the project: its
/// top-level `name` when the file has one, else the stack's name.
pub fn render_with(
    stack: &str,
    project: &ComposeProject,
    extra_labels: &BTreeMap<String, BTreeMap<String, String>>,
    host: &HostInputs,
) -> Desired {
    let env_files = &host.env_files;
    let stack_files = &host.stack_files;
    let project_name = project.name().unwrap_or(stack);
    let networks: Vec<NetworkPlan> = project
        .networks()
        .iter()
        .map(|(key, n)| NetworkPlan {
            name: if n.external {
                n.name.clone().unwrap_or_else(|| key.clone())
            } else {
                object_name(project_name, key, &n.name)
            },
            external: n.external,
            driver: n.driver.clone(),
            driver_opts: n.driver_opts.clone(),
            internal: n.internal,
            attachable: n.attachable,
            enable_ipv6: n.enable_ipv6,
            ipam: n.ipam.clone(),
            labels: n.labels.clone(),
        })
        .collect();
    let net_name: BTreeMap<&str, &str> = project
        .networks()
        .keys()
        .zip(&networks)
        .map(|(k, n)| (k.as_str(), n.name.as_str()))
        .collect();
    let volumes: Vec<VolumePlan> = project
        .volumes()
        .iter()
        .map(|(key, v)| VolumePlan {
            name: if v.external {
                v.name.clone().unwrap_or_else(|| key.clone())
            } else {
                object_name(project_name, key, &v.name)
            },
            external: v.external,
            driver: v.driver.clone(),
            driver_opts: v.driver_opts.clone(),
            labels: v.labels.clone(),
        })
        .collect();
    let vol_name: BTreeMap<&str, &str> = project
        .volumes()
        .keys()
        .zip(&volumes)
        .map(|(k, v)| (k.as_str(), v.name.as_str()))
        .collect();

    let mut containers = Vec::new();
    for svc_name in project.start_order() {
        let Some(svc) = project.services().get(svc_name) else {
            continue;
        };
        let mut spec = svc.clone();
        // Later env files win over earlier ones, `environment` wins over all, as in Compose.
        let mut env = BTreeMap::new();
        for path in svc.env_files.iter().chain(&svc.optional_env_files) {
            if let Some(vars) = env_files.get(path) {
                env.extend(vars.clone());
            }
        }
        env.extend(svc.environment.clone());
        spec.environment = env;
        if let Some(extra) = extra_labels.get(svc_name) {
            spec.labels.extend(extra.clone());
        }
        for m in &mut spec.volumes {
            if m.kind == MountKind::Volume
                && let Some(n) = vol_name.get(m.source.as_str())
            {
                m.source = (*n).to_string();
            }
        }
        // A service in another namespace (`network_mode`) joins no network.
        let keys: Vec<String> = if svc.network_mode.is_some() {
            Vec::new()
        } else if svc.networks.is_empty() {
            vec![compose::DEFAULT_NETWORK.to_string()]
        } else {
            svc.networks.keys().cloned().collect()
        };
        if let Some(other) = svc
            .network_mode
            .as_deref()
            .and_then(|m| m.strip_prefix("service:"))
        {
            let target = project.services().get(other);
            let name = container_name(
                project_name,
                other,
                &target.and_then(|t| t.container_name.clone()),
            );
            spec.network_mode = Some(format!("container:{name}"));
        }
        spec.addresses = svc
            .addresses
            .iter()
            .map(|(k, a)| {
                let name = net_name.get(k.as_str()).copied().unwrap_or(k.as_str());
                (name.to_string(), a.clone())
            })
            .collect();
        spec.networks = keys
            .iter()
            .map(|k| {
                let mut aliases = svc.networks.get(k).cloned().unwrap_or_default();
                // Other services reach this one by its service name, as in Compose.
                if !aliases.iter().any(|a| a == svc_name) {
                    aliases.insert(0, svc_name.to_string());
                }
                let name = net_name.get(k.as_str()).copied().unwrap_or(k.as_str());
                (name.to_string(), aliases)
            })
            .collect();
        let files: BTreeMap<String, String> = stack_files
            .iter()
            .filter(|(path, _)| {
                svc.volumes.iter().any(|m| {
                    m.kind == MountKind::Bind
                        && std::path::Path::new(path.as_str()).starts_with(&m.source)
                })
            })
            .map(|(p, d)| (p.clone(), d.clone()))
            .collect();
        for n in 1..=svc.replicas.unwrap_or(1) {
            containers.push(ContainerConfig {
                service: svc_name.to_string(),
                name: replica_name(project_name, svc_name, &svc.container_name, n),
                spec: spec.clone(),
                files: files.clone(),
                build_digest: host.builds.get(svc_name).cloned(),
                grants: Vec::new(),
            });
        }
    }
    // As the file says; the converger also judges where bind sources' links lead.
    for g in grants::detect(project, &[]) {
        if let Some(c) = containers.iter_mut().find(|c| c.service == g.service) {
            c.grants.push(g.access);
        }
    }
    Desired {
        stack: stack.to_string(),
        containers,
        networks,
        volumes,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObservedContainer {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// Exit code when the container has exited; `None` while running or never started.
    pub exit_code: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Containers labelled with the stack, plus any container holding one of the stack's
    /// container names (to detect a foreign container in the way).
    pub containers: Vec<ObservedContainer>,
    /// Every network name → its labels.
    pub networks: BTreeMap<String, BTreeMap<String, String>>,
    /// Every volume name.
    pub volumes: BTreeSet<String>,
    /// Image reference → local image ID, `None` when the image is not present.
    pub images: BTreeMap<String, Option<String>>,
    /// For images a service builds: the build-context digest the present image was built
    /// from (its `phoenix.build-digest` label), `None` when absent or unlabelled.
    pub build_digests: BTreeMap<String, Option<String>>,
    /// IDs of the containers whose `phoenix.owner` label proves this agent created them.
    pub owned: BTreeSet<String>,
    /// Names of the networks proven the same way.
    pub owned_networks: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Pull {
        image: String,
    },
    /// Builds the image of `Desired::containers[index]` from its context on the guest.
    Build {
        index: usize,
    },
    CreateNetwork {
        network: NetworkPlan,
    },
    CreateVolume {
        volume: VolumePlan,
    },
    RemoveContainer {
        id: String,
        name: String,
        why: &'static str,
    },
    /// `index` into `Desired::containers`.
    Create {
        index: usize,
    },
    Recreate {
        index: usize,
        old_id: String,
        was_running: bool,
        why: String,
    },
    Start {
        index: usize,
        id: String,
    },
    /// Puts a container set aside by an interrupted recreate back under its name.
    Restore {
        index: usize,
        id: String,
    },
    RemoveNetwork {
        name: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn describe(&self, desired: &Desired) -> Vec<String> {
        let svc = |i: &usize| {
            desired
                .containers
                .get(*i)
                .map(|c| format!("{} ({})", c.name, c.service))
                .unwrap_or_default()
        };
        let grants = |i: &usize| match desired.containers.get(*i) {
            Some(c) if !c.grants.is_empty() => {
                format!(" (GRANTS HOST ACCESS: {})", c.grants.join(", "))
            }
            _ => String::new(),
        };
        self.steps
            .iter()
            .map(|s| match s {
                Step::Pull { image } => format!("pull image {image}"),
                Step::Build { index } => match desired.containers.get(*index) {
                    Some(c) => format!(
                        "build image {} for {} from {}",
                        c.spec.image,
                        c.service,
                        c.spec
                            .build
                            .as_ref()
                            .map(|b| b.context.as_str())
                            .unwrap_or("?")
                    ),
                    None => String::new(),
                },
                Step::CreateNetwork { network } => format!("create network {}", network.name),
                Step::CreateVolume { volume } => format!("create volume {}", volume.name),
                Step::RemoveContainer { name, why, .. } => {
                    format!("remove container {name}: {why}")
                }
                Step::Create { index } => {
                    format!("create container {}{}", svc(index), grants(index))
                }
                Step::Recreate { index, why, .. } => {
                    format!("recreate container {}: {why}{}", svc(index), grants(index))
                }
                Step::Start { index, .. } => format!("start container {}", svc(index)),
                Step::Restore { index, .. } => format!(
                    "restore container {} set aside by an interrupted recreate",
                    svc(index)
                ),
                Step::RemoveNetwork { name } => format!("remove network {name}: not in the stack"),
            })
            .collect()
    }
}

/// The steps that bring `observed` to `desired`, in execution order: pulls, networks,
/// volumes, orphan removal (frees names and ports), services in dependency order,
/// orphan networks last.
pub fn plan(desired: &Desired, observed: &Observed) -> Result<Plan, PlanError> {
    let stack = desired.stack.as_str();
    let mut steps = Vec::new();

    let mut pulls = BTreeSet::new();
    // Image → the first container that builds it (replicas share one build).
    let mut builds: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, c) in desired.containers.iter().enumerate() {
        let image = c.spec.image.as_str();
        let present = matches!(observed.images.get(image), Some(Some(_)));
        if c.spec.build.is_some() {
            // Rebuilt when absent or built from another context than the desired one.
            let built_from = observed.build_digests.get(image).cloned().flatten();
            if !present || built_from != c.build_digest {
                builds.entry(image).or_insert(i);
            }
        } else if !present {
            if c.spec.pull_policy.as_deref() == Some("never") {
                return Err(PlanError::ImageAbsent {
                    stack: stack.into(),
                    service: c.service.clone(),
                    image: image.to_string(),
                });
            }
            pulls.insert(image.to_string());
        }
    }
    steps.extend(pulls.iter().map(|image| Step::Pull {
        image: image.clone(),
    }));
    steps.extend(builds.values().map(|&index| Step::Build { index }));

    for n in &desired.networks {
        if observed.networks.contains_key(&n.name) {
            continue;
        }
        if n.external {
            return Err(PlanError::MissingExternal {
                stack: stack.into(),
                kind: "network",
                name: n.name.clone(),
            });
        }
        steps.push(Step::CreateNetwork { network: n.clone() });
    }
    for v in &desired.volumes {
        if observed.volumes.contains(&v.name) {
            continue;
        }
        if v.external {
            return Err(PlanError::MissingExternal {
                stack: stack.into(),
                kind: "volume",
                name: v.name.clone(),
            });
        }
        steps.push(Step::CreateVolume { volume: v.clone() });
    }

    let claims = |labels: &BTreeMap<String, String>| {
        labels.get(LABEL_STACK).map(String::as_str) == Some(stack)
    };
    // Anything claiming the stack without proof is neither adopted nor removed, and nothing
    // else of the stack is touched while it is there.
    let mut conflicts: Vec<String> = observed
        .containers
        .iter()
        .filter(|c| claims(&c.labels) && !observed.owned.contains(&c.id))
        .map(|c| format!("container {}", c.name))
        .collect();
    conflicts.extend(
        observed
            .networks
            .iter()
            .filter(|(name, labels)| claims(labels) && !observed.owned_networks.contains(*name))
            .map(|(name, _)| format!("network {name}")),
    );
    if !conflicts.is_empty() {
        return Err(PlanError::Conflict {
            stack: stack.into(),
            objects: conflicts,
        });
    }
    let ours = |c: &ObservedContainer| claims(&c.labels) && observed.owned.contains(&c.id);
    // Set aside by a recreate that did not finish: the previous container of a service.
    let aside: BTreeMap<usize, &ObservedContainer> = observed
        .containers
        .iter()
        .filter(|c| ours(c))
        .filter_map(|c| {
            let name = c.name.strip_suffix(ASIDE_SUFFIX)?;
            let i = desired.containers.iter().position(|d| d.name == name)?;
            (c.labels.get(LABEL_SERVICE) == Some(&desired.containers[i].service)).then_some((i, c))
        })
        .collect();
    let mut primary: BTreeMap<usize, ObservedContainer> = BTreeMap::new();
    for obs in &observed.containers {
        if aside.values().any(|a| a.id == obs.id) {
            continue;
        }
        let slot = desired.containers.iter().position(|d| d.name == obs.name);
        match slot {
            Some(i) if !ours(obs) => {
                return Err(PlanError::NameTaken {
                    stack: stack.into(),
                    name: desired.containers[i].name.clone(),
                });
            }
            Some(i) if obs.labels.get(LABEL_SERVICE) == Some(&desired.containers[i].service) => {
                primary.insert(i, obs.clone());
            }
            Some(_) => steps.push(Step::RemoveContainer {
                id: obs.id.clone(),
                name: obs.name.clone(),
                why: "its name now belongs to another service",
            }),
            None if ours(obs) => steps.push(Step::RemoveContainer {
                id: obs.id.clone(),
                name: obs.name.clone(),
                why: "orphan (not in the stack)",
            }),
            None => {}
        }
    }

    // A replacement that runs finished its recreate but for removing the old container;
    // one that does not is dropped and the old container put back, so the recreate below
    // starts over with it as the rollback copy. Restored containers were running before
    // the recreate stopped them.
    let mut restored = BTreeSet::new();
    for (&i, old) in &aside {
        match primary.get(&i) {
            Some(new) if new.running => steps.push(Step::RemoveContainer {
                id: old.id.clone(),
                name: old.name.clone(),
                why: "set aside by a recreate that finished",
            }),
            replacement => {
                if let Some(new) = replacement {
                    steps.push(Step::RemoveContainer {
                        id: new.id.clone(),
                        name: new.name.clone(),
                        why: "replacement of a set-aside container that never started",
                    });
                }
                steps.push(Step::Restore {
                    index: i,
                    id: old.id.clone(),
                });
                restored.insert(i);
                primary.insert(
                    i,
                    ObservedContainer {
                        name: desired.containers[i].name.clone(),
                        ..(*old).clone()
                    },
                );
            }
        }
    }

    // One-shot services others wait on with service_completed_successfully stay exited.
    let one_shot: BTreeSet<&str> = desired
        .containers
        .iter()
        .flat_map(|c| c.spec.depends_on.iter())
        .filter(|(_, cond)| **cond == Condition::ServiceCompletedSuccessfully)
        .map(|(s, _)| s.as_str())
        .collect();

    for (i, want) in desired.containers.iter().enumerate() {
        let Some(have) = primary.get(&i) else {
            steps.push(Step::Create { index: i });
            continue;
        };
        let image_id = observed
            .images
            .get(want.spec.image.as_str())
            .cloned()
            .flatten();
        let why = if have.labels.get(LABEL_CONFIG_HASH) != Some(&want.config_hash()) {
            Some("configuration changed".to_string())
        } else if image_id.is_none() {
            Some(format!(
                "image {} is not present (recreated if the pulled image differs)",
                want.spec.image
            ))
        } else if have.labels.get(LABEL_IMAGE) != image_id.as_ref() {
            Some(format!("image {} changed", want.spec.image))
        } else {
            None
        };
        if let Some(why) = why {
            steps.push(Step::Recreate {
                index: i,
                old_id: have.id.clone(),
                was_running: have.running || restored.contains(&i),
                why,
            });
        } else if !(have.running
            || one_shot.contains(want.service.as_str()) && have.exit_code == Some(0))
        {
            steps.push(Step::Start {
                index: i,
                id: have.id.clone(),
            });
        }
    }

    let wanted: BTreeSet<&str> = desired.networks.iter().map(|n| n.name.as_str()).collect();
    for (name, labels) in &observed.networks {
        if claims(labels)
            && observed.owned_networks.contains(name)
            && !wanted.contains(name.as_str())
        {
            steps.push(Step::RemoveNetwork { name: name.clone() });
        }
    }
    Ok(Plan { steps })
}
