//! `apt_source` resources: a deb822 `.sources` file whose `Signed-By` names a keyring that
//! holds only this source's key, so the key vouches for this repository and nothing else.

use super::{PackageError, PackageManager};
use crate::hostio;
use crate::reconcile::{Check, Converge, PassContext, ResourceError};
use phoenix_proto::model::{AptSourceSpec, KeySource};
use std::path::{Path, PathBuf};

/// A file whose content differs from what it must be.
struct Stale {
    path: PathBuf,
    want: String,
    old: Option<Vec<u8>>,
}

const ARMOR_BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";

/// Writes apt sources and keyrings under `root` (`/` on a guest) and refreshes the index of
/// a source whose files changed.
pub struct AptSourceConverger<M> {
    mgr: M,
    root: PathBuf,
}

impl<M: PackageManager> AptSourceConverger<M> {
    pub fn new(mgr: M, root: impl Into<PathBuf>) -> Self {
        AptSourceConverger {
            mgr,
            root: root.into(),
        }
    }

    /// Both files are resolved beneath this directory; links below it are refused.
    fn apt_dir(&self) -> PathBuf {
        self.root.join("etc/apt")
    }

    fn sources_path(&self, name: &str) -> PathBuf {
        self.root
            .join("etc/apt/sources.list.d")
            .join(format!("{name}.sources"))
    }

    fn key_path(&self, name: &str) -> PathBuf {
        self.root
            .join("etc/apt/keyrings")
            .join(format!("{name}.asc"))
    }

    fn key_text(&self, spec: &AptSourceSpec) -> Result<String, PackageError> {
        let text = match &spec.signing_key {
            KeySource::Armored(k) => k.clone(),
            KeySource::Secret(r) => {
                hostio::read_secret(r).map_err(|source| PackageError::File {
                    name: spec.name.to_string(),
                    action: "read signing key",
                    path: format!("{r:?}"),
                    source,
                })?
            }
        };
        if !text.trim_start().starts_with(ARMOR_BEGIN) {
            return Err(PackageError::KeyFormat {
                name: spec.name.to_string(),
            });
        }
        let mut text = text.trim().to_owned();
        text.push('\n');
        Ok(text)
    }

    /// Both files as they must be on disk: (path, content).
    fn render(&self, spec: &AptSourceSpec) -> Result<[(PathBuf, String); 2], PackageError> {
        let key_path = self.key_path(&spec.name);
        // Signed-By names the path apt sees on the guest, whatever `root` is here.
        let guest_key = Path::new("/etc/apt/keyrings").join(format!("{}.asc", spec.name));
        let mut s =
            String::from("# Managed by Phoenix; local changes are overwritten.\nTypes: deb\n");
        s.push_str(&format!("URIs: {}\n", spec.uris.join(" ")));
        s.push_str(&format!("Suites: {}\n", spec.suites.join(" ")));
        if !spec.components.is_empty() {
            s.push_str(&format!("Components: {}\n", spec.components.join(" ")));
        }
        if !spec.architectures.is_empty() {
            s.push_str(&format!(
                "Architectures: {}\n",
                spec.architectures.join(" ")
            ));
        }
        s.push_str(&format!("Signed-By: {}\n", guest_key.display()));
        Ok([
            (key_path, self.key_text(spec)?),
            (self.sources_path(&spec.name), s),
        ])
    }

    fn stale(&self, spec: &AptSourceSpec) -> Result<Vec<Stale>, PackageError> {
        let mut out = Vec::new();
        for (path, want) in self.render(spec)? {
            let have = hostio::read_if_exists(&self.apt_dir(), &path).map_err(|source| {
                PackageError::File {
                    name: spec.name.to_string(),
                    action: "read",
                    path: path.display().to_string(),
                    source,
                }
            })?;
            if have.as_deref() != Some(want.as_bytes()) {
                out.push(Stale {
                    path,
                    want,
                    old: have,
                });
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl<M: PackageManager> Converge<AptSourceSpec> for AptSourceConverger<M> {
    fn validate(&self, spec: &AptSourceSpec) -> Result<(), ResourceError> {
        if let KeySource::Armored(k) = &spec.signing_key
            && !k.trim_start().starts_with(ARMOR_BEGIN)
        {
            return Err(PackageError::KeyFormat {
                name: spec.name.to_string(),
            }
            .into());
        }
        Ok(())
    }

    async fn check(&self, spec: &AptSourceSpec, _cx: &PassContext) -> Result<Check, ResourceError> {
        let stale = self.stale(spec)?;
        if stale.is_empty() {
            return Ok(Check::InSync);
        }
        let files: Vec<String> = stale.iter().map(|s| s.path.display().to_string()).collect();
        Ok(Check::Drift {
            diff: format!("write {} and refresh its index", files.join(", ")),
        })
    }

    async fn apply(
        &self,
        spec: &AptSourceSpec,
        _cx: &PassContext,
    ) -> Result<String, ResourceError> {
        let stale = self.stale(spec)?;
        for Stale { path, want, .. } in &stale {
            hostio::write_atomic(&self.apt_dir(), path, want.as_bytes(), 0o644).map_err(
                |source| PackageError::File {
                    name: spec.name.to_string(),
                    action: "write",
                    path: path.display().to_string(),
                    source,
                },
            )?;
        }
        let sources = self.sources_path(&spec.name);
        if let Err(e) = self.mgr.update_source(&sources).await {
            // Put the old files back, so the next pass sees drift and retries the refresh
            // instead of finding the files in sync and an index that never came.
            for Stale { path, old, .. } in &stale {
                let _ = match old {
                    Some(b) => hostio::write_atomic(&self.apt_dir(), path, b, 0o644),
                    None => hostio::remove(&self.apt_dir(), path),
                };
            }
            return Err(e.into());
        }
        Ok(format!(
            "wrote {} and refreshed its index",
            sources.display()
        ))
    }
}
