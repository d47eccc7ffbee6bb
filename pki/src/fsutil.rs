//! Crash-safe writes that root can do in directories other accounts can write to.
//!
//! A reader sees the old file or the new one, never a torn one (temp file, fsync, rename,
//! fsync of the directory). Every path is resolved fd-relative beneath an allowed root:
//! each directory below the root is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, so a link planted anywhere below the root (a parent directory,
//! the temp name, the target) is refused with [`FsError::Symlink`], and a directory swapped
//! for a link after it was checked cannot redirect the write: the directory fd already
//! opened is the one written in. The temp file has a random name and is created with
//! `O_EXCL | O_NOFOLLOW`, owner and mode are set on its fd, and `renameat` replaces the
//! target name itself (a link there is replaced, never followed).
//!
//! Limits: the root itself and its ancestors are trusted (operator policy, e.g. `/srv` or
//! the agent's state directory); it is opened by path and created if missing. Kernels
//! without `openat2` (before Linux 5.6, or a seccomp filter answering ENOSYS) fall back to
//! `openat(O_NOFOLLOW)` one component at a time, which refuses the same links because no
//! component is `..` or contains `/`.

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2, renameat};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Mode and ownership a written file ends up with; `None` leaves the owner as created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAttrs {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Mode of directories created below a root.
const DIR_MODE: u32 = 0o755;
/// Suffix of temp files; stale ones of the same target are removed by the next write.
const TMP_SUFFIX: &str = ".phoenix-tmp";

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

/// Opens one name in `dir`, never following a link at it.
fn open_name(dir: &OwnedFd, name: &OsStr, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
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
    set_attrs(&f, path, attrs)
}

fn set_attrs(f: &File, path: &Path, attrs: FileAttrs) -> Result<(), FsError> {
    let io = |action| {
        move |source| FsError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    if attrs.uid.is_some() || attrs.gid.is_some() {
        std::os::unix::fs::fchown(f, attrs.uid, attrs.gid).map_err(io("chown"))?;
    }
    // After chown (which may clear setuid bits) and regardless of the umask.
    f.set_permissions(std::fs::Permissions::from_mode(attrs.mode))
        .map_err(io("chmod"))
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

/// Writes `bytes` to `path` beneath `root`: temp file with a random name created
/// exclusively in the parent directory's fd, owner and mode set on its fd, write, fsync,
/// `renameat` over the target in the same directory, fsync of the directory. Owner and
/// mode are right before the name appears, so a key is never briefly readable by the wrong
/// user. `create_dirs`: create the root and missing directories below it (0755).
pub fn write_beneath(
    root: &Path,
    path: &Path,
    bytes: &[u8],
    attrs: FileAttrs,
    create_dirs: bool,
) -> Result<(), FsError> {
    let (names, name) = beneath(root, path)?;
    let parent = path.parent().unwrap_or(root);
    let Some((dir, _)) = open_dir(root, &names, create_dirs)? else {
        return Err(FsError::Io {
            action: "open directory",
            path: parent.to_path_buf(),
            source: io::ErrorKind::NotFound.into(),
        });
    };
    remove_stale_temps(&dir, name);
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
    let mut attempt = 0;
    let (tmp, fd) = loop {
        let tmp = temp_name(name);
        match open_name(&dir, &tmp, flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => break (tmp, fd),
            // Someone planted this exact random name; pick another.
            Err(Errno::EEXIST | Errno::ELOOP) if attempt < 8 => attempt += 1,
            Err(e) => return Err(refusal(e, "create temp file in", parent)),
        }
    };
    let result = (|| {
        let mut f = File::from(fd);
        set_attrs(&f, path, attrs)?;
        let io = |action| {
            move |source| FsError::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        f.write_all(bytes).map_err(io("write"))?;
        f.sync_all().map_err(io("fsync"))?;
        renameat(&dir, tmp.as_os_str(), &dir, name).map_err(sys("rename temp file to", path))?;
        nix::unistd::fsync(&dir).map_err(sys("fsync directory", parent))
    })();
    if result.is_err() {
        let _ = unlinkat(&dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// [`write_beneath`] for a file directly inside a directory the caller owns (state and CA
/// directories): the parent is the root and must exist.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let attrs = FileAttrs {
        mode,
        uid: None,
        gid: None,
    };
    Ok(write_beneath(dir, path, bytes, attrs, false)?)
}

/// A private key or token: 0600, atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Creates `dir` (and parents) and forces `mode` on the leaf directory through its fd,
/// refusing a link at the leaf.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(dir, flags, Mode::empty()).map_err(|e| match e {
        Errno::ELOOP => io::Error::from(FsError::Symlink {
            link: dir.to_path_buf(),
        }),
        e => io::Error::from(e),
    })?;
    File::from(fd).set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests;
