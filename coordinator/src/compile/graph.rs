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
    // Cycle check: depth-first over `dependencies`.
    fn visit(
        id: GuestId,
        seen: &BTreeMap<GuestId, &GuestConfig>,
        state: &mut BTreeMap<GuestId, bool>,
        stack: &mut Vec<GuestId>,
    ) -> Option<Vec<GuestId>> {
        match state.get(&id) {
            Some(true) => return None,
            Some(false) => {
                let start = stack.iter().position(|s| *s == id).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(id);
                return Some(cycle);
            }
            None => {}
        }
        state.insert(id, false);
        stack.push(id);
        if let Some(g) = seen.get(&id) {
            for dep in &g.facts.dependencies {
                if let Some(c) = visit(*dep, seen, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state.insert(id, true);
        None
    }
    let mut state = BTreeMap::new();
    for id in seen.keys() {
        if let Some(cycle) = visit(*id, &seen, &mut state, &mut Vec::new()) {
            let g = seen[&cycle[0]];
            let text: Vec<String> = cycle.iter().map(|c| c.to_string()).collect();
            d.error(
                &g.file,
                &join(&g.path, "dependencies"),
                Problem::DependencyCycle(text.join(" -> ")),
            );
            break;
        }
    }
}
