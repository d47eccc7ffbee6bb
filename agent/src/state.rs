//! The agent's state directory (0700): identity key (0600), certificate chain, pinned trust
//! bundle, enrollment facts, and the last desired state so it keeps enforcing it while
//! the coordinator is away. Every file is written atomically.

use phoenix_pki::statedir::{self, StateDirError};
use phoenix_pki::statedir::{write_atomic, write_private};
use phoenix_proto::model::{DesiredState, GuestId, TrustDomain};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the agent keeps its state unless told otherwise. Stacks may not bind it: it
/// holds the identity key and the stack owner key.
pub const DEFAULT_STATE_DIR: &str = phoenix_proto::model::compose::grants::DEFAULT_AGENT_STATE_DIR;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("state directory: {0}")]
    Insecure(#[from] StateDirError),
    #[error(
        "this agent is not enrolled ({path} missing): run `phoenix token create --guest <id>` on the host, then `phoenix-agent join <token>` here"
    )]
    NotEnrolled { path: PathBuf },
}

/// Facts fixed at enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub guest: GuestId,
    /// The coordinator the agent joined through.
    pub coordinator: String,
    /// The other coordinator replicas of a cluster (from the join token), tried when
    /// `coordinator` cannot be reached. Absent in files written before clusters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    pub trust_domain: TrustDomain,
}

impl Enrollment {
    /// Every coordinator address, the one joined through first.
    pub fn coordinators(&self) -> Vec<String> {
        let mut all = vec![self.coordinator.clone()];
        for r in &self.replicas {
            if !all.contains(r) {
                all.push(r.clone());
            }
        }
        all
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub revision: u64,
    pub digest: String,
}

pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        // Warnings are logged by `secure`; a loose mode is fixed, a link refused.
        statedir::secure(dir, &["key.pem", "key.next.pem"])?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Result<Option<String>, StateError> {
        let path = self.path(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    fn write(&self, name: &str, bytes: &[u8], private: bool) -> Result<(), StateError> {
        let path = self.path(name);
        let r = if private {
            write_private(&path, bytes)
        } else {
            write_atomic(&path, bytes, 0o644)
        };
        r.map_err(|source| StateError::Io {
            action: "write",
            path,
            source,
        })
    }

    fn json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, StateError> {
        match self.read(name)? {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| StateError::Corrupt {
                    path: self.path(name),
                    reason: e.to_string(),
                }),
        }
    }

    pub fn enrollment(&self) -> Result<Enrollment, StateError> {
        self.json("agent.json")?
            .ok_or_else(|| StateError::NotEnrolled {
                path: self.path("agent.json"),
            })
    }

    /// Writes a whole new identity. The key goes first and enrollment facts last, so a
    /// crash in between leaves "not enrolled", never a mismatched key and cert.
    pub fn save_identity(
        &self,
        enrollment: &Enrollment,
        key_pem: &str,
        chain_pem: &str,
        roots_pem: &str,
    ) -> Result<(), StateError> {
        self.write("key.pem", key_pem.as_bytes(), true)?;
        self.write("cert.pem", chain_pem.as_bytes(), false)?;
        self.write("roots.pem", roots_pem.as_bytes(), false)?;
        let json = serde_json::to_vec_pretty(enrollment).unwrap_or_default();
        self.write("agent.json", &json, false)
    }

    /// After a renewal. Key and cert must stay a pair across a crash: the new key is
    /// written under a new name first, then both are renamed in order; a crash between
    /// the renames is repaired by `identity()` noticing the mismatch and using `key.next`.
    pub fn save_renewed(
        &self,
        key_pem: &str,
        chain_pem: &str,
        roots_pem: &str,
    ) -> Result<(), StateError> {
        self.write("key.next.pem", key_pem.as_bytes(), true)?;
        self.write("cert.pem", chain_pem.as_bytes(), false)?;
        std::fs::rename(self.path("key.next.pem"), self.path("key.pem")).map_err(|source| {
            StateError::Io {
                action: "rename",
                path: self.path("key.pem"),
                source,
            }
        })?;
        self.write("roots.pem", roots_pem.as_bytes(), false)
    }

    /// (chain, key, roots) PEMs.
    pub fn identity(&self) -> Result<(String, String, String), StateError> {
        let missing = |name: &str| StateError::NotEnrolled {
            path: self.path(name),
        };
        let chain = self.read("cert.pem")?.ok_or_else(|| missing("cert.pem"))?;
        let roots = self
            .read("roots.pem")?
            .ok_or_else(|| missing("roots.pem"))?;
        let key = self.read("key.pem")?.ok_or_else(|| missing("key.pem"))?;
        if let Some(next) = self.read("key.next.pem")? {
            // A renewal crashed between writing cert.pem and renaming the key.
            if phoenix_pki::tls::Identity::from_pem(&chain, &key).is_err()
                && phoenix_pki::tls::Identity::from_pem(&chain, &next).is_ok()
            {
                return Ok((chain, next, roots));
            }
        }
        Ok((chain, key, roots))
    }

    pub fn desired(&self) -> Result<Option<DesiredState>, StateError> {
        self.json("desired.json")
    }

    pub fn save_desired(&self, d: &DesiredState) -> Result<(), StateError> {
        let json = serde_json::to_vec(d).unwrap_or_default();
        // The spec may name secret paths; keep it private to root.
        self.write("desired.json", &json, true)
    }

    pub fn applied(&self) -> Result<Applied, StateError> {
        Ok(self.json("applied.json")?.unwrap_or_default())
    }

    pub fn save_applied(&self, a: &Applied) -> Result<(), StateError> {
        let json = serde_json::to_vec(a).unwrap_or_default();
        self.write("applied.json", &json, false)
    }
}
