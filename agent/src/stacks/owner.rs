//! Proof that a container or network was created by this agent.
//!
//! A `phoenix.stack` label proves nothing: anyone who can run `docker run --label` can
//! set it, and the converger would then adopt the container as a service or remove it
//! as an orphan. So everything the agent creates also carries
//! `phoenix.owner = hex(HMAC-SHA256(owner key, kind \0 stack \0 name))`, keyed by a
//! 32-byte secret kept in the agent's state directory (`stack-owner.key`, 0600). A label
//! cannot be forged without the key, and it is bound to the object's name, so copying
//! the label of one of our containers onto another name proves nothing either.
//!
//! Limits: whoever can read the key (root, or a container that binds the state
//! directory, which is why such a bind is a host-root grant) can forge the label. Losing
//! the state directory loses the key; the agent's containers then show as conflicts and
//! must be removed by hand (`docker rm -f`) before the stack is recreated.

use ring::hmac;
use std::path::{Path, PathBuf};

/// The label that carries the proof.
pub const LABEL_OWNER: &str = "phoenix.owner";
const KEY_FILE: &str = "stack-owner.key";

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("read stack owner key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "stack owner key {path} is not 64 hex digits; remove it only if no stack containers exist"
    )]
    Corrupt { path: PathBuf },
    #[error("write stack owner key {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What kind of engine object a proof is for, so a container's label never proves a
/// network of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Container,
    Network,
    Volume,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Container => "container",
            Kind::Network => "network",
            Kind::Volume => "volume",
        }
    }
}

pub struct OwnerKey {
    key: hmac::Key,
    dir: PathBuf,
}

impl std::fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerKey")
            .field("dir", &self.dir)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl OwnerKey {
    /// Reads `<dir>/stack-owner.key`, creating it (32 random bytes, 0600, atomically)
    /// on first use. `dir` is the agent's state directory.
    pub fn load_or_create(dir: &Path) -> Result<Self, OwnerError> {
        let path = dir.join(KEY_FILE);
        let bytes = match std::fs::read_to_string(&path) {
            Ok(text) => hex::decode(text.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| OwnerError::Corrupt { path: path.clone() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let fresh: [u8; 32] = rand::random();
                phoenix_pki::statedir::write_private(&path, hex::encode(fresh).as_bytes())
                    .map_err(|source| OwnerError::Write {
                        path: path.clone(),
                        source,
                    })?;
                fresh.to_vec()
            }
            Err(source) => return Err(OwnerError::Read { path, source }),
        };
        Ok(OwnerKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            dir: dir.to_path_buf(),
        })
    }

    /// The directory holding the key: a container that binds it could forge proofs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn message(kind: Kind, stack: &str, name: &str) -> Vec<u8> {
        [kind.as_str(), stack, name].join("\0").into_bytes()
    }

    /// The `phoenix.owner` label value for an object this agent creates.
    pub fn tag(&self, kind: Kind, stack: &str, name: &str) -> String {
        hex::encode(hmac::sign(&self.key, &Self::message(kind, stack, name)).as_ref())
    }

    /// Whether `label` (the object's `phoenix.owner`) proves this agent created the
    /// object `name` of `stack`. Compared in constant time.
    pub fn proves(&self, kind: Kind, stack: &str, name: &str, label: Option<&String>) -> bool {
        let Some(tag) = label.and_then(|l| hex::decode(l).ok()) else {
            return false;
        };
        hmac::verify(&self.key, &Self::message(kind, stack, name), &tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    // In tests a panic is the failure report.
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn proofs_are_bound_to_key_kind_stack_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let k = OwnerKey::load_or_create(dir.path()).unwrap();
        let tag = k.tag(Kind::Container, "s", "s-web-1");
        assert!(k.proves(Kind::Container, "s", "s-web-1", Some(&tag)));
        assert!(!k.proves(Kind::Container, "s", "s-other-1", Some(&tag)));
        assert!(!k.proves(Kind::Network, "s", "s-web-1", Some(&tag)));
        assert!(!k.proves(Kind::Container, "t", "s-web-1", Some(&tag)));
        assert!(!k.proves(Kind::Container, "s", "s-web-1", None));
        assert!(!k.proves(Kind::Container, "s", "s-web-1", Some(&"zz".into())));
        // The key persists: a restarted agent still recognises its containers.
        let again = OwnerKey::load_or_create(dir.path()).unwrap();
        assert!(again.proves(Kind::Container, "s", "s-web-1", Some(&tag)));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // Another guest's key proves nothing here.
        let other = tempfile::tempdir().unwrap();
        let k2 = OwnerKey::load_or_create(other.path()).unwrap();
        assert!(!k2.proves(Kind::Container, "s", "s-web-1", Some(&tag)));
    }

    #[test]
    fn a_damaged_key_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "short").unwrap();
        let e = OwnerKey::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, OwnerError::Corrupt { .. }), "{e}");
    }
}
