//! Crash-safe replacement of one file inside a directory that is already open, the step
//! both sides' private state writers ([`crate::statedir`]) and the agent's writes beneath
//! a root share.
//!
//! A reader sees the old file or the new one, never a torn one: temp file, fsync, rename,
//! fsync of the directory. The temp file has a random name and is created with
//! `O_EXCL | O_NOFOLLOW` in the directory's fd, owner and mode are set on its fd before
//! anything is written, and `renameat` replaces the target name itself (a link there is
//! replaced, never followed).
//!
//! Limits: how the directory fd was obtained is the caller's business; this module never
//! resolves a path with more than one component.

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2, renameat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Mode and ownership a written file ends up with; `None` leaves the owner as created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAttrs {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl FileAttrs {
    /// `mode`, owned by whoever creates the file.
    pub fn mode(mode: u32) -> Self {
        FileAttrs {
            mode,
            uid: None,
            gid: None,
        }
    }
}

/// Suffix of temp files; stale ones of the same target are removed by the next write.
const TMP_SUFFIX: &str = ".phoenix-tmp";

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("refusing to follow symbolic link {link}")]
    Symlink { link: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<WriteError> for io::Error {
    /// Callers that report plain I/O errors keep the message and, for real I/O failures,
    /// the kind.
    fn from(e: WriteError) -> Self {
        let kind = match &e {
            WriteError::Io { source, .. } => source.kind(),
            WriteError::Symlink { .. } => io::ErrorKind::PermissionDenied,
        };
        io::Error::new(kind, e)
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Opens one name in `dir`, never following a link at it (`openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`; kernels without it, before Linux 5.6 or behind
/// a seccomp filter answering ENOSYS, get `openat(O_NOFOLLOW)`, which refuses the same
/// links because `name` is one component).
pub fn open_name(dir: &OwnedFd, name: &OsStr, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let how = OpenHow::new()
        .flags(flags)
        .mode(if flags.contains(OFlag::O_CREAT) {
            mode
        } else {
            Mode::empty()
        })
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match openat2(dir, name, how) {
        Err(Errno::ENOSYS) => openat(dir, name, flags, mode),
        r => r,
    }
}

/// Sets owner, then mode, on an open file (`path` only names it in errors).
pub fn set_attrs(f: &File, path: &Path, attrs: FileAttrs) -> Result<(), WriteError> {
    if attrs.uid.is_some() || attrs.gid.is_some() {
        std::os::unix::fs::fchown(f, attrs.uid, attrs.gid).map_err(io_err("chown", path))?;
    }
    // After chown (which may clear setuid bits) and regardless of the umask.
    f.set_permissions(std::fs::Permissions::from_mode(attrs.mode))
        .map_err(io_err("chmod", path))
}

fn temp_name(name: &OsStr) -> OsString {
    let mut t = OsString::from(".");
    t.push(name);
    t.push(format!(".{:016x}{TMP_SUFFIX}", rand::random::<u64>()));
    t
}

/// Removes temp files a killed earlier write of `name` left in `dir` (including the
/// predictable name older builds used). `unlinkat` removes links without following them.
fn remove_stale_temps(dir: &OwnedFd, name: &OsStr) {
    let mut prefix = b".".to_vec();
    prefix.extend_from_slice(name.as_bytes());
    prefix.push(b'.');
    let Ok(dup) = dir.try_clone() else { return };
    let Ok(mut d) = nix::dir::Dir::from_fd(dup) else {
        return;
    };
    let stale: Vec<_> = d
        .iter()
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_bytes();
            n.starts_with(&prefix) && n.ends_with(TMP_SUFFIX.as_bytes())
        })
        .map(|e| e.file_name().to_owned())
        .collect();
    for n in stale {
        let _ = unlinkat(dir, n.as_c_str(), UnlinkatFlags::NoRemoveDir);
    }
}

/// Replaces the file `name` in the open directory `dir` with `bytes`: temp file with a
/// random name created exclusively, owner and mode set on its fd, write, fsync, `renameat`
/// over `name`, fsync of the directory. Owner and mode are right before the name appears,
/// so a key is never briefly readable by the wrong user. `path` (the directory's path
/// joined with `name`) only names the file in errors.
pub fn replace_in(
    dir: &OwnedFd,
    name: &OsStr,
    path: &Path,
    bytes: &[u8],
    attrs: FileAttrs,
) -> Result<(), WriteError> {
    let parent = path.parent().unwrap_or(path);
    remove_stale_temps(dir, name);
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
    let mut attempt = 0;
    let (tmp, fd) = loop {
        let tmp = temp_name(name);
        match open_name(dir, &tmp, flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => break (tmp, fd),
            // Someone planted this exact random name; pick another.
            Err(Errno::EEXIST | Errno::ELOOP) if attempt < 8 => attempt += 1,
            Err(Errno::ELOOP) => {
                return Err(WriteError::Symlink {
                    link: parent.join(&tmp),
                });
            }
            Err(e) => return Err(io_err("create temp file in", parent)(e.into())),
        }
    };
    let result = (|| {
        let mut f = File::from(fd);
        set_attrs(&f, path, attrs)?;
        f.write_all(bytes).map_err(io_err("write", path))?;
        f.sync_all().map_err(io_err("fsync", path))?;
        renameat(dir, tmp.as_os_str(), dir, name)
            .map_err(|e| io_err("rename temp file to", path)(e.into()))?;
        nix::unistd::fsync(dir).map_err(|e| io_err("fsync directory", parent)(e.into()))
    })();
    if result.is_err() {
        let _ = unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}
