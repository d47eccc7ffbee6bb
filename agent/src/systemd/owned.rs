//! Which unit files are Phoenix's, and what happens to the ones it finds or leaves behind.
//!
//! Every file this module writes starts with Phoenix's header, so a file without it was
//! written by someone else: it is backed up before it is replaced (a takeover). The ledger
//! records each file written and whether Phoenix created it; a service no longer declared
//! is stopped, disabled and its files removed only when Phoenix created them and they
//! still carry the header. A unit Phoenix took over stays installed and running.

use super::{Managed, ServiceConverger, ServiceError, ServiceManager, unit};
use crate::files::ledger::{LedgerError, Owned};
use crate::reconcile::{Leftover, Prune, ResourceError};
use crate::{hostfs, hostio};
use phoenix_proto::model::{GuestSpec, Resource};
use std::path::{Path, PathBuf};

fn ledger_err(unit: &str) -> impl FnOnce(LedgerError) -> ServiceError + '_ {
    move |source| ServiceError::Ledger {
        unit: unit.to_owned(),
        source,
    }
}

/// What removing a service Phoenix no longer declares does.
struct Removal {
    /// Phoenix created the unit file itself: stop and disable before removing it.
    unit_file: bool,
    remove: Vec<PathBuf>,
    /// Files left in place, with why.
    keep: Vec<String>,
}

impl<M: ServiceManager> ServiceConverger<M> {
    /// The stale files that exist without Phoenix's header and that Phoenix never wrote.
    pub(super) fn foreign<'a>(&self, stale: &'a [Managed]) -> Vec<&'a std::path::Path> {
        stale
            .iter()
            .filter(|f| self.exists(&f.path) && !self.has_header(&f.path))
            .map(|f| f.path.as_path())
            .collect()
    }

    fn exists(&self, path: &Path) -> bool {
        // A link counts as existing (it is refused later, never followed).
        !matches!(hostio::read_if_exists(self.root_for(path), path), Ok(None))
    }

    /// Records the service's files that already are what is declared (written by this
    /// agent before the ledger existed: they carry the header, so Phoenix created them).
    pub(super) fn adopt(
        &self,
        spec: &phoenix_proto::model::ServiceSpec,
        stale: &[Managed],
    ) -> Result<(), ServiceError> {
        let name = spec.name.as_str();
        let known = self.ledger.unit(name);
        for f in self.render(spec)? {
            if known.contains_key(&f.path) || stale.iter().any(|s| s.path == f.path) {
                continue;
            }
            self.ledger
                .record_unit_file(name, &f.path, Owned::written(&f.content, None, false, None))
                .map_err(ledger_err(name))?;
        }
        Ok(())
    }

    /// Writes one of the service's files, keeping a copy of a file Phoenix did not write.
    pub(super) fn write_owned(&self, name: &str, f: &Managed) -> Result<String, ServiceError> {
        let file_err = |action, source| ServiceError::File {
            unit: name.to_owned(),
            action,
            path: f.path.display().to_string(),
            source,
        };
        let root = self.root_for(&f.path);
        // With its mode and owner: a takeover's backup keeps them.
        let before = hostfs::read_beneath(root, &f.path).map_err(|e| file_err("read", e.into()))?;
        let owned = self.ledger.unit(name).remove(&f.path);
        let backup = match &before {
            Some(old) if !old.bytes.starts_with(unit::HEADER.as_bytes()) && owned.is_none() => self
                .ledger
                .back_up(&f.path, old)
                .map_err(ledger_err(name))?,
            _ => None,
        };
        hostio::write_atomic(root, &f.path, &f.content, f.mode)
            .map_err(|e| file_err("write", e))?;
        let record = Owned::written(&f.content, owned.as_ref(), before.is_some(), backup.clone());
        self.ledger
            .record_unit_file(name, &f.path, record)
            .map_err(ledger_err(name))?;
        Ok(match backup {
            Some(b) => format!(
                "replaced {} (not managed by Phoenix; backup {})",
                f.path.display(),
                b.display()
            ),
            None => format!("wrote {}", f.path.display()),
        })
    }

    fn removal(&self, name: &str) -> Removal {
        let unit_path = self.unit_path(name);
        let mut r = Removal {
            unit_file: false,
            remove: Vec::new(),
            keep: Vec::new(),
        };
        for (path, owned) in self.ledger.unit(name) {
            if !self.exists(&path) {
                continue;
            }
            if !owned.created {
                r.keep.push(match &owned.backup {
                    Some(b) => format!(
                        "{} (existed before Phoenix; the original is in {})",
                        path.display(),
                        b.display()
                    ),
                    None => format!("{} (existed before Phoenix)", path.display()),
                });
            } else if !self.has_header(&path) {
                r.keep.push(format!(
                    "{} (no longer carries Phoenix's header)",
                    path.display()
                ));
            } else {
                r.unit_file |= path == unit_path;
                r.remove.push(path);
            }
        }
        r
    }
}

#[async_trait::async_trait]
impl<M: ServiceManager> Prune for ServiceConverger<M> {
    fn kind(&self) -> &'static str {
        "service"
    }

    async fn leftovers(&self, spec: &GuestSpec) -> Result<Vec<Leftover>, ResourceError> {
        let mut out = Vec::new();
        for name in self.ledger.units().into_keys() {
            let declared = spec
                .resources()
                .iter()
                .any(|r| matches!(r, Resource::Service(s) if s.name.as_str() == name));
            if declared {
                continue;
            }
            let r = self.removal(&name);
            let mut lines = Vec::new();
            if r.unit_file {
                lines.push(format!(
                    "- stop, disable and remove {name} (created by Phoenix, no longer declared)"
                ));
            }
            lines.extend(r.remove.iter().map(|p| format!("- remove {}", p.display())));
            lines.extend(
                r.keep
                    .iter()
                    .map(|k| format!("keep {k}: no longer managed")),
            );
            if lines.is_empty() {
                lines.push(format!("forget {name} (its files are gone)"));
            }
            out.push(Leftover {
                resource: format!("service:{name}"),
                diff: lines.join("\n"),
                key: name,
            });
        }
        Ok(out)
    }

    async fn remove(&self, leftover: &Leftover) -> Result<String, ResourceError> {
        let name = leftover.key.as_str();
        let r = self.removal(name);
        let mut done = if r.unit_file {
            self.stop_and_disable(name).await?
        } else {
            Vec::new()
        };
        for p in &r.remove {
            hostio::remove(self.root_for(p), p).map_err(|source| ServiceError::File {
                unit: name.to_owned(),
                action: "remove",
                path: p.display().to_string(),
                source,
            })?;
            done.push(format!("removed {}", p.display()));
        }
        // Only succeeds when empty: drop-ins someone else put there stay.
        let _ = std::fs::remove_dir(self.unit_dir.join(format!("{name}.d")));
        if !r.remove.is_empty() {
            self.mgr.daemon_reload().await?;
            done.push("daemon-reload".to_owned());
        }
        done.extend(r.keep.iter().map(|k| format!("left {k} in place")));
        self.ledger.forget_unit(name).map_err(ledger_err(name))?;
        if done.is_empty() {
            done.push(format!("forgot {name} (its files are gone)"));
        }
        Ok(done.join(", "))
    }
}
