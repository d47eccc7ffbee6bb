//! A build context on the guest → the tar the engine's build endpoint takes, and the
//! digest that decides whether the image must be rebuilt (and its containers recreated).
//!
//! The context directory is opened beneath its allowed root with no link anywhere on the
//! way (openat2 `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and walked fd-relative with
//! `O_NOFOLLOW`: a link inside the context is sent as a link (as `docker build` sends it),
//! never followed, so a context cannot pull in `/etc` through a planted link. Regular
//! files, directories and links only; bounded in size and count. The context's
//! `.dockerignore` is honoured as the Docker CLI honours it (the model's `dockerignore`):
//! an ignored file is neither sent nor hashed, so changing it rebuilds nothing. Files
//! that look secret and are not ignored are listed in [`Packed::secret_looking`] (names
//! and reasons, never content) so the converger can warn.

use nix::dir::Dir;
use nix::fcntl::AtFlags;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, fstatat};
use phoenix_proto::model::compose::dockerignore::{DockerIgnore, secret_looking};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

/// Largest context sent to the engine; a bigger one is a data directory, not a context.
pub const MAX_CONTEXT_BYTES: u64 = 64 << 20;
/// Most entries in a context.
pub const MAX_CONTEXT_ENTRIES: usize = 20_000;
/// Deepest directory nesting walked.
const MAX_DEPTH: usize = 32;

/// Where the inline Dockerfile goes inside the tar (`dockerfile_inline`).
pub const INLINE_DOCKERFILE: &str = ".phoenix-inline.Dockerfile";

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("build context {path}: {why}")]
    Read { path: String, why: String },
}

/// One entry of the context, in walk order (sorted by name at each level).
enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Link {
        path: String,
        target: String,
    },
}

/// The packed context: the tar for the engine and its digest.
pub struct Packed {
    pub tar: Vec<u8>,
    pub digest: String,
    /// Files sent that look like secrets: `path (why)`; never their content.
    pub secret_looking: Vec<String>,
}

/// What the walk leaves out: the `.dockerignore` patterns, except for the files the
/// CLI always sends.
struct Filter<'a> {
    ignore: DockerIgnore,
    dockerfile: &'a str,
}

impl Filter<'_> {
    fn excludes(&self, path: &str) -> bool {
        path != self.dockerfile && path != ".dockerignore" && self.ignore.excludes(path)
    }
}

/// Reads the context `dir` (beneath `root`, one of the agent's file roots) and packs it,
/// leaving out what its `.dockerignore` excludes (never `dockerfile`, the Dockerfile's
/// path in the context) and adding `inline` as the Dockerfile when given.
pub fn pack(
    root: &Path,
    dir: &Path,
    dockerfile: &str,
    inline: Option<&str>,
) -> Result<Packed, ContextError> {
    let fail = |why: String| ContextError::Read {
        path: dir.display().to_string(),
        why,
    };
    let rel = dir.strip_prefix(root).map_err(|_| {
        fail(format!(
            "is not beneath the allowed root {}",
            root.display()
        ))
    })?;
    let root_fd = std::fs::File::open(root)
        .map_err(|e| fail(format!("open allowed root {}: {e}", root.display())))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let fd = openat2(&root_fd, rel, how).map_err(|e| match e {
        nix::errno::Errno::ELOOP | nix::errno::Errno::EXDEV => {
            fail("is reached through a link or leaves its root; refusing to read it".into())
        }
        e => fail(format!("open: {e}")),
    })?;
    let ignore = read_ignore(&fd).map_err(fail)?;
    let filter = Filter {
        ignore,
        dockerfile: dockerfile.trim_start_matches("./"),
    };
    let mut entries = Vec::new();
    let mut total = 0u64;
    walk(fd, "", 0, &filter, &mut entries, &mut total).map_err(fail)?;
    let secret_looking = entries
        .iter()
        .filter_map(|e| match e {
            Entry::File { path, data, .. } => {
                secret_looking(path, data).map(|why| format!("{path} ({why})"))
            }
            _ => None,
        })
        .collect();
    if let Some(text) = inline {
        entries.retain(|e| !matches!(e, Entry::File { path, .. } if path == INLINE_DOCKERFILE));
        entries.push(Entry::File {
            path: INLINE_DOCKERFILE.into(),
            mode: 0o644,
            data: text.as_bytes().to_vec(),
        });
    }
    let mut hash = Sha256::new();
    let mut tar = Vec::new();
    for e in &entries {
        match e {
            Entry::Dir { path, mode } => {
                hash.update(format!("d {path} {mode:o}\0"));
                header(&mut tar, &format!("{path}/"), *mode, 0, b'5', "").map_err(fail)?;
            }
            Entry::File { path, mode, data } => {
                hash.update(format!("f {path} {mode:o} {}\0", data.len()));
                hash.update(data);
                header(&mut tar, path, *mode, data.len() as u64, b'0', "").map_err(fail)?;
                tar.extend_from_slice(data);
                tar.resize(tar.len().div_ceil(512) * 512, 0);
            }
            Entry::Link { path, target } => {
                hash.update(format!("l {path} {target}\0"));
                header(&mut tar, path, 0o777, 0, b'2', target).map_err(fail)?;
            }
        }
    }
    // Two zero blocks end the archive.
    tar.extend_from_slice(&[0u8; 1024]);
    Ok(Packed {
        tar,
        digest: hex::encode(hash.finalize()),
        secret_looking,
    })
}

/// The context's `.dockerignore` (a regular file at its top, never through a link);
/// none means nothing is ignored.
fn read_ignore(dir: &OwnedFd) -> Result<DockerIgnore, String> {
    let fd = match openat(
        dir,
        ".dockerignore",
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(DockerIgnore::default()),
        Err(e) => return Err(format!("open .dockerignore: {e}")),
    };
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| format!("read .dockerignore: {e}"))?;
    Ok(DockerIgnore::parse(&text))
}

fn walk(
    dir_fd: OwnedFd,
    prefix: &str,
    depth: usize,
    filter: &Filter,
    out: &mut Vec<Entry>,
    total: &mut u64,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} directories"));
    }
    let list_fd = dir_fd.try_clone().map_err(|e| format!("dup: {e}"))?;
    let mut dir = Dir::from_fd(list_fd).map_err(|e| format!("read directory {prefix:?}: {e}"))?;
    let mut names: Vec<String> = Vec::new();
    for ent in dir.iter() {
        let ent = ent.map_err(|e| format!("read directory {prefix:?}: {e}"))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        names.push(name);
    }
    names.sort();
    for name in names {
        if out.len() >= MAX_CONTEXT_ENTRIES {
            return Err(format!("has more than {MAX_CONTEXT_ENTRIES} entries"));
        }
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let st = fstatat(&dir_fd, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| format!("stat {path}: {e}"))?;
        let mode = st.st_mode & 0o7777;
        let excluded = filter.excludes(&path);
        let kind = st.st_mode & S_IFMT;
        match kind {
            // An excluded directory is skipped whole unless a `!` line may re-include
            // something beneath it; then its entries are judged one by one.
            S_IFDIR if excluded && !filter.ignore.has_exceptions() => {}
            k if excluded && k != S_IFDIR => {}
            S_IFDIR => {
                if !excluded {
                    out.push(Entry::Dir {
                        path: path.clone(),
                        mode,
                    });
                }
                let sub = openat(
                    &dir_fd,
                    name.as_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| format!("open {path}: {e}"))?;
                walk(sub, &path, depth + 1, filter, out, total)?;
            }
            S_IFREG => {
                let fd = openat(
                    &dir_fd,
                    name.as_str(),
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                    Mode::empty(),
                )
                .map_err(|e| format!("open {path}: {e}"))?;
                let room = MAX_CONTEXT_BYTES.saturating_sub(*total);
                let mut data = Vec::new();
                std::fs::File::from(fd)
                    .take(room + 1)
                    .read_to_end(&mut data)
                    .map_err(|e| format!("read {path}: {e}"))?;
                *total += data.len() as u64;
                if *total > MAX_CONTEXT_BYTES {
                    return Err(format!("is larger than {MAX_CONTEXT_BYTES} bytes"));
                }
                out.push(Entry::File { path, mode, data });
            }
            S_IFLNK => {
                let target = nix::fcntl::readlinkat(&dir_fd, name.as_str())
                    .map_err(|e| format!("read link {path}: {e}"))?;
                out.push(Entry::Link {
                    path,
                    target: target.to_string_lossy().into_owned(),
                });
            }
            // FIFOs, sockets and devices have no place in a context.
            _ => {}
        }
    }
    Ok(())
}

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Appends a ustar header. Names up to 255 bytes (split into prefix and name).
fn header(
    tar: &mut Vec<u8>,
    path: &str,
    mode: u32,
    size: u64,
    kind: u8,
    link: &str,
) -> Result<(), String> {
    let mut h = [0u8; 512];
    let (prefix, name) = split_name(path).ok_or_else(|| format!("path {path:?} is too long"))?;
    if link.len() > 100 {
        return Err(format!("link target of {path:?} is too long"));
    }
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    octal(&mut h[148..155], sum);
    h[155] = b' ';
    tar.extend_from_slice(&h);
    Ok(())
}

/// `(prefix, name)` with name ≤ 100 and prefix ≤ 155 bytes, split at a `/`.
fn split_name(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some(("", path));
    }
    let bytes = path.as_bytes();
    (0..bytes.len())
        .filter(|&i| bytes[i] == b'/')
        .find(|&i| i <= 155 && path.len() - i - 1 <= 100 && path.len() - i - 1 > 0)
        .map(|i| (&path[..i], &path[i + 1..]))
}

/// Zero-padded octal, NUL-terminated, filling `field`.
fn octal(field: &mut [u8], v: u64) {
    let width = field.len() - 1;
    let text = format!("{v:0width$o}");
    let text = &text.as_bytes()[text.len().saturating_sub(width)..];
    field[..width].copy_from_slice(text);
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    // In tests a panic is the failure report.
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_context_packs_as_a_tar_and_its_digest_follows_its_content() {
        let root = tempfile::tempdir().unwrap();
        let ctx = root.path().join("app");
        std::fs::create_dir_all(ctx.join("src")).unwrap();
        std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(ctx.join("src/main.txt"), "hello").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", ctx.join("leak")).unwrap();
        let a = pack(root.path(), &ctx, "Dockerfile", None).unwrap();
        // A link is sent as a link, never read through.
        let text = String::from_utf8_lossy(&a.tar);
        assert!(
            text.contains("/etc/shadow") && !text.contains("root:"),
            "link target only"
        );
        assert!(text.contains("src/main.txt") && text.contains("hello"));
        assert_eq!(a.tar.len() % 512, 0);
        assert_eq!(
            pack(root.path(), &ctx, "Dockerfile", None).unwrap().digest,
            a.digest
        );
        std::fs::write(ctx.join("src/main.txt"), "changed").unwrap();
        let b = pack(root.path(), &ctx, "Dockerfile", None).unwrap();
        assert_ne!(a.digest, b.digest);
        let c = pack(root.path(), &ctx, "Dockerfile", Some("FROM busybox\n")).unwrap();
        assert_ne!(b.digest, c.digest);
        assert!(String::from_utf8_lossy(&c.tar).contains(INLINE_DOCKERFILE));
    }

    #[test]
    fn a_context_reached_through_a_link_is_refused() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("ctx")).unwrap();
        let e = pack(root.path(), &root.path().join("ctx"), "Dockerfile", None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("link"), "{e}");
    }

    /// `.dockerignore` leaves files out of the tar and out of the digest; the Dockerfile
    /// is sent even when listed; secret-looking files still sent are named.
    #[test]
    fn dockerignore_leaves_files_out_of_the_tar_and_the_digest() {
        let root = tempfile::tempdir().unwrap();
        let ctx = root.path().join("app");
        std::fs::create_dir_all(ctx.join("logs/old")).unwrap();
        std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(ctx.join(".dockerignore"), "logs\n*.pem\nDockerfile\n").unwrap();
        std::fs::write(ctx.join("logs/old/a.log"), "noise-1").unwrap();
        std::fs::write(ctx.join("server.pem"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
        std::fs::write(ctx.join("deploy.key"), "k").unwrap();
        std::fs::write(ctx.join("app.txt"), "app").unwrap();
        let a = pack(root.path(), &ctx, "Dockerfile", None).unwrap();
        let text = String::from_utf8_lossy(&a.tar);
        assert!(
            !text.contains("noise-1") && !text.contains("logs/"),
            "ignored dir"
        );
        assert!(!text.contains("server.pem") && !text.contains("BEGIN PRIVATE"));
        assert!(text.contains("Dockerfile") && text.contains("app.txt"));
        assert_eq!(
            a.secret_looking,
            ["deploy.key (is named like a credentials file)"]
        );
        // An ignored file's change leaves the digest as it was; a sent file's does not.
        std::fs::write(ctx.join("logs/old/a.log"), "noise-2").unwrap();
        std::fs::write(ctx.join("server.pem"), "-----BEGIN PRIVATE KEY-----\nother").unwrap();
        assert_eq!(
            pack(root.path(), &ctx, "Dockerfile", None).unwrap().digest,
            a.digest
        );
        std::fs::write(ctx.join("app.txt"), "app2").unwrap();
        assert_ne!(
            pack(root.path(), &ctx, "Dockerfile", None).unwrap().digest,
            a.digest
        );
    }
}
