//! Host I/O shared by the resource modules: atomic file replacement and reading a secret
//! where the agent finds it. Blocking std I/O on small files; callers run it inline.

use crate::hostfs::{self, FileAttrs};
use phoenix_proto::model::SecretRef;
use std::fs;
use std::io;
use std::path::Path;

/// Replaces `path` (beneath `root`) with `bytes` so that a reader sees the old or the new
/// content, never a mix, and so that no link below `root` is followed
/// ([`hostfs::write_beneath`]). Creates `root` and missing directories below it (0755).
pub(crate) fn write_atomic(root: &Path, path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let attrs = FileAttrs {
        mode,
        uid: None,
        gid: None,
    };
    Ok(hostfs::write_beneath(root, path, bytes, attrs, true)?)
}

/// The current content of `path` (beneath `root`), `None` when it does not exist; a link
/// at it or at a directory below `root` is an error, never followed.
pub(crate) fn read_if_exists(root: &Path, path: &Path) -> io::Result<Option<Vec<u8>>> {
    Ok(hostfs::read_beneath(root, path)?.map(|e| e.bytes))
}

/// Removes the name `path` beneath `root` (a link there is removed, not followed).
pub(crate) fn remove(root: &Path, path: &Path) -> io::Result<()> {
    hostfs::remove_beneath(root, path)?;
    Ok(())
}

/// Reads a secret's value; the error names where it looked, never the value.
pub(crate) fn read_secret(secret: &SecretRef) -> io::Result<String> {
    match secret {
        SecretRef::File(p) => {
            let s = fs::read_to_string(p.as_path())
                .map_err(|e| io::Error::new(e.kind(), format!("read secret file {p}: {e}")))?;
            Ok(s.trim_end_matches('\n').to_owned())
        }
        SecretRef::Env(name) => std::env::var(name).map_err(|_| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("secret environment variable {name} is not set"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub/f.conf");
        write_atomic(dir.path(), &p, b"one", 0o600).expect("first write");
        write_atomic(dir.path(), &p, b"two", 0o644).expect("second write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644);
        let leftovers: Vec<_> = fs::read_dir(p.parent().expect("parent"))
            .expect("list")
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
        assert_eq!(
            read_if_exists(dir.path(), &dir.path().join("none")).expect("read"),
            None
        );
    }
}
