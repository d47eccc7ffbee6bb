//! Crash-safe writes: a reader sees the old file or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode and ownership a written file ends up with; `None` leaves the owner as created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAttrs {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The temp file used for `path`. Deterministic, so a write interrupted by `kill -9`
/// leaves at most one stray file, which the next write of that path reuses.
pub fn temp_path(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    dir.join(format!(".{name}.phoenix-tmp"))
}

/// Writes `bytes` to `path` via a temp file in the same directory: create, set owner and
/// mode, write, fsync, rename over, fsync the directory. Owner and mode are right before
/// the name appears, so a key is never briefly readable by the wrong user.
pub fn write_file(path: &Path, bytes: &[u8], attrs: FileAttrs) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        if attrs.uid.is_some() || attrs.gid.is_some() {
            std::os::unix::fs::fchown(&f, attrs.uid, attrs.gid)?;
        }
        // After chown (which may clear setuid bits) and regardless of the umask.
        f.set_permissions(fs::Permissions::from_mode(attrs.mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_file(
        path,
        bytes,
        FileAttrs {
            mode,
            uid: None,
            gid: None,
        },
    )
}

/// A private key or token: 0600, atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Creates `dir` (and parents) and forces `mode` on the leaf directory.
pub fn ensure_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}
