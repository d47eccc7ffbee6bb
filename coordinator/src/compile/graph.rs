//! The guest graph: ids are unique, `dependencies` name defined guests and hold no cycle.
//!
//! Layer 7, orchestration: imports layers 0–3.

use super::phoenix::GuestConfig;
use super::reader::{Diag, join};
use super::types::Problem;
use phoenix_proto::model::GuestId;
use std::collections::BTreeMap;

pub(crate) fn check_ids_and_dependencies(guests: &[GuestConfig], d: &mut Diag) {
    let mut seen: BTreeMap<GuestId, &GuestConfig> = BTreeMap::new();
    for g in guests {
        if seen.insert(g.id, g).is_some() {
            d.error(&g.file, &g.path, Problem::DuplicateGuest(g.id));
        }
    }
    for g in guests {
        for dep in &g.facts.dependencies {
            if !seen.contains_key(dep) {
                d.error(
                    &g.file,
                    &join(&g.path, "dependencies"),
                    Problem::UnknownGuest(*dep),
                );
            }
        }
        if let Some(c) = g.facts.clone_from
            && !seen.contains_key(&c)
        {
            d.warn(
                &g.file,
                &g.path,
                format!("clones guest {c}, which no config defines"),
            );
        }
    }
    let nodes = seen
        .iter()
        .map(|(id, g)| (*id, g.facts.dependencies.iter().copied()));
    if let Err(cycle) = phoenix_proto::graph::sort(nodes)
        && let Some(g) = cycle.0.first().and_then(|id| seen.get(id))
    {
        d.error(
            &g.file,
            &join(&g.path, "dependencies"),
            Problem::DependencyCycle(cycle.to_string()),
        );
    }
}
