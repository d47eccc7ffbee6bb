//! Phoenix's own normalized format: `{"guests": {"<id>": GuestSpec}}`, strict (every
//! type denies unknown fields). This is the format `schema_json` describes.
//!
//! Layer 7, orchestration (Phoenix's own format, beside `build`): imports layers 0–2.

use super::reader::{Diag, Node, read_json};
use super::secrets;
use super::types::{Compiled, CompiledGuest, Declared, GuestFacts, GuestKind, Problem};
use phoenix_proto::model::{GuestId, GuestSpec};
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
            let spec = match serde_json::from_value::<GuestSpec>(n.value.clone()) {
                Ok(s) => s,
                Err(e) => {
                    n.error(
                        d,
                        Problem::Expected {
                            expected: "a guest spec {\"resources\": [...]}".into(),
                            found: e.to_string(),
                        },
                    );
                    continue;
                }
            };
            secrets::check_leak(&spec, id, n.file, &n.path, d);
            if let Err(errors) = spec.validate() {
                for e in errors {
                    n.error(d, Problem::Model(e.to_string()));
                }
                continue;
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
