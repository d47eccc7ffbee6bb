//! The one topological sort: resources of a guest, guests of a host, services of a
//! Compose project are all ordered "dependencies first" by this function, so every
//! ordering Phoenix shows or applies breaks ties and reports cycles the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A dependency cycle, as the path `a -> b -> … -> a` (each node depends on the next).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle<K>(pub Vec<K>);

impl<K: fmt::Display> fmt::Display for Cycle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, k) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" -> ")?;
            }
            k.fmt(f)?;
        }
        Ok(())
    }
}

/// Orders `nodes` (each a key and the keys it depends on) so that every node comes after
/// its dependencies. Among the nodes ready at the same time the smallest key comes first,
/// so the order is stable across runs and hosts (Kahn's algorithm with an ordered ready
/// set). A dependency on a key that is not a node is ignored: callers report unknown
/// names themselves, with their own wording. A key given twice merges its dependencies.
///
/// On a cycle, returns one cycle's path starting at its smallest key.
pub fn sort<K, D>(nodes: impl IntoIterator<Item = (K, D)>) -> Result<Vec<K>, Cycle<K>>
where
    K: Ord + Clone,
    D: IntoIterator<Item = K>,
{
    let mut deps: BTreeMap<K, BTreeSet<K>> = BTreeMap::new();
    for (k, ds) in nodes {
        deps.entry(k).or_default().extend(ds);
    }
    let known: BTreeSet<K> = deps.keys().cloned().collect();
    for ds in deps.values_mut() {
        ds.retain(|d| known.contains(d));
    }
    let mut dependents: BTreeMap<&K, Vec<&K>> = BTreeMap::new();
    let mut waiting: BTreeMap<&K, usize> = BTreeMap::new();
    for (k, ds) in &deps {
        waiting.insert(k, ds.len());
        for d in ds {
            dependents.entry(d).or_default().push(k);
        }
    }
    let mut ready: BTreeSet<&K> = waiting
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(k, _)| *k)
        .collect();
    let mut out = Vec::with_capacity(deps.len());
    while let Some(k) = ready.pop_first() {
        out.push(k.clone());
        waiting.remove(k);
        for d in dependents.get(k).into_iter().flatten() {
            if let Some(n) = waiting.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    ready.insert(*d);
                }
            }
        }
    }
    match waiting.keys().next() {
        None => Ok(out),
        Some(start) => Err(cycle_from(start, &deps, &waiting)),
    }
}

/// Walks from `start` along dependencies that are still waiting (every waiting node has
/// one) until a node repeats; the walk from that node's first visit is a cycle.
fn cycle_from<K: Ord + Clone>(
    start: &K,
    deps: &BTreeMap<K, BTreeSet<K>>,
    waiting: &BTreeMap<&K, usize>,
) -> Cycle<K> {
    let mut path: Vec<&K> = vec![start];
    loop {
        let last = path[path.len() - 1];
        let next = deps[last].iter().find(|d| waiting.contains_key(d));
        let Some(next) = next else {
            // Unreachable: a waiting node has a waiting dependency. Report what we have.
            return Cycle(path.into_iter().cloned().collect());
        };
        if let Some(i) = path.iter().position(|p| *p == next) {
            // Rotated to start at its smallest key, so a cycle always reads the same way.
            let mut cycle: Vec<K> = path[i..].iter().map(|k| (*k).clone()).collect();
            let min = (0..cycle.len()).min_by_key(|&j| &cycle[j]).unwrap_or(0);
            cycle.rotate_left(min);
            cycle.push(cycle[0].clone());
            return Cycle(cycle);
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(nodes: &[(u32, &[u32])]) -> Result<Vec<u32>, Cycle<u32>> {
        sort(nodes.iter().map(|(k, d)| (*k, d.to_vec())))
    }

    #[test]
    fn dependencies_first_then_smallest_key() {
        assert_eq!(
            order(&[(1, &[3]), (2, &[]), (3, &[]), (4, &[])]),
            Ok(vec![2, 3, 1, 4])
        );
        assert_eq!(order(&[(3, &[]), (1, &[2]), (2, &[3])]), Ok(vec![3, 2, 1]));
    }

    #[test]
    fn unknown_dependencies_are_ignored() {
        assert_eq!(order(&[(2, &[9]), (1, &[2])]), Ok(vec![2, 1]));
    }

    #[test]
    fn a_cycle_is_named_by_its_path() {
        // 1 is ready; 2 -> 3 -> 4 -> 2 is the cycle; 5 only waits behind it.
        let e = order(&[(1, &[]), (5, &[4]), (4, &[2]), (3, &[4]), (2, &[3])]).expect_err("cycle");
        assert_eq!(e, Cycle(vec![2, 3, 4, 2]));
        assert_eq!(e.to_string(), "2 -> 3 -> 4 -> 2");
        assert_eq!(order(&[(7, &[7])]), Err(Cycle(vec![7, 7])));
    }
}
