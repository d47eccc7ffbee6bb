//! `vllm_engine_config` (and the legacy flat `vllm_*` keys) → the argv of
//! `python -m vllm.entrypoints.openai.api_server`, as `phoenix_hypervisor_lxc_vllm.sh`
//! builds it: every key of every section becomes `--key value`, `true` a bare `--key`,
//! `false`/`null` are dropped; camelCase keys become kebab-case, snake_case stays.
//!
//! Layer 3, Phoenix config readers: imports layers 0–2.

use super::reader::{Diag, Node};
use super::secrets;
use super::types::Problem;
use phoenix_proto::model::SecretRef;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct VllmArgs {
    pub args: Vec<String>,
    /// Secrets vLLM reads from its environment (`api_key` → `VLLM_API_KEY`).
    pub secret_environment: BTreeMap<String, SecretRef>,
}

fn flag(key: &str) -> String {
    let mut out = String::from("--");
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn key_ok(key: &str) -> bool {
    !key.is_empty()
        && key.as_bytes()[0].is_ascii_alphabetic()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Adds one `key: value`; returns false (after recording the error) if it cannot be a flag.
fn push(out: &mut VllmArgs, key: &str, n: &Node, d: &mut Diag) {
    if !key_ok(key) {
        n.error(
            d,
            Problem::Expected {
                expected: "an engine argument name (letters, digits, '_', '-')".into(),
                found: format!("{key:?}"),
            },
        );
        return;
    }
    if key == "api_key" || key == "api-key" || key == "apiKey" {
        // vLLM reads VLLM_API_KEY, so the key never appears in the unit's command line.
        if let Some(r) = secrets::reference(n, d) {
            out.secret_environment.insert("VLLM_API_KEY".into(), r);
        }
        return;
    }
    if secrets::looks_secret_key(key) {
        n.warn(
            d,
            "literal secret-looking engine argument dropped (value redacted); vLLM reads secrets from the environment",
        );
        return;
    }
    match n.value {
        Value::Bool(true) => out.args.push(flag(key)),
        Value::Bool(false) | Value::Null => {}
        Value::String(s) if !s.is_empty() && !s.chars().any(char::is_control) => {
            out.args.push(flag(key));
            out.args.push(s.clone());
        }
        Value::Number(x) => {
            out.args.push(flag(key));
            out.args.push(x.to_string());
        }
        // Lists become repeated values after one flag (argparse nargs='+').
        Value::Array(items) if items.iter().all(|i| i.is_string() || i.is_number()) => {
            out.args.push(flag(key));
            for i in items {
                out.args.push(match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            }
        }
        // vLLM takes JSON for dict-valued arguments (e.g. --override-generation-config).
        Value::Object(_) => {
            out.args.push(flag(key));
            out.args.push(n.value.to_string());
        }
        _ => n.expected(d, "a string, number, boolean, list or object"),
    }
}

/// `vllm_engine_config{ModelConfig{...}, CacheConfig{...}, ...}`.
pub(crate) fn from_engine_config(n: &Node, d: &mut Diag) -> Option<VllmArgs> {
    let mut out = VllmArgs::default();
    for (_, section) in n.entries(d, "an object of sections such as ModelConfig") {
        for (key, value) in section.entries(d, "an object of engine arguments") {
            check_known(&key, &value, d);
            push(&mut out, &key, &value, d);
        }
    }
    if !n.get("ModelConfig").is_some_and(|m| m.has("model")) {
        n.error(
            d,
            Problem::Missing("ModelConfig.model: the model to serve".into()),
        );
    }
    Some(out)
}

/// Values with a known meaning are checked: a wrong one is a mistake, not a variant.
fn check_known(key: &str, n: &Node, d: &mut Diag) {
    match key {
        "gpu_memory_utilization" if !n.value.as_f64().is_some_and(|v| v > 0.0 && v <= 1.0) => {
            n.expected(d, "a fraction of GPU memory, greater than 0 and at most 1");
        }
        "port" => {
            n.uint(d, 1..=65535);
        }
        "tensor_parallel_size" | "max_model_len" | "pipeline_parallel_size" => {
            n.uint(d, 1..=u32::MAX as u64);
        }
        "model" | "served_model_name" => {
            n.text(d, "a model name");
        }
        _ => {}
    }
}

/// Legacy flat keys (`vllm_model`, `vllm_args[]`, `vllm_parameters{}`, ...).
pub(crate) fn from_legacy_keys(g: &Node, d: &mut Diag) -> Option<VllmArgs> {
    const FLAT: [(&str, &str); 8] = [
        ("vllm_model", "model"),
        ("vllm_served_model_name", "served_model_name"),
        ("vllm_quantization", "quantization"),
        ("vllm_max_model_len", "max_model_len"),
        ("vllm_gpu_memory_utilization", "gpu_memory_utilization"),
        ("vllm_tensor_parallel_size", "tensor_parallel_size"),
        ("vllm_port", "port"),
        ("vllm_trust_remote_code", "trust_remote_code"),
    ];
    if !FLAT.iter().any(|(k, _)| g.has(k)) && !g.has("vllm_args") && !g.has("vllm_parameters") {
        return None;
    }
    let mut out = VllmArgs::default();
    for (old, key) in FLAT {
        if let Some(n) = g.get(old) {
            check_known(key, &n, d);
            push(&mut out, key, &n, d);
        }
    }
    if let Some(m) = g.get("vllm_model_type")
        && m.value.as_str() == Some("embedding")
    {
        out.args.push("--task".into());
        out.args.push("embed".into());
    }
    if let Some(p) = g.get("vllm_parameters") {
        for (key, value) in p.entries(d, "an object of engine arguments") {
            check_known(&key, &value, d);
            push(&mut out, &key, &value, d);
        }
    }
    if let Some(a) = g.get("vllm_args") {
        for item in a.items(d, "an array of command-line arguments") {
            if let Some(s) = item.text(d, "a command-line argument") {
                // Old files write "--flag value" as one string.
                out.args.extend(s.split_whitespace().map(str::to_string));
            }
        }
    }
    if !g.has("vllm_model") {
        g.error(d, Problem::Missing("vllm_model: the model to serve".into()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    #[test]
    fn flattens_every_section_true_is_bare_false_and_null_dropped() {
        let v = json!({
            "ModelConfig": {"model": "m/x", "trust_remote_code": true, "enforce_eager": false, "dtype": null},
            "CacheConfig": {"gpu_memory_utilization": 0.50},
            "ServerConfig": {"port": 8000, "servedModelName": "x"}
        });
        let mut d = Diag::default();
        let a = from_engine_config(&Node::root(Path::new("f"), &v), &mut d).expect("args");
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        assert_eq!(
            a.args,
            [
                "--gpu_memory_utilization",
                "0.5",
                "--model",
                "m/x",
                "--trust_remote_code",
                "--port",
                "8000",
                "--served-model-name",
                "x"
            ]
        );
    }

    #[test]
    fn api_key_becomes_an_environment_reference() {
        let v =
            json!({"ModelConfig": {"model": "m"}, "ServerConfig": {"api_key": {"env": "MY_KEY"}}});
        let mut d = Diag::default();
        let a = from_engine_config(&Node::root(Path::new("f"), &v), &mut d).expect("args");
        assert!(!a.args.iter().any(|x| x.contains("api")));
        assert_eq!(
            a.secret_environment.get("VLLM_API_KEY"),
            Some(&SecretRef::Env("MY_KEY".into()))
        );
    }
}
