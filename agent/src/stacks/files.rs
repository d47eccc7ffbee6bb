//! The host side of a stack's files: env files read beneath the allowed roots, and stack
//! files written beneath them.

use super::StackError;
use crate::hostfs::{self as fsutil, FileAttrs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest env file read from the host; larger is a mistake, not configuration.
const ENV_FILE_MAX: u64 = 1 << 20;

/// Reads an env file from the host, only from beneath one of `roots`. The path below the
/// root is resolved by the kernel (openat2 with RESOLVE_BENEATH and RESOLVE_NO_MAGICLINKS
/// against the root's directory fd), so neither `..` nor a symlink, even one swapped in
/// while we read, leads outside the root; links that stay inside are followed. Only a
/// regular file is read (a FIFO would block the pass, a device would never end). Returns
/// why not, as text for `StackError::EnvFile`.
pub(super) fn read_env_file(roots: &[PathBuf], path: &str) -> Result<String, String> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    use std::io::Read;
    let p = Path::new(path);
    let inside = |r: &&PathBuf| {
        p.starts_with(r)
            && p != r.as_path()
            && !p.components().any(|c| c == std::path::Component::ParentDir)
    };
    let Some(root) = roots.iter().find(inside) else {
        let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        return Err(format!(
            "is outside the allowed roots ({}); keep env files beneath one of them",
            if roots.is_empty() {
                "none configured".to_string()
            } else {
                roots.join(", ")
            }
        ));
    };
    let rel = p.strip_prefix(root).map_err(|e| e.to_string())?;
    let dir = std::fs::File::open(root)
        .map_err(|e| format!("open allowed root {}: {e}", root.display()))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(&dir, rel, how).map_err(|e| match e {
        nix::errno::Errno::EXDEV | nix::errno::Errno::ELOOP => format!(
            "leads outside the allowed root {} through a link or '..'; refusing to read it",
            root.display()
        ),
        e => format!("open: {e}"),
    })?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| format!("stat: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("is not a regular file".into());
    }
    if meta.len() > ENV_FILE_MAX {
        return Err(format!("is larger than {ENV_FILE_MAX} bytes"));
    }
    let mut text = String::new();
    file.take(ENV_FILE_MAX)
        .read_to_string(&mut text)
        .map_err(|e| format!("read: {e}"))?;
    Ok(text)
}

pub(super) fn parse_env_file(
    stack: &str,
    path: &str,
    text: &str,
) -> Result<BTreeMap<String, String>, StackError> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| StackError::EnvFileLine {
                stack: stack.into(),
                path: path.into(),
                line: n + 1,
            })?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

pub(super) fn write_stack_file(
    stack: &str,
    root: &Path,
    path: &Path,
    content: &str,
) -> Result<(), StackError> {
    let attrs = FileAttrs {
        mode: 0o644,
        uid: None,
        gid: None,
    };
    fsutil::write_beneath(root, path, content.as_bytes(), attrs, true).map_err(|e| StackError::Io {
        stack: stack.to_string(),
        action: "write",
        path: path.display().to_string(),
        source: e.into(),
    })
}
