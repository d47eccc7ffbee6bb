//! What this agent wrote on its guest (docs/design/0011-ownership-and-takeover.md).
//!
//! A file on the guest is Phoenix's when the ledger has its path and the hash of the bytes
//! Phoenix last wrote there; a unit file also carries Phoenix's header. The ledger decides
//! two things: an existing file that is not Phoenix's is replaced only after a copy is
//! kept in the backup directory (a takeover the user can roll back by hand), and a file
//! the desired state no longer declares is removed only when Phoenix created it (the path
//! did not exist before Phoenix first wrote it) and it still holds what Phoenix wrote.
//!
//! Kept as `owned.json` in the agent's state directory (0700; the file 0600), rewritten
//! atomically after each change. Backups go to `backups/` there: outside every managed
//! root, so no desired state can name, overwrite or serve them, and private to root.

use crate::hostfs::{self, Existing, FileAttrs, FsError};
use phoenix_pki::statedir;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const LEDGER_FILE: &str = "owned.json";
const BACKUP_DIR: &str = "backups";
/// Longest backup name kept readable; longer paths are shortened and made unique by hash.
const MAX_NAME: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("read ownership ledger {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ownership ledger {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("write ownership ledger {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("back up {path} before replacing it: {source}")]
    Backup { path: PathBuf, source: FsError },
    #[error("back up {path} before replacing it: create backup directory {dir}: {source}")]
    BackupDir {
        path: PathBuf,
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// One file Phoenix wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    /// SHA-256 (hex) of the bytes Phoenix last wrote: a file that no longer hashes to this
    /// was changed by someone else since, and is not removed.
    pub sha256: String,
    /// The path did not exist before Phoenix first wrote it. Only then may Phoenix remove
    /// it; a file Phoenix took over is left in place when no longer declared.
    pub created: bool,
    /// Where the file Phoenix replaced was kept, when it took one over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<PathBuf>,
}

impl Owned {
    /// A file Phoenix just wrote: `before` is what was there (its ledger entry, if Phoenix
    /// already owned it) and `existed` whether the path existed at all.
    pub fn written(
        bytes: &[u8],
        before: Option<&Owned>,
        existed: bool,
        backup: Option<PathBuf>,
    ) -> Owned {
        Owned {
            sha256: sha256(bytes),
            created: before.map(|o| o.created).unwrap_or(!existed),
            backup: backup.or_else(|| before.and_then(|o| o.backup.clone())),
        }
    }

    /// Still what Phoenix wrote.
    pub fn holds(&self, bytes: &[u8]) -> bool {
        self.sha256 == sha256(bytes)
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The persisted record. Keys are absolute paths (files) and unit names (services).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// Managed files and cert files, by path.
    #[serde(default)]
    files: BTreeMap<PathBuf, Owned>,
    /// Units whose files Phoenix wrote (unit file, drop-ins, secret environment file).
    #[serde(default)]
    units: BTreeMap<String, BTreeMap<PathBuf, Owned>>,
    /// Certs whose new files were written but whose reloads have not all succeeded yet:
    /// retried on every pass until they do (the service would otherwise keep serving
    /// the old certificate until the next renewal).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    reload_pending: BTreeSet<String>,
}

pub struct Ledger {
    /// `None`: kept in memory only (unit tests).
    state_dir: Option<PathBuf>,
    record: Mutex<Record>,
}

impl Ledger {
    /// Loads the ledger of the state directory `dir` (empty when there is none yet).
    pub fn open(dir: &Path) -> Result<Ledger, LedgerError> {
        let path = dir.join(LEDGER_FILE);
        let record = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| LedgerError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
            Err(source) => return Err(LedgerError::Read { path, source }),
        };
        Ok(Ledger {
            state_dir: Some(dir.to_path_buf()),
            record: Mutex::new(record),
        })
    }

    /// A ledger that starts empty in `dir`, replacing an unreadable one: Phoenix then
    /// owns nothing, so it removes nothing and backs up whatever it replaces.
    pub fn fresh(dir: &Path) -> Ledger {
        Ledger {
            state_dir: Some(dir.to_path_buf()),
            record: Mutex::new(Record::default()),
        }
    }

    /// Not persisted and without a backup directory (replaced files are not kept).
    pub fn memory() -> Ledger {
        Ledger {
            state_dir: None,
            record: Mutex::new(Record::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        // A panic while holding the lock leaves a consistent map (every update is one
        // insert or remove), so the poison is ignored.
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, record: &Record) -> Result<(), LedgerError> {
        let Some(dir) = &self.state_dir else {
            return Ok(());
        };
        statedir::ensure_dir(dir, 0o700).map_err(|source| LedgerError::Write {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(LEDGER_FILE);
        let json = serde_json::to_vec_pretty(record).unwrap_or_default();
        statedir::write_private(&path, &json).map_err(|source| LedgerError::Write { path, source })
    }

    pub fn file(&self, path: &Path) -> Option<Owned> {
        self.lock().files.get(path).cloned()
    }

    pub fn files(&self) -> BTreeMap<PathBuf, Owned> {
        self.lock().files.clone()
    }

    pub fn record_file(&self, path: &Path, owned: Owned) -> Result<(), LedgerError> {
        let mut r = self.lock();
        if r.files.get(path) == Some(&owned) {
            return Ok(());
        }
        r.files.insert(path.to_path_buf(), owned);
        self.save(&r)
    }

    pub fn forget_file(&self, path: &Path) -> Result<(), LedgerError> {
        let mut r = self.lock();
        if r.files.remove(path).is_some() {
            self.save(&r)?;
        }
        Ok(())
    }

    pub fn unit(&self, name: &str) -> BTreeMap<PathBuf, Owned> {
        self.lock().units.get(name).cloned().unwrap_or_default()
    }

    pub fn units(&self) -> BTreeMap<String, BTreeMap<PathBuf, Owned>> {
        self.lock().units.clone()
    }

    pub fn record_unit_file(
        &self,
        name: &str,
        path: &Path,
        owned: Owned,
    ) -> Result<(), LedgerError> {
        let mut r = self.lock();
        let files = r.units.entry(name.to_owned()).or_default();
        if files.get(path) == Some(&owned) {
            return Ok(());
        }
        files.insert(path.to_path_buf(), owned);
        self.save(&r)
    }

    pub fn forget_unit(&self, name: &str) -> Result<(), LedgerError> {
        let mut r = self.lock();
        if r.units.remove(name).is_some() {
            self.save(&r)?;
        }
        Ok(())
    }

    pub fn reload_pending(&self, cert: &str) -> bool {
        self.lock().reload_pending.contains(cert)
    }

    /// Marks (or clears) a cert's pending reload; persisted before the reload runs, so a
    /// crash in between is retried too.
    pub fn set_reload_pending(&self, cert: &str, pending: bool) -> Result<(), LedgerError> {
        let mut r = self.lock();
        let changed = if pending {
            r.reload_pending.insert(cert.to_owned())
        } else {
            r.reload_pending.remove(cert)
        };
        if changed { self.save(&r) } else { Ok(()) }
    }

    /// Keeps a copy of `original`, the file at `path` that Phoenix is about to replace, as
    /// `backups/<path with / as %2F>.<unix time>` in the state directory, with the
    /// original's owner and permission bits (setuid, setgid and sticky dropped: a copy must
    /// not become a second way to run a program as its owner), so `cp -p` puts back the
    /// file as it was. The 0700 backup directory keeps every copy private to root whatever
    /// its own mode. Returns where, or `None` for an in-memory ledger. The original was
    /// read without following links; the copy is created beneath the state directory,
    /// never through a link.
    pub fn back_up(
        &self,
        path: &Path,
        original: &Existing,
    ) -> Result<Option<PathBuf>, LedgerError> {
        let Some(state) = &self.state_dir else {
            return Ok(None);
        };
        let dir = state.join(BACKUP_DIR);
        statedir::ensure_dir(&dir, 0o700).map_err(|source| LedgerError::BackupDir {
            path: path.to_path_buf(),
            dir: dir.clone(),
            source,
        })?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut n = 0u32;
        loop {
            let suffix = if n == 0 {
                format!(".{secs}")
            } else {
                format!(".{secs}-{n}")
            };
            let target = dir.join(format!("{}{suffix}", backup_name(path)));
            // Never overwrite an earlier backup: it may be the only copy of the original.
            match hostfs::read_beneath(&dir, &target) {
                Ok(None) => {
                    let attrs = FileAttrs {
                        mode: original.mode & 0o777,
                        uid: Some(original.uid),
                        gid: Some(original.gid),
                    };
                    hostfs::write_beneath(&dir, &target, &original.bytes, attrs, false).map_err(
                        |source| LedgerError::Backup {
                            path: path.to_path_buf(),
                            source,
                        },
                    )?;
                    return Ok(Some(target));
                }
                Ok(Some(_)) | Err(_) => n += 1,
            }
            if n > 1000 {
                return Err(LedgerError::Backup {
                    path: path.to_path_buf(),
                    source: FsError::NotRegular { path: target },
                });
            }
        }
    }
}

/// `/etc/nginx/nginx.conf` → `etc%2Fnginx%2Fnginx.conf`: one flat, reversible name.
fn backup_name(path: &Path) -> String {
    let s = path.to_string_lossy();
    let name = s
        .trim_start_matches('/')
        .replace('%', "%25")
        .replace('/', "%2F");
    if name.len() <= MAX_NAME {
        return name;
    }
    let mut cut = MAX_NAME - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{}", &name[..cut], &sha256(s.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn persists_and_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Ledger::open(dir.path()).expect("open");
        let p = Path::new("/etc/app.conf");
        l.record_file(p, Owned::written(b"x", None, false, None))
            .expect("record");
        l.record_unit_file(
            "a.service",
            Path::new("/etc/systemd/system/a.service"),
            Owned::written(b"u", None, true, None),
        )
        .expect("record unit");
        let again = Ledger::open(dir.path()).expect("reopen");
        let o = again.file(p).expect("recorded");
        assert!(o.created && o.holds(b"x") && !o.holds(b"y"));
        assert!(!again.unit("a.service").values().any(|o| o.created));
        let mode = std::fs::metadata(dir.path().join(LEDGER_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(LEDGER_FILE), b"{not json").expect("corrupt");
        let err = Ledger::open(dir.path()).err().expect("corrupt refused");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    /// A file as `read_beneath` returns it, owned by the test's own user.
    fn original(bytes: &[u8], mode: u32) -> Existing {
        Existing {
            bytes: bytes.to_vec(),
            mode,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    #[test]
    fn backups_are_private_flat_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Ledger::open(dir.path()).expect("open");
        let p = Path::new("/etc/nginx/nginx.conf");
        let a = l
            .back_up(p, &original(b"one", 0o600))
            .expect("backup")
            .expect("path");
        let b = l
            .back_up(p, &original(b"two", 0o600))
            .expect("backup")
            .expect("path");
        assert_ne!(a, b);
        assert!(a.starts_with(dir.path().join(BACKUP_DIR)));
        assert!(
            a.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("etc%2Fnginx%2Fnginx.conf."))
        );
        assert_eq!(std::fs::read(&a).expect("read"), b"one");
        assert_eq!(std::fs::read(&b).expect("read"), b"two");
        for f in [&a, &b] {
            let mode = std::fs::metadata(f).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let d = std::fs::metadata(dir.path().join(BACKUP_DIR)).expect("stat");
        assert_eq!(d.permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn backups_keep_the_originals_mode_and_owner_but_no_setuid() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Ledger::open(dir.path()).expect("open");
        let conf = l
            .back_up(Path::new("/etc/nginx/ssl/gw.key"), &original(b"k", 0o640))
            .expect("backup")
            .expect("path");
        let meta = std::fs::metadata(&conf).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        let tool = l
            .back_up(Path::new("/usr/local/bin/tool"), &original(b"t", 0o4755))
            .expect("backup")
            .expect("path");
        let meta = std::fs::metadata(&tool).expect("stat");
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o755,
            "a copy of a setuid program is not setuid"
        );
        // Another owner, where the test may give files away.
        if nix::unistd::geteuid().is_root() {
            let foreign = Existing {
                uid: 4321,
                gid: 33,
                ..original(b"site", 0o644)
            };
            let site = l
                .back_up(Path::new("/etc/nginx/sites-enabled/x"), &foreign)
                .expect("backup")
                .expect("path");
            let meta = std::fs::metadata(&site).expect("stat");
            assert_eq!(
                (meta.uid(), meta.gid(), meta.mode() & 0o7777),
                (4321, 33, 0o644)
            );
        }
        let d = std::fs::metadata(dir.path().join(BACKUP_DIR)).expect("stat");
        assert_eq!(
            d.permissions().mode() & 0o777,
            0o700,
            "still private to root"
        );
    }

    #[test]
    fn a_link_planted_as_the_backup_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join(BACKUP_DIR))
            .expect("plant link");
        let l = Ledger::open(dir.path()).expect("open");
        let err = l
            .back_up(Path::new("/etc/x"), &original(b"secret", 0o600))
            .expect_err("link refused");
        assert!(err.to_string().contains("backup directory"), "{err}");
        assert_eq!(
            std::fs::read_dir(elsewhere.path()).expect("list").count(),
            0,
            "nothing written through the link"
        );
    }

    #[test]
    fn long_paths_get_short_unique_names() {
        let long = format!("/srv/{}", "d/".repeat(150));
        let n = backup_name(Path::new(&long));
        assert!(n.len() <= MAX_NAME, "{}", n.len());
        assert_ne!(n, backup_name(Path::new(&format!("{long}x"))));
    }
}
