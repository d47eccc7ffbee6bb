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

/// Most replica addresses an agent keeps (a coordinator's list beyond it is cut).
pub const MAX_REPLICAS: usize = 32;

/// The replica addresses a coordinator sent, checked before they are kept: each a
/// `host:port` of printable characters (at most 255), at most [`MAX_REPLICAS`] of them,
/// duplicates dropped. An empty or invalid list changes nothing.
pub fn replica_addrs(addrs: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for a in addrs.iter().take(MAX_REPLICAS) {
        let port = a.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
        let ok = a.len() <= 255
            && a.chars().all(|c| c.is_ascii_graphic())
            && matches!(port, Some((h, Ok(p))) if !h.is_empty() && p != 0);
        if !ok {
            return Err(format!("{a:?} is not a host:port address"));
        }
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    if out.is_empty() {
        return Err("the list is empty".into());
    }
    Ok(out)
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

    /// Rewrites the enrollment facts (a new replica list), atomically.
    pub fn save_enrollment(&self, enrollment: &Enrollment) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(enrollment).unwrap_or_default();
        self.write("agent.json", &json, false)
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

    /// The last desired state to enforce at start. One this build cannot read (the older
    /// compose-text stack shape a pre-0008 agent saved, which only the coordinator parses
    /// now; or a damaged file) is logged and set aside: the agent then enforces nothing
    /// until the coordinator sends the state again, which overwrites the file. Refusing to
    /// start instead would restart-loop the agent and never reach the coordinator.
    pub fn desired_at_start(&self) -> Result<Option<DesiredState>, StateError> {
        match self.desired() {
            Err(StateError::Corrupt { path, reason }) => {
                tracing::error!(
                    path = %path.display(),
                    %reason,
                    "last desired state unreadable; enforcing nothing until the coordinator sends it again"
                );
                Ok(None)
            }
            other => other,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_last_state_is_set_aside_at_start_not_fatal() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).expect("mkdir");
        let state = StateDir::open(&dir).expect("open");
        assert_eq!(state.desired_at_start().expect("absent"), None);
        for unreadable in [
            "{not json",
            // A stack this build cannot turn into a project.
            r#"{"revision": 3, "digest": "d", "dry_run": false, "spec": {"resources": [
                {"kind": "stack", "name": "web", "compose": "services: {a: {image: x}}",
                 "project": {"bogus": true}}]}}"#,
        ] {
            std::fs::write(dir.join("desired.json"), unreadable).expect("write");
            assert!(state.desired().is_err(), "{unreadable}");
            assert_eq!(state.desired_at_start().expect("set aside"), None);
        }
    }

    #[test]
    fn replica_lists_are_checked_before_they_are_kept() {
        let ok = |v: &[&str]| replica_addrs(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            ok(&[
                "10.0.0.1:7443",
                "pve2.lab:7443",
                "10.0.0.1:7443",
                "[::1]:7443"
            ]),
            Ok(vec![
                "10.0.0.1:7443".to_string(),
                "pve2.lab:7443".to_string(),
                "[::1]:7443".to_string()
            ])
        );
        for bad in [
            &[][..],
            &["10.0.0.1"][..],
            &[":7443"][..],
            &["10.0.0.1:0"][..],
            &["a b:7443"][..],
            &["10.0.0.1:7443", "x\n:1"][..],
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..100).map(|i| format!("10.0.0.{i}:7443")).collect();
        assert_eq!(replica_addrs(&many).map(|l| l.len()), Ok(MAX_REPLICAS));
    }
}
