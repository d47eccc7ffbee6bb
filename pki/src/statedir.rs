//! Private state directories (the agent's identity, the coordinator's CA). They are
//! checked before use, without following links: a symlinked directory is refused (its
//! target may be anything, e.g. `/etc`), and loose modes are tightened on the directory
//! and key files themselves through descriptors opened with `O_NOFOLLOW`, with a loud
//! warning, because a key that was readable by others may already be copied.
//!
//! Files inside are written with [`write_atomic`] / [`write_private`]: the directory is
//! trusted once checked, so only the file's own name is guarded against links.

use crate::atomic::{self, FileAttrs, WriteError};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error(
        "state directory {path} is a symbolic link; refusing to follow it (pass the real directory)"
    )]
    Symlink { path: PathBuf },
    #[error("{path} is not a {expected}")]
    NotA {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{path} belongs to uid {owner}, not to this process (uid {me}); refusing to use it")]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Makes sure `dir` is a real directory of ours with mode 0700, and every existing file
/// in `private_files` (names inside `dir`) a regular file with mode 0600. Creates `dir`
/// (0700) if missing. Returns one warning per mode it had to tighten; the caller must
/// show them (they are also logged here).
pub fn secure(dir: &Path, private_files: &[&str]) -> Result<Vec<String>, StateDirError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| StateDirError::Io {
            action,
            path,
            source,
        }
    };
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("create state directory", dir))?;
            fs::symlink_metadata(dir).map_err(io("inspect state directory", dir))?
        }
        Err(e) => return Err(io("inspect state directory", dir)(e)),
    };
    let mut warnings = Vec::new();
    tighten(
        dir,
        &meta,
        0o700,
        "directory",
        OFlag::O_DIRECTORY,
        &mut warnings,
    )?;
    for name in private_files {
        let path = dir.join(name);
        match fs::symlink_metadata(&path) {
            Ok(m) => tighten(
                &path,
                &m,
                0o600,
                "regular file",
                OFlag::empty(),
                &mut warnings,
            )?,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("inspect", &path)(e)),
        }
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(warnings)
}

fn tighten(
    path: &Path,
    meta: &fs::Metadata,
    mode: u32,
    expected: &'static str,
    flags: OFlag,
    warnings: &mut Vec<String>,
) -> Result<(), StateDirError> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(StateDirError::Symlink {
            path: path.to_path_buf(),
        });
    }
    let is_expected = if flags.contains(OFlag::O_DIRECTORY) {
        kind.is_dir()
    } else {
        kind.is_file()
    };
    if !is_expected {
        return Err(StateDirError::NotA {
            path: path.to_path_buf(),
            expected,
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(StateDirError::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let old = meta.mode() & 0o7777;
    if old & !mode == 0 {
        return Ok(());
    }
    // Through a descriptor that cannot be a link, so a swap after the check above
    // changes nothing but that path's own inode.
    let f: File = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | flags).bits())
        .open(path)
        .map_err(|source| StateDirError::Io {
            action: "open without following links",
            path: path.to_path_buf(),
            source,
        })?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|source| StateDirError::Io {
            action: "tighten permissions of",
            path: path.to_path_buf(),
            source,
        })?;
    let leaked = if expected == "regular file" {
        "; other users could read this key, so treat it as compromised: revoke this identity and join again"
    } else {
        "; other users could list it and read whatever inside was not 0600"
    };
    warnings.push(format!(
        "SECURITY: {} had mode {old:04o}; changed to {mode:04o}{leaked}",
        path.display()
    ));
    Ok(())
}

/// Replaces `path` (a file directly inside a directory the caller owns, e.g. a state or CA
/// directory) with `bytes` and `mode`, crash-safely ([`atomic::replace_in`]). The parent
/// must exist; a link at `path` is replaced, never followed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("write {}: not a file path", path.display()),
        ));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(dir, flags, Mode::empty()).map_err(|e| WriteError::Io {
        action: "open directory",
        path: dir.to_path_buf(),
        source: e.into(),
    })?;
    Ok(atomic::replace_in(
        &fd,
        name,
        path,
        bytes,
        FileAttrs::mode(mode),
    )?)
}

/// A private key or token: 0600, atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Creates `dir` (and parents) and forces `mode` on the leaf directory through its fd,
/// refusing a link at the leaf.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(dir, flags, Mode::empty()).map_err(|e| match e {
        // O_DIRECTORY | O_NOFOLLOW on a link fails with ENOTDIR on Linux, ELOOP elsewhere.
        Errno::ELOOP | Errno::ENOTDIR if dir.is_symlink() => io::Error::from(WriteError::Symlink {
            link: dir.to_path_buf(),
        }),
        e => io::Error::from(e),
    })?;
    File::from(fd).set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).expect("stat").mode() & 0o7777
    }

    #[test]
    fn creates_and_accepts_a_private_directory() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("a/b");
        assert!(secure(&dir, &["key.pem"]).expect("create").is_empty());
        assert_eq!(mode(&dir), 0o700);
        assert!(secure(&dir, &["key.pem"]).expect("again").is_empty());
    }

    #[test]
    fn tightens_loose_modes_with_a_warning() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("state");
        fs::create_dir(&dir).expect("mkdir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::write(dir.join("key.pem"), "k").expect("write");
        fs::set_permissions(dir.join("key.pem"), fs::Permissions::from_mode(0o666)).expect("chmod");
        let w = secure(&dir, &["key.pem"]).expect("fixed");
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[1].contains("key.pem had mode 0666"), "{w:?}");
        assert_eq!((mode(&dir), mode(&dir.join("key.pem"))), (0o700, 0o600));
    }

    #[test]
    fn refuses_symlinks_and_leaves_their_targets_alone() {
        let base = tempfile::tempdir().expect("tempdir");
        let target = base.path().join("target");
        fs::create_dir(&target).expect("mkdir");
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).expect("chmod");
        let link = base.path().join("state");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = secure(&link, &[]).expect_err("symlinked dir");
        assert!(matches!(err, StateDirError::Symlink { .. }), "{err}");
        assert_eq!(mode(&target), 0o755);
        // A key file that is a link is refused as well; its target keeps its mode.
        let dir = base.path().join("real");
        fs::create_dir(&dir).expect("mkdir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
        let outside = base.path().join("outside");
        fs::write(&outside, "x").expect("write");
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).expect("chmod");
        std::os::unix::fs::symlink(&outside, dir.join("key.pem")).expect("symlink");
        assert!(matches!(
            secure(&dir, &["key.pem"]),
            Err(StateDirError::Symlink { .. })
        ));
        assert_eq!(mode(&outside), 0o644);
    }

    #[test]
    fn private_writes_are_0600_and_a_linked_directory_is_refused() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("state");
        ensure_dir(&dir, 0o700).expect("ensure");
        assert_eq!(mode(&dir), 0o700);
        write_private(&dir.join("key"), b"k").expect("write");
        write_private(&dir.join("key"), b"k2").expect("replace");
        assert_eq!(fs::read(dir.join("key")).expect("read"), b"k2");
        assert_eq!(mode(&dir.join("key")), 0o600);
        // Nothing but the file: no temp left behind.
        assert_eq!(fs::read_dir(&dir).expect("list").count(), 1);
        let link = base.path().join("linkdir");
        std::os::unix::fs::symlink(&dir, &link).expect("plant");
        let err = ensure_dir(&link, 0o777).expect_err("linked directory");
        assert!(
            err.to_string().contains("refusing to follow symbolic link"),
            "{err}"
        );
        assert_eq!(mode(&dir), 0o700);
    }
}
