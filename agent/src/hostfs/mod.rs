//! The agent's reads and writes of host files named in the desired state, confined beneath
//! the roots the operator allowed (e.g. `/srv`, `/etc/phoenix`).
//!
//! Every path is resolved fd-relative beneath its root: each directory below the root is
//! opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a link planted anywhere
//! below the root (a parent directory, the temp name, the target) is refused with
//! [`FsError::Symlink`], and a directory swapped for a link after it was checked cannot
//! redirect the write: the directory fd already opened is the one written in. The write
//! itself is pki's crash-safe [`atomic::replace_in`] in that directory fd.
//!
//! Limits: the root itself and its ancestors are trusted (operator policy); it is opened by
//! path and created if missing. Kernels without `openat2` fall back to `openat(O_NOFOLLOW)`
//! one component at a time, which refuses the same links because no component is `..` or
//! contains `/`.

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use phoenix_pki::atomic::{self, WriteError, open_name};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

pub use phoenix_pki::atomic::FileAttrs;

/// Mode of directories created below a root.
const DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path} is not beneath the allowed root {root}")]
    NotBeneath { path: PathBuf, root: PathBuf },
    #[error("refusing to follow symbolic link {link}")]
    Symlink { link: PathBuf },
    #[error("{path} is not a directory")]
    NotDirectory { path: PathBuf },
    #[error("{path} exists and is not a regular file; refusing to replace it")]
    NotRegular { path: PathBuf },
    #[error("{path} has {links} hard links; refusing to change its owner or mode in place")]
    HardLinked { path: PathBuf, links: u64 },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<WriteError> for FsError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Symlink { link } => FsError::Symlink { link },
            WriteError::Io {
                action,
                path,
                source,
            } => FsError::Io {
                action,
                path,
                source,
            },
        }
    }
}

impl From<FsError> for io::Error {
    /// Callers that report plain I/O errors keep the refusal's message and, for real
    /// I/O failures, the kind (NotFound stays NotFound).
    fn from(e: FsError) -> Self {
        let kind = match &e {
            FsError::Io { source, .. } => source.kind(),
            FsError::NotBeneath { .. } => io::ErrorKind::PermissionDenied,
            FsError::Symlink { .. } | FsError::HardLinked { .. } => io::ErrorKind::PermissionDenied,
            FsError::NotDirectory { .. } => io::ErrorKind::NotADirectory,
            FsError::NotRegular { .. } => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

fn sys<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> FsError + 'a {
    move |e| FsError::Io {
        action,
        path: path.to_path_buf(),
        source: io::Error::from(e),
    }
}

/// What an existing file holds, read through an fd that was opened without following links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub bytes: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The longest of `roots` that `path` lies strictly beneath.
pub fn root_of<'a, R: AsRef<Path>>(roots: &'a [R], path: &Path) -> Option<&'a Path> {
    roots
        .iter()
        .map(AsRef::as_ref)
        .filter(|r| path.starts_with(r) && path != *r)
        .max_by_key(|r| r.components().count())
}

/// `path` split into the names below `root`; only plain names (no `..`, no `.`).
fn beneath<'a>(root: &Path, path: &'a Path) -> Result<(Vec<&'a OsStr>, &'a OsStr), FsError> {
    let not_beneath = || FsError::NotBeneath {
        path: path.to_path_buf(),
        root: root.to_path_buf(),
    };
    let rel = path.strip_prefix(root).map_err(|_| not_beneath())?;
    let mut names = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => names.push(n),
            _ => return Err(not_beneath()),
        }
    }
    let file = names.pop().ok_or_else(not_beneath)?;
    Ok((names, file))
}

/// Maps the errors that mean "a link or non-directory is in the way" to refusals.
fn refusal(e: Errno, action: &'static str, shown: &Path) -> FsError {
    match e {
        Errno::ELOOP => FsError::Symlink {
            link: shown.to_path_buf(),
        },
        Errno::ENOTDIR => FsError::NotDirectory {
            path: shown.to_path_buf(),
        },
        e => sys(action, shown)(e),
    }
}

/// Opening a link with `O_DIRECTORY | O_NOFOLLOW` fails with ENOTDIR, not ELOOP; say which
/// one is in the way.
fn dir_refusal(dir: &OwnedFd, name: &OsStr, e: Errno, shown: &Path) -> FsError {
    let is_link = || {
        nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
    };
    match e {
        Errno::ENOTDIR if is_link() => FsError::Symlink {
            link: shown.to_path_buf(),
        },
        e => refusal(e, "open directory", shown),
    }
}

fn open_root(root: &Path, create: bool) -> Result<OwnedFd, FsError> {
    if create {
        std::fs::create_dir_all(root).map_err(|source| FsError::Io {
            action: "create directory",
            path: root.to_path_buf(),
            source,
        })?;
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::open(root, flags, Mode::empty()).map_err(sys("open directory", root))
}

/// Opens the directory `root/names…` one name at a time, refusing links; creates missing
/// directories (root-owned, 0755) when `create`. `Ok(None)`: missing and not created.
fn open_dir(
    root: &Path,
    names: &[&OsStr],
    create: bool,
) -> Result<Option<(OwnedFd, PathBuf)>, FsError> {
    let mut dir = match open_root(root, create) {
        Err(FsError::Io { source, .. }) if !create && source.kind() == io::ErrorKind::NotFound => {
            return Ok(None);
        }
        r => r?,
    };
    let mut shown = root.to_path_buf();
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
    for name in names {
        shown.push(name);
        dir = match open_name(&dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                match mkdirat(&dir, *name, Mode::from_bits_truncate(DIR_MODE)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(refusal(e, "create directory", &shown)),
                }
                // Whatever is there now (ours, or a link raced in) is checked again.
                open_name(&dir, name, flags, Mode::empty())
                    .map_err(|e| dir_refusal(&dir, name, e, &shown))?
            }
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(dir_refusal(&dir, name, e, &shown)),
        };
    }
    Ok(Some((dir, shown)))
}

/// Opens an existing regular file beneath `root` for reading, refusing links anywhere
/// below the root. `Ok(None)` when it (or a parent) does not exist.
fn open_file(
    root: &Path,
    path: &Path,
) -> Result<Option<(File, nix::sys::stat::FileStat)>, FsError> {
    let (names, name) = beneath(root, path)?;
    let Some((dir, _)) = open_dir(root, &names, false)? else {
        return Ok(None);
    };
    // O_NONBLOCK: a FIFO planted at the name must not hang the agent.
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK;
    let fd = match open_name(&dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(refusal(e, "open", path)),
    };
    let st = fstat(&fd).map_err(sys("inspect", path))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(FsError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    Ok(Some((File::from(fd), st)))
}

/// The content, mode and owner of the regular file `path` beneath `root`; `None` when it
/// does not exist. A link at the file or at a parent is refused, never followed.
pub fn read_beneath(root: &Path, path: &Path) -> Result<Option<Existing>, FsError> {
    let Some((mut f, st)) = open_file(root, path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|source| FsError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Some(Existing {
        bytes,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
    }))
}

/// Sets owner and mode of the existing regular file `path` beneath `root` through its fd.
/// Refuses a file with more than one hard link: it may be another file's name planted by
/// someone who can write the directory.
pub fn set_attrs_beneath(root: &Path, path: &Path, attrs: FileAttrs) -> Result<(), FsError> {
    let Some((f, st)) = open_file(root, path)? else {
        return Err(FsError::Io {
            action: "open",
            path: path.to_path_buf(),
            source: io::ErrorKind::NotFound.into(),
        });
    };
    if st.st_nlink > 1 {
        return Err(FsError::HardLinked {
            path: path.to_path_buf(),
            links: st.st_nlink,
        });
    }
    Ok(atomic::set_attrs(&f, path, attrs)?)
}

/// Removes the name `path` beneath `root` (a link there is removed, not followed).
/// Returns whether something was removed.
pub fn remove_beneath(root: &Path, path: &Path) -> Result<bool, FsError> {
    let (names, name) = beneath(root, path)?;
    let Some((dir, _)) = open_dir(root, &names, false)? else {
        return Ok(false);
    };
    match unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(sys("remove", path)(e)),
    }
}

/// Writes `bytes` to `path` beneath `root` with [`atomic::replace_in`] in the parent
/// directory's fd, so owner and mode are right before the name appears.
/// `create_dirs`: create the root and missing directories below it (0755).
pub fn write_beneath(
    root: &Path,
    path: &Path,
    bytes: &[u8],
    attrs: FileAttrs,
    create_dirs: bool,
) -> Result<(), FsError> {
    let (names, name) = beneath(root, path)?;
    let Some((dir, _)) = open_dir(root, &names, create_dirs)? else {
        return Err(FsError::Io {
            action: "open directory",
            path: path.parent().unwrap_or(root).to_path_buf(),
            source: io::ErrorKind::NotFound.into(),
        });
    };
    Ok(atomic::replace_in(&dir, name, path, bytes, attrs)?)
}

#[cfg(test)]
mod tests;
