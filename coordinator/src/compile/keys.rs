//! The keys the old scripts read, per object, so that a misspelt key (`memroy_mb`) is a
//! warning naming the likely key instead of a silently ignored line. Unknown keys that are not
//! near any known one stay accepted without a word: newer and older files carry many.
//!
//! Layer 2: imports only `reader`.

use super::reader::{Diag, Node};

/// Every key of an LXC guest seen in any version of `phoenix_lxc_configs.json`.
pub(crate) const LXC: &[&str] = &[
    "name",
    "start_at_boot",
    "boot_order",
    "boot_delay",
    "dependencies",
    "clone_from_ctid",
    "template",
    "template_file",
    "is_template",
    "template_snapshot_name",
    "enable_lifecycle_snapshots",
    "trigger_sync_on_completion",
    "cores",
    "memory_mb",
    "swap_mb",
    "storage_pool",
    "storage_size_gb",
    "network_config",
    "secondary_network_config",
    "mac_address",
    "public_interface",
    "ports",
    "firewall",
    "unprivileged",
    "apparmor_profile",
    "apparmor_manages_nesting",
    "lxc_options",
    "pct_options",
    "id_maps",
    "gpu_assignment",
    "mount_points",
    "zfs_volumes",
    "volumes",
    "features",
    "application_script",
    "portainer_role",
    "traefik_service",
    "bootstrap_ca_url",
    "vllm_engine_config",
    "vllm_model",
    "vllm_served_model_name",
    "vllm_quantization",
    "vllm_max_model_len",
    "vllm_gpu_memory_utilization",
    "vllm_tensor_parallel_size",
    "vllm_port",
    "vllm_trust_remote_code",
    "vllm_model_type",
    "vllm_parameters",
    "vllm_args",
    "health_check",
    "health_checks",
    "tests",
    "integration_tests",
    "run_integration_tests",
    "phoenix_resources",
];

/// Every key of a VM (and of `vm_defaults`) seen in any version of `phoenix_vm_configs.json`.
pub(crate) const VM: &[&str] = &[
    "vmid",
    "name",
    "is_template",
    "template",
    "template_image",
    "template_snapshot_name",
    "clone_from_vmid",
    "cores",
    "memory_mb",
    "disk_size_gb",
    "storage_pool",
    "network_bridge",
    "start_at_boot",
    "boot_order",
    "boot_delay",
    "features",
    "portainer_role",
    "portainer_environment_name",
    "portainer_agent_hostname",
    "swarm_role",
    "node_labels",
    "dependencies",
    "traefik_service",
    "network_config",
    "user_config",
    "volumes",
    "docker_stacks",
    "dns_records",
    "firewall",
    "trigger_sync_on_completion",
    "snapshots",
    "count",
    "qm_options",
    "iptables_rules",
    "phoenix_resources",
];

/// `network_config` and `secondary_network_config`.
pub(crate) const NETWORK: &[&str] = &[
    "name",
    "bridge",
    "ip",
    "gw",
    "nameservers",
    "nameserver",
    "type",
    "parent",
    "hwaddr",
];

/// Warns on every key of `n` that is not in `known` but is a near miss of one of them.
pub(crate) fn check(n: &Node, known: &[&str], d: &mut Diag) {
    let Some(map) = n.value.as_object() else {
        return;
    };
    for key in map.keys() {
        if known.contains(&key.as_str()) {
            continue;
        }
        if let Some(likely) = likely(key, known) {
            d.warn(
                n.file,
                &super::reader::join(&n.path, key),
                format!("unknown key {key:?} is ignored; did you mean {likely:?}?"),
            );
        }
    }
}

/// The known key closest to `key` within an edit distance that scales with its length.
fn likely<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let limit = match key.chars().count() {
        0..=3 => 0,
        4..=7 => 1,
        _ => 2,
    };
    known
        .iter()
        .map(|k| (distance(key, k), *k))
        .filter(|(dist, _)| *dist > 0 && *dist <= limit)
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, k)| k)
}

/// Optimal string alignment distance: Levenshtein plus adjacent transpositions, the
/// commonest typo (`memroy`).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    #[test]
    fn near_misses_name_the_likely_key_and_far_keys_stay_silent() {
        let v = json!({"memroy_mb": 1, "corse": 2, "cores": 4, "my_own_note": "x", "gw": 1});
        let n = Node::root(Path::new("lxc.json"), &v);
        let mut d = Diag::default();
        check(&n, LXC, &mut d);
        let got: Vec<String> = d.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].contains("\"corse\"") && got[0].contains("\"cores\""),
            "{got:?}"
        );
        assert!(
            got[1].contains("\"memroy_mb\"") && got[1].contains("\"memory_mb\""),
            "{got:?}"
        );
        assert!(d.errors.is_empty());
    }

    #[test]
    fn distance_counts_a_transposition_as_one_edit() {
        assert_eq!(distance("memroy_mb", "memory_mb"), 1);
        assert_eq!(distance("cores", "cores"), 0);
        assert_eq!(distance("abc", "xyz"), 3);
    }
}
