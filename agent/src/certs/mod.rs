//! Guest service certificates (the `cert` resource kind): the key is made here and never
//! leaves the guest; the coordinator signs the CSR (only for what this guest declares).
//! New material is verified before it is written, written atomically with the declared
//! owner and mode (restored on every renewal), re-read and verified, and only then are the
//! declared reloads run, once per renewal.

pub mod signer;

pub use signer::{CertSigner, SessionSigner, SignError, SignedCert};

use crate::files::{resolve_group, resolve_user};
use crate::hostfs::{self, Existing, FileAttrs, FsError};
use crate::reconcile::{Check, Converge, PassContext, ResourceError};
use crate::systemd::{ServiceManager, Verb};
use phoenix_pki::tls::{Identity, TrustStore};
use phoenix_pki::{San, keys, rotation, x509};
use phoenix_proto::model::{AbsPath, CertSpec, Reload};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cert {name}: {path} is outside the allowed roots")]
    OutsideRoots { name: String, path: String },
    #[error("cert {name}: new certificate rejected before writing: {reason}")]
    Verify { name: String, reason: String },
    #[error("cert {name}: {action} {path}: {source}")]
    Fs {
        name: String,
        action: &'static str,
        path: String,
        #[source]
        source: FsError,
    },
    #[error("cert {name}: {0}", name = .1)]
    Key(keys::KeyError, String),
    #[error("cert {name}: reload {what}: {reason}")]
    Reload {
        name: String,
        what: String,
        reason: String,
    },
}

pub struct CertConverger {
    roots: Vec<PathBuf>,
    signer: Arc<dyn CertSigner>,
    services: Arc<dyn ServiceManager>,
}

/// One file of a certificate resource with the metadata it must have.
struct Target<'a> {
    path: &'a AbsPath,
    mode: u32,
}

/// The SANs a spec's certificate must carry: its SANs, plus the CN (clients match
/// names against SANs only).
fn wanted_sans(spec: &CertSpec) -> Vec<String> {
    let mut sans = vec![spec.common_name.clone()];
    for s in &spec.sans {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    sans
}

fn san_strings(sans: &[San]) -> Vec<String> {
    let mut v: Vec<String> = sans
        .iter()
        .filter_map(|s| match s {
            San::Dns(d) => Some(d.clone()),
            San::Ip(i) => Some(i.to_string()),
            San::Uri(_) => None,
        })
        .collect();
    v.sort();
    v
}

impl CertConverger {
    pub fn new(
        roots: Vec<PathBuf>,
        signer: Arc<dyn CertSigner>,
        services: Arc<dyn ServiceManager>,
    ) -> Self {
        CertConverger {
            roots,
            signer,
            services,
        }
    }

    fn targets<'a>(&self, spec: &'a CertSpec) -> Vec<Target<'a>> {
        let mut t = vec![
            Target {
                path: &spec.key_path,
                mode: spec.key_mode.bits(),
            },
            Target {
                path: &spec.cert_path,
                mode: spec.mode.bits(),
            },
        ];
        for p in [&spec.chain_path, &spec.ca_path].into_iter().flatten() {
            t.push(Target {
                path: p,
                mode: spec.mode.bits(),
            });
        }
        t
    }

    /// The allowed root `path` is resolved beneath (links below it are refused).
    fn root_of(&self, spec: &CertSpec, path: &AbsPath) -> Result<&Path, CertError> {
        hostfs::root_of(&self.roots, path.as_path()).ok_or_else(|| CertError::OutsideRoots {
            name: spec.name.clone(),
            path: path.to_string(),
        })
    }

    /// A target's current content and metadata, read without following links.
    fn read(
        &self,
        spec: &CertSpec,
        path: &AbsPath,
        action: &'static str,
    ) -> Result<Option<Existing>, CertError> {
        let fs_err = |source| CertError::Fs {
            name: spec.name.clone(),
            action,
            path: path.to_string(),
            source,
        };
        hostfs::read_beneath(self.root_of(spec, path)?, path.as_path()).map_err(fs_err)
    }

    fn ids(
        &self,
        spec: &CertSpec,
        path: &Path,
    ) -> Result<(Option<u32>, Option<u32>), ResourceError> {
        let uid = spec
            .owner
            .as_deref()
            .map(|o| resolve_user(path, o))
            .transpose()?;
        let gid = spec
            .group
            .as_deref()
            .map(|g| resolve_group(path, g))
            .transpose()?;
        Ok((uid, gid))
    }

    /// Why the certificate material itself must be (re)issued, if it must.
    fn material_drift(&self, spec: &CertSpec) -> Option<String> {
        // A refusal (a planted link) counts as missing here; `metadata_drift` reports it.
        let read = |p: &AbsPath| {
            self.read(spec, p, "read")
                .ok()
                .flatten()
                .and_then(|e| String::from_utf8(e.bytes).ok())
        };
        let (Some(cert), Some(key)) = (read(&spec.cert_path), read(&spec.key_path)) else {
            return Some(format!(
                "issue certificate for {} (files missing)",
                spec.common_name
            ));
        };
        let chain = match &spec.chain_path {
            Some(p) => read(p).unwrap_or_default(),
            None => cert.clone(),
        };
        let Ok(id) = Identity::from_pem(&chain, &key) else {
            return Some("reissue: key does not match certificate (or unreadable)".into());
        };
        if id.info.common_name != spec.common_name {
            return Some(format!(
                "reissue: CN {} → {}",
                id.info.common_name, spec.common_name
            ));
        }
        let mut want = wanted_sans(spec);
        want.sort();
        let have = san_strings(&id.info.sans);
        if have != want {
            return Some(format!("reissue: SANs {have:?} → {want:?}"));
        }
        if let Some(ca) = &spec.ca_path {
            match read(ca).and_then(|roots| TrustStore::from_pem(&roots).ok()) {
                Some(trust) if trust.verify_chain(&chain).is_ok() => {}
                _ => return Some("reissue: chain does not verify against the CA bundle".into()),
            }
        }
        let due = rotation::renew_at(id.info.not_before, id.info.not_after, 0.0);
        if SystemTime::now() >= due {
            return Some(format!(
                "renew: past 2/3 of its lifetime (expires {:?})",
                id.info.not_after
            ));
        }
        None
    }

    fn metadata_drift(&self, spec: &CertSpec) -> Result<Vec<String>, ResourceError> {
        let mut out = Vec::new();
        for t in self.targets(spec) {
            let Some(have) = self.read(spec, t.path, "inspect")? else {
                continue;
            };
            let mode = have.mode;
            if mode != t.mode {
                out.push(format!("{}: mode {mode:04o} → {:04o}", t.path, t.mode));
            }
            let (uid, gid) = self.ids(spec, t.path.as_path())?;
            if uid.is_some_and(|u| u != have.uid) || gid.is_some_and(|g| g != have.gid) {
                out.push(format!(
                    "{}: owner {}:{} → {}:{}",
                    t.path,
                    have.uid,
                    have.gid,
                    spec.owner.as_deref().unwrap_or("-"),
                    spec.group.as_deref().unwrap_or("-")
                ));
            }
        }
        Ok(out)
    }

    fn write(
        &self,
        spec: &CertSpec,
        path: &AbsPath,
        bytes: &[u8],
        mode: u32,
    ) -> Result<(), ResourceError> {
        let (uid, gid) = self.ids(spec, path.as_path())?;
        let root = self.root_of(spec, path)?;
        let attrs = FileAttrs { mode, uid, gid };
        hostfs::write_beneath(root, path.as_path(), bytes, attrs, true).map_err(|source| {
            Box::new(CertError::Fs {
                name: spec.name.clone(),
                action: "write",
                path: path.to_string(),
                source,
            }) as ResourceError
        })
    }

    async fn reload(&self, spec: &CertSpec) -> Result<Vec<String>, ResourceError> {
        let mut done = Vec::new();
        for r in &spec.reload {
            let (verb, unit) = match r {
                Reload::ServiceReload(u) => (Verb::Reload, u),
                Reload::ServiceRestart(u) => (Verb::Restart, u),
                Reload::ContainerRestart(c) => {
                    return Err(Box::new(CertError::Reload {
                        name: spec.name.clone(),
                        what: format!("container {c}"),
                        reason:
                            "container restarts after renewal are not supported by this agent build"
                                .into(),
                    }));
                }
            };
            self.services
                .control(verb, unit)
                .await
                .map_err(|e| CertError::Reload {
                    name: spec.name.clone(),
                    what: unit.clone(),
                    reason: e.to_string(),
                })?;
            done.push(format!("{verb:?} {unit}").to_lowercase());
        }
        Ok(done)
    }
}

#[async_trait::async_trait]
impl Converge<CertSpec> for CertConverger {
    fn validate(&self, spec: &CertSpec) -> Result<(), ResourceError> {
        for t in self.targets(spec) {
            self.root_of(spec, t.path)?;
        }
        Ok(())
    }

    async fn check(&self, spec: &CertSpec, _cx: &PassContext) -> Result<Check, ResourceError> {
        let mut diff: Vec<String> = self.material_drift(spec).into_iter().collect();
        diff.extend(self.metadata_drift(spec)?);
        Ok(if diff.is_empty() {
            Check::InSync
        } else {
            Check::Drift {
                diff: diff.join("\n"),
            }
        })
    }

    async fn apply(&self, spec: &CertSpec, _cx: &PassContext) -> Result<String, ResourceError> {
        if self.material_drift(spec).is_none() {
            // Only owner/mode drifted: fix them, no new certificate, no reload.
            for t in self.targets(spec) {
                let (uid, gid) = self.ids(spec, t.path.as_path())?;
                let attrs = FileAttrs {
                    mode: t.mode,
                    uid,
                    gid,
                };
                hostfs::set_attrs_beneath(self.root_of(spec, t.path)?, t.path.as_path(), attrs)
                    .map_err(|source| CertError::Fs {
                        name: spec.name.clone(),
                        action: "fix owner and mode of",
                        path: t.path.to_string(),
                        source,
                    })?;
            }
            return Ok("fixed owner/mode".into());
        }
        let key = keys::generate().map_err(|e| CertError::Key(e, spec.name.clone()))?;
        let sans = wanted_sans(spec);
        let san_list: Vec<San> = sans.iter().map(|s| San::host(s)).collect();
        let csr = keys::csr(&key, &spec.common_name, &san_list)
            .map_err(|e| CertError::Key(e, spec.name.clone()))?;
        let signed = self
            .signer
            .sign(
                csr,
                spec.common_name.clone(),
                sans.clone(),
                spec.ttl_seconds,
            )
            .await?;
        let verify_err = |reason: String| CertError::Verify {
            name: spec.name.clone(),
            reason,
        };
        // Everything is checked before a single byte is written.
        let key_pem = key.serialize_pem();
        let id = Identity::from_pem(&signed.chain_pem, &key_pem)
            .map_err(|e| verify_err(e.to_string()))?;
        TrustStore::from_pem(&signed.roots_pem)
            .and_then(|t| t.verify_chain(&signed.chain_pem))
            .map_err(|e| verify_err(e.to_string()))?;
        let mut want = sans.clone();
        want.sort();
        if id.info.common_name != spec.common_name || san_strings(&id.info.sans) != want {
            return Err(Box::new(verify_err(format!(
                "got CN {} SANs {:?}, wanted CN {} SANs {want:?}",
                id.info.common_name,
                san_strings(&id.info.sans),
                spec.common_name
            ))));
        }
        let chain =
            x509::parse_chain(&signed.chain_pem, "chain").map_err(|e| verify_err(e.to_string()))?;
        let leaf_pem = x509::to_pem(&chain[0]);
        self.write(
            spec,
            &spec.key_path,
            key_pem.as_bytes(),
            spec.key_mode.bits(),
        )?;
        match &spec.chain_path {
            Some(p) => {
                self.write(spec, &spec.cert_path, leaf_pem.as_bytes(), spec.mode.bits())?;
                self.write(spec, p, signed.chain_pem.as_bytes(), spec.mode.bits())?;
            }
            None => self.write(
                spec,
                &spec.cert_path,
                signed.chain_pem.as_bytes(),
                spec.mode.bits(),
            )?,
        }
        if let Some(p) = &spec.ca_path {
            self.write(spec, p, signed.roots_pem.as_bytes(), spec.mode.bits())?;
        }
        // What the service will read must be what we verified.
        if let Some(reason) = self.material_drift(spec) {
            return Err(Box::new(verify_err(format!(
                "written files do not verify: {reason}"
            ))));
        }
        let reloaded = self.reload(spec).await?;
        Ok(format!(
            "issued serial {} (expires {:?}){}",
            id.info.serial_hex,
            id.info.not_after,
            if reloaded.is_empty() {
                String::new()
            } else {
                format!("; {}", reloaded.join(", "))
            }
        ))
    }
}

#[cfg(test)]
mod tests;
