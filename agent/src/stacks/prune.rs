//! Bringing down the stacks this agent created that the desired state no longer declares,
//! as `docker compose down` (without `-v`) does: containers stopped in reverse dependency
//! order, each with its own stop signal and grace period, then removed; the stack's
//! networks removed; named volumes kept, since they hold data, and said so.
//!
//! Only what carries this agent's owner proof (see `owner`) is touched. A `phoenix.stack`
//! label alone proves nothing (anyone with access to the engine can set it), so a
//! container or network that claims a stack without the proof is left running and named
//! in the plan; a stack made only of such objects is not offered at all.
//!
//! Assumptions: the order comes from the `phoenix.depends-on` label the converger puts on
//! each container; containers created before that label existed count as depending on
//! nothing and stop in the first wave. An engine that does not answer (no daemon behind
//! the socket) holds nothing that could be removed now: the stack is removed by the
//! first pass after the engine is back.

use super::engine::{ContainerEngine, EngineError};
use super::owner::{Kind, LABEL_OWNER};
use super::plan::{ASIDE_SUFFIX, ObservedContainer};
use super::{LABEL_DEPENDS_ON, LABEL_SERVICE, LABEL_STACK, StackConverger};
use crate::reconcile::{Leftover, Prune, ResourceError};
use phoenix_proto::model::{GuestSpec, Resource};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("list the containers, networks and volumes of stacks: {0}")]
    List(#[source] EngineError),
    #[error("bring down stack {stack}: {}{}", .failed.join("; "), done_note(.done))]
    Down {
        stack: String,
        /// Each failed step, with the engine's reason.
        failed: Vec<String>,
        /// What was done before or despite the failures.
        done: Vec<String>,
    },
}

fn done_note(done: &[String]) -> String {
    if done.is_empty() {
        String::new()
    } else {
        format!(" (done: {})", done.join(", "))
    }
}

/// What one undeclared stack holds on the engine.
#[derive(Debug, Default)]
struct Down {
    /// Containers with this agent's proof, in the order they are stopped: each wave holds
    /// the services no container left behind it depends on.
    waves: Vec<Vec<ObservedContainer>>,
    /// Networks with this agent's proof.
    networks: Vec<String>,
    /// Named volumes with this agent's proof: kept.
    volumes: Vec<String>,
    /// Objects claiming the stack without the proof: never touched.
    foreign: Vec<String>,
}

impl Down {
    /// Whether anything of this agent's is left to remove.
    fn any(&self) -> bool {
        !self.waves.is_empty() || !self.networks.is_empty()
    }

    fn plan(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for c in self.waves.iter().flatten() {
            let service = c.labels.get(LABEL_SERVICE).map_or("?", String::as_str);
            lines.push(format!(
                "- stop and remove container {} (service {service})",
                c.name
            ));
        }
        lines.extend(
            self.networks
                .iter()
                .map(|n| format!("- remove network {n}")),
        );
        lines.extend(self.volumes.iter().map(|v| {
            format!(
                "keep volume {v}: named volumes hold data (remove it with `docker volume rm {v}`)"
            )
        }));
        lines.extend(self.foreign.iter().map(|o| {
            format!("leave {o} in place: it claims the stack without this agent's proof")
        }));
        lines
    }
}

/// How long a pass waits for the engine to list what stacks hold.
const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn service(c: &ObservedContainer) -> &str {
    c.labels.get(LABEL_SERVICE).map_or("", String::as_str)
}

fn depends_on(c: &ObservedContainer) -> impl Iterator<Item = &str> {
    c.labels
        .get(LABEL_DEPENDS_ON)
        .map_or("", String::as_str)
        .split(',')
        .filter(|s| !s.is_empty())
}

/// Reverse dependency order: first the containers whose services nothing left depends
/// on, then those their removal frees, and so on.
fn waves(mut left: Vec<ObservedContainer>) -> Vec<Vec<ObservedContainer>> {
    let mut out = Vec::new();
    while !left.is_empty() {
        let needed: BTreeSet<String> = left
            .iter()
            .flat_map(|c| {
                depends_on(c)
                    .filter(move |d| *d != service(c))
                    .map(str::to_owned)
            })
            .collect();
        let (now, later): (Vec<_>, Vec<_>) =
            left.into_iter().partition(|c| !needed.contains(service(c)));
        if now.is_empty() {
            // Labels set by hand can form a cycle; a validated project cannot. Stop the
            // rest together rather than never.
            out.push(later);
            break;
        }
        out.push(now);
        left = later;
    }
    out
}

impl StackConverger {
    /// What each stack that `declared` does not name holds on the engine. Reads only.
    async fn undeclared(
        &self,
        declared: &BTreeSet<&str>,
    ) -> Result<BTreeMap<String, Down>, EngineError> {
        let claimed = |labels: &BTreeMap<String, String>| {
            labels
                .get(LABEL_STACK)
                .filter(|s| !declared.contains(s.as_str()))
                .cloned()
        };
        let mut stacks: BTreeMap<String, (Vec<ObservedContainer>, Down)> = BTreeMap::new();
        for c in self.engine.list_labelled_containers().await? {
            let Some(stack) = claimed(&c.labels) else {
                continue;
            };
            // A container set aside by an interrupted recreate holds the proof of the
            // name it had.
            let name = c.name.strip_suffix(ASIDE_SUFFIX).unwrap_or(&c.name);
            let entry = stacks.entry(stack.clone()).or_default();
            if self
                .owner
                .proves(Kind::Container, &stack, name, c.labels.get(LABEL_OWNER))
            {
                entry.0.push(c);
            } else {
                entry.1.foreign.push(format!("container {}", c.name));
            }
        }
        for (name, labels) in self.engine.list_networks().await? {
            let Some(stack) = claimed(&labels) else {
                continue;
            };
            let entry = stacks.entry(stack.clone()).or_default();
            if self
                .owner
                .proves(Kind::Network, &stack, &name, labels.get(LABEL_OWNER))
            {
                entry.1.networks.push(name);
            } else {
                entry.1.foreign.push(format!("network {name}"));
            }
        }
        let mut out: BTreeMap<String, Down> = stacks
            .into_iter()
            .map(|(stack, (containers, mut down))| {
                down.waves = waves(containers);
                (stack, down)
            })
            .filter(|(_, down)| down.any())
            .collect();
        if !out.is_empty() {
            for (name, labels) in self.engine.list_volumes().await? {
                let Some(stack) = claimed(&labels) else {
                    continue;
                };
                if let Some(down) = out.get_mut(&stack)
                    && self
                        .owner
                        .proves(Kind::Volume, &stack, &name, labels.get(LABEL_OWNER))
                {
                    down.volumes.push(name);
                }
            }
        }
        Ok(out)
    }
}

fn declared(spec: &GuestSpec) -> BTreeSet<&str> {
    spec.resources()
        .iter()
        .filter_map(|r| match r {
            Resource::Stack(s) => Some(s.name.as_str()),
            _ => None,
        })
        .collect()
}

/// Stops then removes one wave of containers, the stops side by side (each waits out
/// its own grace period). Returns what was done and what failed.
async fn down_wave(
    engine: &Arc<dyn ContainerEngine>,
    wave: &[ObservedContainer],
) -> (Vec<String>, Vec<String>) {
    let mut stops = tokio::task::JoinSet::new();
    for c in wave {
        let (engine, c) = (engine.clone(), c.clone());
        stops.spawn(async move {
            let stopped = engine.stop_container(&c.id).await;
            (c, stopped)
        });
    }
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    while let Some(joined) = stops.join_next().await {
        let (c, stopped) = match joined {
            Ok(r) => r,
            Err(e) => {
                failed.push(format!("stop a container: {e}"));
                continue;
            }
        };
        if let Err(e) = stopped {
            // Not removed by force: a container that would not stop is reported, and
            // the next pass tries again.
            failed.push(e.to_string());
            continue;
        }
        match engine.remove_container(&c.id).await {
            Ok(()) => done.push(format!("stopped and removed container {}", c.name)),
            Err(e) => failed.push(e.to_string()),
        }
    }
    (done, failed)
}

#[async_trait::async_trait]
impl Prune for StackConverger {
    fn kind(&self) -> &'static str {
        "stack"
    }

    async fn leftovers(&self, spec: &GuestSpec) -> Result<Vec<Leftover>, ResourceError> {
        // Every pass asks, also on guests that never ran a stack: a busy or wedged engine
        // (bollard waits 120 s) must not hold the pass and its report hostage.
        let listed = tokio::time::timeout(LIST_TIMEOUT, self.undeclared(&declared(spec))).await;
        let stacks = match listed {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if e.is_unreachable() => {
                tracing::debug!(error = %e, "no Docker engine answers; no stack to remove now");
                return Ok(Vec::new());
            }
            Ok(Err(e)) => return Err(Box::new(PruneError::List(e))),
            Err(_) => {
                tracing::warn!(
                    "the Docker engine did not list its containers within {LIST_TIMEOUT:?}; stacks no longer declared are looked for again next pass"
                );
                return Ok(Vec::new());
            }
        };
        Ok(stacks
            .into_iter()
            .map(|(stack, down)| {
                let mut lines = vec![format!(
                    "- bring down stack {stack} (created by Phoenix, no longer declared)"
                )];
                lines.extend(down.plan());
                Leftover {
                    resource: format!("stack:{stack}"),
                    diff: lines.join("\n"),
                    key: stack,
                }
            })
            .collect())
    }

    async fn remove(&self, leftover: &Leftover) -> Result<String, ResourceError> {
        let stack = leftover.key.as_str();
        // Level-triggered: what is there now, not what the plan saw.
        let only = BTreeSet::new();
        let mut all = self.undeclared(&only).await.map_err(PruneError::List)?;
        let Some(down) = all.remove(stack) else {
            return Ok(format!("stack {stack} is already down"));
        };
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for wave in &down.waves {
            let (d, f) = down_wave(&self.engine, wave).await;
            done.extend(d);
            failed.extend(f);
        }
        for n in &down.networks {
            match self.engine.remove_network(n).await {
                Ok(()) => done.push(format!("removed network {n}")),
                Err(e) => failed.push(e.to_string()),
            }
        }
        done.extend(down.volumes.iter().map(|v| format!("kept volume {v}")));
        done.extend(
            down.foreign
                .iter()
                .map(|o| format!("left {o} in place (no proof)")),
        );
        if failed.is_empty() {
            Ok(done.join(", "))
        } else {
            Err(Box::new(PruneError::Down {
                stack: stack.to_owned(),
                failed,
                done,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, service: &str, deps: &str) -> ObservedContainer {
        ObservedContainer {
            id: name.into(),
            name: name.into(),
            labels: BTreeMap::from([
                (LABEL_SERVICE.to_string(), service.to_string()),
                (LABEL_DEPENDS_ON.to_string(), deps.to_string()),
            ]),
            running: true,
            exit_code: None,
        }
    }

    fn names(w: &[Vec<ObservedContainer>]) -> Vec<Vec<&str>> {
        w.iter()
            .map(|w| w.iter().map(|c| c.name.as_str()).collect())
            .collect()
    }

    #[test]
    fn dependents_stop_before_what_they_depend_on() {
        let w = waves(vec![
            c("db", "db", ""),
            c("api-1", "api", "db"),
            c("api-2", "api", "db"),
            c("web", "web", "api,db"),
            c("cron", "cron", ""),
        ]);
        assert_eq!(
            names(&w),
            [vec!["web", "cron"], vec!["api-1", "api-2"], vec!["db"]]
        );
    }

    #[test]
    fn a_cycle_in_hand_made_labels_still_stops_everything() {
        let w = waves(vec![c("a", "a", "b"), c("b", "b", "a"), c("x", "x", "")]);
        assert_eq!(names(&w), [vec!["x"], vec!["a", "b"]]);
    }
}
