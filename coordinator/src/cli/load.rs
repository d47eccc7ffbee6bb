//! Reads desired states in Phoenix's own format: `{"guests": {"101": <GuestSpec>}}`,
//! from one file or every `*.json` file of a directory.

use phoenix_proto::model::{GuestId, GuestSpec};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: guest {guest} is also defined in {other}")]
    Duplicate {
        path: PathBuf,
        guest: GuestId,
        other: PathBuf,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeFile {
    guests: BTreeMap<String, serde_json::Value>,
}

fn files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let read = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read)? {
        let p = entry.map_err(read)?.path();
        if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Loads every guest; collects all errors of all files before failing.
pub fn load(path: &Path) -> Result<BTreeMap<GuestId, GuestSpec>, Vec<LoadError>> {
    let mut out: BTreeMap<GuestId, (GuestSpec, PathBuf)> = BTreeMap::new();
    let mut errors = Vec::new();
    let list = match files(path) {
        Ok(l) => l,
        Err(e) => return Err(vec![e]),
    };
    for file in list {
        let text = match std::fs::read(&file) {
            Ok(t) => t,
            Err(source) => {
                errors.push(LoadError::Read { path: file, source });
                continue;
            }
        };
        let parsed: NativeFile = match serde_json::from_slice(&text) {
            Ok(p) => p,
            Err(e) => {
                errors.push(LoadError::Parse {
                    path: file,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        for (key, value) in parsed.guests {
            let guest: GuestId = match key.parse() {
                Ok(g) => g,
                Err(e) => {
                    errors.push(LoadError::Parse {
                        path: file.clone(),
                        reason: format!("guests.{key:?}: {e}"),
                    });
                    continue;
                }
            };
            let bytes = serde_json::to_vec(&value).unwrap_or_default();
            match GuestSpec::from_json(&bytes) {
                Ok(spec) => {
                    if let Some((_, other)) = out.get(&guest) {
                        errors.push(LoadError::Duplicate {
                            path: file.clone(),
                            guest,
                            other: other.clone(),
                        });
                    } else {
                        out.insert(guest, (spec, file.clone()));
                    }
                }
                Err(errs) => errors.extend(errs.into_iter().map(|e| LoadError::Parse {
                    path: file.clone(),
                    reason: format!("guests.\"{key}\": {e}"),
                })),
            }
        }
    }
    if errors.is_empty() {
        Ok(out.into_iter().map(|(g, (s, _))| (g, s)).collect())
    } else {
        Err(errors)
    }
}
