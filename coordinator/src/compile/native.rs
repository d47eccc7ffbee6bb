//! Phoenix's own normalized format: `{"guests": {"<id>": GuestSpec}}`, strict (every
//! type denies unknown fields). This is the format `schema_json` describes.
//!
//! Layer 7, orchestration (Phoenix's own format, beside `build`): imports layers 0–2.

use super::reader::{Diag, Node, read_json};
use super::secrets;
use super::types::{Compiled, CompiledGuest, GuestFacts, GuestKind, Problem};
use phoenix_proto::model::Declared;
use phoenix_proto::model::{GuestId, GuestSpec, ModelError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A file of the native format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NativeConfig {
    /// Desired state per guest id (LXC CTID or VM vmid).
    pub guests: BTreeMap<GuestId, GuestSpec>,
}

pub(crate) fn load(files: &[PathBuf], d: &mut Diag) -> Compiled {
    let mut out = Compiled::default();
    let mut origin: BTreeMap<GuestId, PathBuf> = BTreeMap::new();
    for file in files {
        let Some(value) = read_json(file, d) else {
            continue;
        };
        let root = Node::root(file, &value);
        secrets::scan(&root, d);
        let Some(guests) = root.get("guests") else {
            root.error(
                d,
                Problem::Missing("\"guests\": an object keyed by guest id".into()),
            );
            continue;
        };
        for (key, n) in root
            .entries(d, "an object")
            .iter()
            .filter(|(k, _)| k != "guests")
        {
            n.error(
                d,
                Problem::Expected {
                    expected: "only the key \"guests\" at the top level".into(),
                    found: format!("{key:?}"),
                },
            );
        }
        for (key, n) in guests.entries(d, "an object keyed by guest id") {
            let Some(id) = n.key_guest_id(&key, d, "a guest id") else {
                continue;
            };
            // `from_value` keeps every model error apart; a plain serde load would join them.
            let spec = match GuestSpec::from_value(n.value.clone()) {
                Ok(s) => s,
                Err(errors) => {
                    for e in errors {
                        match e {
                            ModelError::Json(found) => n.error(
                                d,
                                Problem::Expected {
                                    expected: "a guest spec {\"resources\": [...]}".into(),
                                    found,
                                },
                            ),
                            e => n.error(d, Problem::Model(e.to_string())),
                        }
                    }
                    continue;
                }
            };
            secrets::check_leak(&spec, id, n.file, &n.path, d);
            // What the Compose parser substituted (unset variables…), as for Phoenix configs.
            for r in spec.resources() {
                if let phoenix_proto::model::Resource::Stack(st) = r {
                    for w in st.project.warnings() {
                        n.warn(d, format!("stack {}: {w}", st.name));
                    }
                }
            }
            if let Some(first) = origin.insert(id, file.clone()) {
                n.error(
                    d,
                    Problem::Conflict(format!("guest {id} is also defined in {}", first.display())),
                );
                continue;
            }
            out.guests.insert(
                id,
                CompiledGuest {
                    name: format!("guest-{id}"),
                    kind: GuestKind::Unspecified,
                    spec,
                    declared: Declared::default(),
                    facts: GuestFacts::default(),
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    // In tests a panic is the failure report.
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    fn validate(dir: &Path, stack: serde_json::Value) -> Result<(), String> {
        let file = dir.join("guests.json");
        let doc = serde_json::json!({"guests": {"101": {"resources": [stack]}}});
        std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
        crate::compile::load(&file)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// `phoenix validate` on a native file runs the model's Compose checks, so a native
    /// stack with an unknown or unsupported key fails there, not first on the agent.
    #[test]
    fn native_stacks_meet_the_compose_parser_at_validate() {
        let dir = tempfile::tempdir().unwrap();
        let ok = serde_json::json!({"kind": "stack", "name": "web", "project": {"services": {"web": {"image": "nginx:1"}}}});
        validate(dir.path(), ok).unwrap();
        for (stack, why) in [
            (
                serde_json::json!({"kind": "stack", "name": "web", "project": {"services": {"web": {"image": "nginx:1", "wrongField": 1}}}}),
                "wrongField",
            ),
            (
                serde_json::json!({"kind": "stack", "name": "web", "compose": "services:\n  web:\n    image: nginx:1\n    wrongField: 1\n"}),
                "wrongField",
            ),
            (
                serde_json::json!({"kind": "stack", "name": "web", "compose": "services:\n  web:\n    image: nginx:1\n    privileged: true\n"}),
                "privileged",
            ),
            (
                serde_json::json!({"kind": "stack", "name": "web", "project": {"services": {"web": {"image": "nginx:1", "network_mode": "container:x"}}}}),
                "network_mode",
            ),
            (
                serde_json::json!({"kind": "stack", "name": "web", "surprise": 1, "project": {"services": {"web": {"image": "nginx:1"}}}}),
                "surprise",
            ),
        ] {
            let e = validate(dir.path(), stack.clone()).unwrap_err();
            assert!(e.contains(why), "{stack}: {e}");
        }
    }
}
