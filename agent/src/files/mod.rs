//! Managed files: whole content, mode, owner, group; written atomically; confined to the
//! roots the agent was started with (a desired state cannot write `/etc/shadow` unless
//! the operator allowed `/etc`). Roots like `/srv` hold directories other accounts can
//! write, so every read, write, chown and chmod goes through [`crate::hostfs`] beneath the
//! file's root: a link planted below the root is refused, never followed.
//!
//! Ownership ([`ledger`]): a file that exists and that Phoenix did not write is shown as
//! "replace existing (not managed by Phoenix)" and copied to the agent's backup directory
//! before it is replaced; a file Phoenix created is removed once no resource declares it.

pub mod ledger;

use crate::hostfs::{self, Existing, FileAttrs, FsError};
use crate::reconcile::{Check, Converge, Leftover, PassContext, Prune, ResourceError};
use ledger::{Ledger, LedgerError, Owned};
use phoenix_proto::model::{Ensure, FileSpec, GuestSpec, Resource};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const DEFAULT_MODE: u32 = 0o644;
/// Content diffs longer than this many lines are summarized.
const DIFF_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("file {path}: outside the allowed roots ({roots})")]
    OutsideRoots { path: String, roots: String },
    #[error("file {path}: unknown {what} {name:?}")]
    UnknownAccount {
        path: String,
        what: &'static str,
        name: String,
    },
    #[error("{action} file {path}: {source}")]
    Fs {
        action: &'static str,
        path: String,
        #[source]
        source: FsError,
    },
    #[error("file {path}: {source}")]
    Ledger {
        path: String,
        #[source]
        source: LedgerError,
    },
}

fn fs<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(FsError) -> FileError + 'a {
    move |source| FileError::Fs {
        action,
        path: path.display().to_string(),
        source,
    }
}

pub struct FileConverger {
    roots: Vec<PathBuf>,
    /// What Phoenix wrote; shared with the cert handler (its files count as written).
    ledger: Arc<Ledger>,
}

impl FileConverger {
    /// With an in-memory ledger (tests); the agent uses [`Self::with_ledger`].
    pub fn new(roots: Vec<PathBuf>) -> Self {
        FileConverger {
            roots,
            ledger: Arc::new(Ledger::memory()),
        }
    }

    pub fn with_ledger(mut self, ledger: Arc<Ledger>) -> Self {
        self.ledger = ledger;
        self
    }

    fn ledger_err(path: &Path) -> impl FnOnce(LedgerError) -> FileError + '_ {
        move |source| FileError::Ledger {
            path: path.display().to_string(),
            source,
        }
    }

    fn root_of(&self, path: &Path) -> Result<&Path, FileError> {
        hostfs::root_of(&self.roots, path).ok_or_else(|| self.outside(path))
    }

    fn outside(&self, path: &Path) -> FileError {
        FileError::OutsideRoots {
            path: path.display().to_string(),
            roots: self
                .roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

pub fn resolve_user(path: &Path, name: &str) -> Result<u32, FileError> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
        .ok_or_else(|| FileError::UnknownAccount {
            path: path.display().to_string(),
            what: "user",
            name: name.to_string(),
        })
}

pub fn resolve_group(path: &Path, name: &str) -> Result<u32, FileError> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| FileError::UnknownAccount {
            path: path.display().to_string(),
            what: "group",
            name: name.to_string(),
        })
}

/// What differs between the file on disk and the spec.
struct Observed {
    exists: bool,
    content_differs: bool,
    /// The file on disk (bytes, mode, owner), when it exists: what a takeover backs up.
    old: Option<Existing>,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
}

fn observe(root: &Path, spec: &FileSpec) -> Result<Observed, FileError> {
    let path = spec.path.as_path();
    Ok(
        match hostfs::read_beneath(root, path).map_err(fs("inspect", path))? {
            None => Observed {
                exists: false,
                content_differs: true,
                old: None,
                mode: None,
                uid: None,
                gid: None,
            },
            Some(have) => Observed {
                exists: true,
                content_differs: have.bytes != spec.content.as_bytes(),
                mode: Some(have.mode),
                uid: Some(have.uid),
                gid: Some(have.gid),
                old: Some(have),
            },
        },
    )
}

/// The plan line of a takeover: the file is there and Phoenix never wrote it.
pub(crate) fn replace_line(path: impl std::fmt::Display) -> String {
    format!(
        "replace existing {path} (not managed by Phoenix; the current file is kept as a backup in the agent's state directory)"
    )
}

/// A short line diff; private files (no read bit for others) get a size summary only,
/// since their content may be secret, and secret-looking lines of the others are shown
/// redacted (plans are printed and stored).
pub(crate) fn content_diff(old: Option<&[u8]>, new: &str, private: bool) -> String {
    let old_len = old.map(|o| o.len()).unwrap_or(0);
    let summary = format!("content: {old_len} → {} bytes", new.len());
    if private {
        return format!("{summary} (private file, content not shown)");
    }
    let (Some(old), true) = (old.and_then(|o| std::str::from_utf8(o).ok()), true) else {
        return summary;
    };
    // Compared raw (a changed secret still shows as changed), printed redacted.
    let old_lines = shown_lines(old);
    let new_lines = shown_lines(new);
    let mut out = vec![summary];
    for (_, l) in old_lines
        .iter()
        .filter(|(raw, _)| !new_lines.iter().any(|(r, _)| r == raw))
        .take(DIFF_LINES)
    {
        out.push(format!("- {l}"));
    }
    for (_, l) in new_lines
        .iter()
        .filter(|(raw, _)| !old_lines.iter().any(|(r, _)| r == raw))
        .take(DIFF_LINES)
    {
        out.push(format!("+ {l}"));
    }
    out.dedup();
    out.join("\n")
}

/// Each line with its printable form: secret-looking values redacted, every line of a PEM
/// private key block shown as one marker.
fn shown_lines(text: &str) -> Vec<(&str, String)> {
    let mut in_key = false;
    text.lines()
        .map(|l| {
            let begins = l.contains("-----BEGIN") && l.contains("PRIVATE KEY-----");
            let shown = if begins || in_key {
                format!("{} (private key)", phoenix_proto::redact::REDACTED)
            } else {
                phoenix_proto::redact::redact_line(l).into_owned()
            };
            if begins {
                in_key = true;
            } else if in_key && l.contains("-----END") {
                in_key = false;
            }
            (l, shown)
        })
        .collect()
}

#[async_trait::async_trait]
impl Converge<FileSpec> for FileConverger {
    fn validate(&self, spec: &FileSpec) -> Result<(), ResourceError> {
        self.root_of(spec.path.as_path())?;
        Ok(())
    }

    async fn check(&self, spec: &FileSpec, cx: &PassContext) -> Result<Check, ResourceError> {
        let path = spec.path.as_path();
        let root = self.root_of(path)?;
        if spec.ensure == Ensure::Absent {
            return Ok(match std::fs::symlink_metadata(path) {
                Ok(_) => Check::Drift {
                    diff: format!("remove {}", spec.path),
                },
                Err(_) => Check::InSync,
            });
        }
        let obs = observe(root, spec)?;
        let owned = self.ledger.file(path);
        let mut diff = Vec::new();
        let want_mode = spec.mode.map(|m| m.bits());
        if obs.exists && obs.content_differs && owned.is_none() {
            diff.push(replace_line(&spec.path));
        }
        if !obs.exists {
            diff.push(format!(
                "create {} ({} bytes)",
                spec.path,
                spec.content.len()
            ));
        } else if obs.content_differs {
            let mode = want_mode.or(obs.mode).unwrap_or(DEFAULT_MODE);
            diff.push(content_diff(
                obs.old.as_ref().map(|o| o.bytes.as_slice()),
                &spec.content,
                mode & 0o004 == 0,
            ));
        }
        if let (Some(want), Some(have)) = (want_mode, obs.mode)
            && want != have
        {
            diff.push(format!("mode: {have:04o} → {want:04o}"));
        }
        if let Some(owner) = &spec.owner {
            let want = resolve_user(path, owner)?;
            if obs.uid.is_some_and(|u| u != want) {
                diff.push(format!("owner: {} → {owner}", obs.uid.unwrap_or_default()));
            }
        }
        if let Some(group) = &spec.group {
            let want = resolve_group(path, group)?;
            if obs.gid.is_some_and(|g| g != want) {
                diff.push(format!("group: {} → {group}", obs.gid.unwrap_or_default()));
            }
        }
        if diff.is_empty() && owned.is_none() && !cx.dry_run {
            // Already what is declared, but not written by this agent (or by one before
            // the ledger): adopted, never removed by Phoenix, and not backed up again.
            self.ledger
                .record_file(
                    path,
                    Owned::written(spec.content.as_bytes(), None, true, None),
                )
                .map_err(Self::ledger_err(path))?;
        }
        Ok(if diff.is_empty() {
            Check::InSync
        } else {
            Check::Drift {
                diff: diff.join("\n"),
            }
        })
    }

    async fn apply(&self, spec: &FileSpec, _cx: &PassContext) -> Result<String, ResourceError> {
        let path = spec.path.as_path();
        let root = self.root_of(path)?;
        if spec.ensure == Ensure::Absent {
            hostfs::remove_beneath(root, path).map_err(fs("remove", path))?;
            self.ledger
                .forget_file(path)
                .map_err(Self::ledger_err(path))?;
            return Ok(format!("removed {}", spec.path));
        }
        let obs = observe(root, spec)?;
        let uid = spec
            .owner
            .as_deref()
            .map(|o| resolve_user(path, o))
            .transpose()?;
        let gid = spec
            .group
            .as_deref()
            .map(|g| resolve_group(path, g))
            .transpose()?;
        let mode = spec
            .mode
            .map(|m| m.bits())
            .or(obs.mode)
            .unwrap_or(DEFAULT_MODE);
        let owned = self.ledger.file(path);
        if obs.content_differs {
            // Taking over a file Phoenix did not write: keep it first, so the user can
            // roll back by hand. No copy, no replacement.
            let backup = match (&obs.old, &owned) {
                (Some(old), None) => self
                    .ledger
                    .back_up(path, old)
                    .map_err(Self::ledger_err(path))?,
                _ => None,
            };
            // Keep the existing owner when the spec does not name one.
            let attrs = FileAttrs {
                mode,
                uid: uid.or(obs.uid),
                gid: gid.or(obs.gid),
            };
            hostfs::write_beneath(root, path, spec.content.as_bytes(), attrs, true)
                .map_err(fs("write", path))?;
            let bytes = spec.content.as_bytes();
            let record = Owned::written(bytes, owned.as_ref(), obs.exists, backup.clone());
            self.ledger
                .record_file(path, record)
                .map_err(Self::ledger_err(path))?;
            let what = match (&backup, obs.exists, &owned) {
                (Some(b), _, _) => format!("replaced (backup {})", b.display()),
                (None, true, None) => "replaced (not managed by Phoenix before)".into(),
                (None, true, Some(_)) => "rewrote".into(),
                (None, false, _) => "created".into(),
            };
            return Ok(format!("{what} {} ({} bytes)", spec.path, bytes.len()));
        }
        hostfs::set_attrs_beneath(root, path, FileAttrs { mode, uid, gid })
            .map_err(fs("fix owner and mode of", path))?;
        if owned.is_none() {
            self.ledger
                .record_file(
                    path,
                    Owned::written(spec.content.as_bytes(), None, true, None),
                )
                .map_err(Self::ledger_err(path))?;
        }
        Ok(format!("fixed metadata of {}", spec.path))
    }
}

/// Every path the spec writes as a file: a managed file or one of a cert's files.
fn declared_paths(spec: &GuestSpec) -> BTreeSet<&Path> {
    let mut out = BTreeSet::new();
    for r in spec.resources() {
        match r {
            Resource::File(f) if f.ensure == Ensure::Present => {
                out.insert(f.path.as_path());
            }
            Resource::Cert(c) => {
                for p in [
                    Some(&c.cert_path),
                    Some(&c.key_path),
                    c.chain_path.as_ref(),
                    c.ca_path.as_ref(),
                ]
                .into_iter()
                .flatten()
                {
                    out.insert(p.as_path());
                }
            }
            _ => {}
        }
    }
    out
}

/// What becomes of a file Phoenix wrote and no longer declares.
enum Fate {
    /// Gone already: only the record goes.
    Gone,
    /// Phoenix created it and it holds what Phoenix wrote: removed.
    Remove,
    /// Left in place and no longer managed; the reason.
    Release(String),
}

impl FileConverger {
    /// Decided from what is on disk now; anything Phoenix cannot inspect safely (outside
    /// the roots it is allowed today, a link planted there) is released, never touched.
    fn fate(&self, path: &Path, owned: &Owned) -> Fate {
        let have = match self.root_of(path) {
            Ok(root) => hostfs::read_beneath(root, path).map_err(fs("inspect", path)),
            Err(e) => Err(e),
        };
        let have = match have {
            Ok(Some(have)) => have,
            Ok(None) => return Fate::Gone,
            Err(e) => return Fate::Release(e.to_string()),
        };
        if !owned.created {
            Fate::Release(match &owned.backup {
                Some(b) => format!(
                    "it existed before Phoenix took it over (the original is in {})",
                    b.display()
                ),
                None => "it existed before Phoenix managed it".into(),
            })
        } else if !owned.holds(&have.bytes) {
            Fate::Release("it was changed on the guest since Phoenix wrote it".into())
        } else {
            Fate::Remove
        }
    }
}

#[async_trait::async_trait]
impl Prune for FileConverger {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn leftovers(&self, spec: &GuestSpec) -> Result<Vec<Leftover>, ResourceError> {
        let declared = declared_paths(spec);
        let mut out = Vec::new();
        for (path, owned) in self.ledger.files() {
            if declared.contains(path.as_path()) {
                continue;
            }
            let diff = match self.fate(&path, &owned) {
                Fate::Gone => format!("forget {} (already gone)", path.display()),
                Fate::Remove => format!(
                    "- remove {} (created by Phoenix, no longer declared)",
                    path.display()
                ),
                Fate::Release(why) => {
                    format!("keep {} but stop managing it: {why}", path.display())
                }
            };
            out.push(Leftover {
                resource: format!("file:{}", path.display()),
                diff,
                key: path.display().to_string(),
            });
        }
        Ok(out)
    }

    async fn remove(&self, leftover: &Leftover) -> Result<String, ResourceError> {
        let path = Path::new(&leftover.key);
        let Some(owned) = self.ledger.file(path) else {
            return Ok(format!("{} is no longer recorded", path.display()));
        };
        let done = match self.fate(path, &owned) {
            Fate::Gone => format!("forgot {} (already gone)", path.display()),
            Fate::Remove => {
                hostfs::remove_beneath(self.root_of(path)?, path).map_err(fs("remove", path))?;
                format!("removed {}", path.display())
            }
            Fate::Release(why) => format!("left {} in place: {why}", path.display()),
        };
        self.ledger
            .forget_file(path)
            .map_err(Self::ledger_err(path))?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests;
