//! Guest service certificates (the `cert` resource kind): the key is made here and never
//! leaves the guest; the coordinator signs the CSR (only for what this guest declares).
//! New material is verified before it is written, written atomically with the declared
//! owner and mode (restored on every renewal), re-read and verified, and only then are the
//! declared reloads run, once per renewal.
//!
//! Every `Reload` the model accepts is carried out here (the match has no refusing arm, so
//! a new variant does not compile until it is implemented). What depends on the host is
//! checked before anything is written: `validate` refuses a container restart on a host
//! without a container engine, and a new certificate is not requested while a container
//! it must restart does not exist.
//!
//! A reload that fails leaves a "reload pending" mark in the agent's ledger; every later
//! pass retries the reloads until they succeed, without issuing a new certificate.
//! Cert files count as files Phoenix wrote ([`crate::files::ledger`]): an existing file
//! Phoenix did not write is backed up before it is replaced.

pub mod signer;

pub use signer::{CertSigner, SessionSigner, SignError, SignedCert};

use crate::files::ledger::{Ledger, LedgerError, Owned};
use crate::files::{replace_line, resolve_group, resolve_user};
use crate::hostfs::{self, Existing, FileAttrs, FsError};
use crate::reconcile::{Check, Converge, PassContext, ResourceError};
use crate::stacks::engine::ContainerEngine;
use crate::systemd::{ServiceManager, Verb};
use phoenix_pki::tls::{Identity, TrustStore};
use phoenix_pki::{San, keys, rotation, x509};
use phoenix_proto::model::{AbsPath, CertSpec, ContainerName, Reload};
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
    #[error("cert {name}: reload {what}: {reason} (reload pending: retried on every pass)")]
    Reload {
        name: String,
        what: String,
        reason: String,
    },
    #[error("cert {name}: {source}")]
    Ledger {
        name: String,
        #[source]
        source: LedgerError,
    },
}

pub struct CertConverger {
    roots: Vec<PathBuf>,
    signer: Arc<dyn CertSigner>,
    services: Arc<dyn ServiceManager>,
    /// Restarts the containers named by `container_restart`; `None` on a host without a
    /// usable engine, where such certs fail validation.
    containers: Option<Arc<dyn ContainerEngine>>,
    /// Which files Phoenix wrote, and which certs still owe a reload.
    ledger: Arc<Ledger>,
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
        containers: Option<Arc<dyn ContainerEngine>>,
    ) -> Self {
        CertConverger {
            roots,
            signer,
            services,
            containers,
            ledger: Arc::new(Ledger::memory()),
        }
    }

    /// The agent's persisted ledger (tests use an in-memory one by default).
    pub fn with_ledger(mut self, ledger: Arc<Ledger>) -> Self {
        self.ledger = ledger;
        self
    }

    fn ledger_err(spec: &CertSpec) -> impl FnOnce(LedgerError) -> CertError + '_ {
        move |source| CertError::Ledger {
            name: spec.name.to_string(),
            source,
        }
    }

    /// Targets that exist and were not written by Phoenix: replaced only with a backup.
    fn foreign<'a>(&self, spec: &'a CertSpec) -> Vec<&'a AbsPath> {
        self.targets(spec)
            .into_iter()
            .filter(|t| self.ledger.file(t.path.as_path()).is_none())
            .filter(|t| matches!(self.read(spec, t.path, "inspect"), Ok(Some(_))))
            .map(|t| t.path)
            .collect()
    }

    /// Records the target files as Phoenix's when they already are what is declared
    /// (taken over as they are; never removed by Phoenix).
    fn adopt(&self, spec: &CertSpec) -> Result<(), CertError> {
        for t in self.targets(spec) {
            if self.ledger.file(t.path.as_path()).is_some() {
                continue;
            }
            if let Some(have) = self.read(spec, t.path, "inspect")? {
                self.ledger
                    .record_file(
                        t.path.as_path(),
                        Owned::written(&have.bytes, None, true, None),
                    )
                    .map_err(Self::ledger_err(spec))?;
            }
        }
        Ok(())
    }

    fn containers_to_restart(spec: &CertSpec) -> impl Iterator<Item = &ContainerName> {
        spec.reload.iter().filter_map(|r| match r {
            Reload::ContainerRestart(c) => Some(c),
            Reload::ServiceReload(_) | Reload::ServiceRestart(_) => None,
        })
    }

    fn reload_error(spec: &CertSpec, what: String, reason: String) -> ResourceError {
        Box::new(CertError::Reload {
            name: spec.name.to_string(),
            what,
            reason,
        })
    }

    /// The engine, or why no container can be restarted here.
    fn engine(
        &self,
        spec: &CertSpec,
        c: &ContainerName,
    ) -> Result<&dyn ContainerEngine, ResourceError> {
        self.containers.as_deref().ok_or_else(|| {
            Self::reload_error(
                spec,
                format!("container {c}"),
                "this host has no usable container engine (check DOCKER_HOST and the Docker socket)"
                    .into(),
            )
        })
    }

    /// Every container the renewal must restart exists, checked before a key is made:
    /// a cert is not replaced when its reload could not run.
    async fn check_containers(&self, spec: &CertSpec) -> Result<(), ResourceError> {
        for c in Self::containers_to_restart(spec) {
            self.engine(spec, c)?
                .inspect_state(c)
                .await
                .map_err(|e| Self::reload_error(spec, format!("container {c}"), e.to_string()))?;
        }
        Ok(())
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
            name: spec.name.to_string(),
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
            name: spec.name.to_string(),
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
        let owned = self.ledger.file(path.as_path());
        let before = self.read(spec, path, "inspect")?;
        let backup = match (&before, &owned) {
            (Some(old), None) if old.bytes != bytes => self
                .ledger
                .back_up(path.as_path(), old)
                .map_err(Self::ledger_err(spec))?,
            _ => None,
        };
        let attrs = FileAttrs { mode, uid, gid };
        hostfs::write_beneath(root, path.as_path(), bytes, attrs, true).map_err(|source| {
            Box::new(CertError::Fs {
                name: spec.name.to_string(),
                action: "write",
                path: path.to_string(),
                source,
            }) as ResourceError
        })?;
        let record = Owned::written(bytes, owned.as_ref(), before.is_some(), backup);
        self.ledger
            .record_file(path.as_path(), record)
            .map_err(Self::ledger_err(spec))?;
        Ok(())
    }

    /// `reload nginx.service, restart container web`: the reloads a renewal runs.
    fn reload_list(&self, spec: &CertSpec) -> String {
        spec.reload
            .iter()
            .map(|r| match r {
                Reload::ServiceReload(u) => format!("reload {u}"),
                Reload::ServiceRestart(u) => format!("restart {u}"),
                Reload::ContainerRestart(c) => format!("restart container {c}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Runs every declared reload. The pending mark is persisted first and cleared only
    /// when all of them succeeded, so a failure (or a crash) is retried on the next pass.
    async fn reload(&self, spec: &CertSpec) -> Result<Vec<String>, ResourceError> {
        if spec.reload.is_empty() {
            return Ok(Vec::new());
        }
        let name = spec.name.as_str();
        self.ledger
            .set_reload_pending(name, true)
            .map_err(Self::ledger_err(spec))?;
        let done = self.run_reloads(spec).await?;
        self.ledger
            .set_reload_pending(name, false)
            .map_err(Self::ledger_err(spec))?;
        Ok(done)
    }

    async fn run_reloads(&self, spec: &CertSpec) -> Result<Vec<String>, ResourceError> {
        let mut done = Vec::new();
        for r in &spec.reload {
            let (verb, unit) = match r {
                Reload::ServiceReload(u) => (Verb::Reload, u),
                Reload::ServiceRestart(u) => (Verb::Restart, u),
                Reload::ContainerRestart(c) => {
                    self.engine(spec, c)?
                        .restart_container(c)
                        .await
                        .map_err(|e| {
                            Self::reload_error(spec, format!("container {c}"), e.to_string())
                        })?;
                    done.push(format!("restart container {c}"));
                    continue;
                }
            };
            self.services
                .control(verb, unit)
                .await
                .map_err(|e| Self::reload_error(spec, unit.to_string(), e.to_string()))?;
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
        for c in Self::containers_to_restart(spec) {
            self.engine(spec, c)?;
        }
        Ok(())
    }

    async fn check(&self, spec: &CertSpec, cx: &PassContext) -> Result<Check, ResourceError> {
        let material = self.material_drift(spec);
        let mut diff: Vec<String> = Vec::new();
        if material.is_some() {
            diff.extend(self.foreign(spec).into_iter().map(replace_line));
        }
        diff.extend(material);
        diff.extend(self.metadata_drift(spec)?);
        if diff.is_empty() && self.ledger.reload_pending(spec.name.as_str()) {
            diff.push(format!(
                "reload pending: {} (an earlier reload failed)",
                self.reload_list(spec)
            ));
        }
        if diff.is_empty() && !cx.dry_run {
            self.adopt(spec)?;
        }
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
            // Only owner/mode drifted, or a reload is still owed: no new certificate.
            let metadata = !self.metadata_drift(spec)?.is_empty();
            for t in self.targets(spec).into_iter().filter(|_| metadata) {
                if self.read(spec, t.path, "inspect")?.is_none() {
                    continue;
                }
                let (uid, gid) = self.ids(spec, t.path.as_path())?;
                let attrs = FileAttrs {
                    mode: t.mode,
                    uid,
                    gid,
                };
                hostfs::set_attrs_beneath(self.root_of(spec, t.path)?, t.path.as_path(), attrs)
                    .map_err(|source| CertError::Fs {
                        name: spec.name.to_string(),
                        action: "fix owner and mode of",
                        path: t.path.to_string(),
                        source,
                    })?;
            }
            let mut done = Vec::new();
            if metadata {
                done.push("fixed owner/mode".to_owned());
            }
            if self.ledger.reload_pending(spec.name.as_str()) {
                let reloaded = self.reload(spec).await?;
                done.push(format!("pending reload done: {}", reloaded.join(", ")));
            }
            return Ok(done.join("; "));
        }
        self.check_containers(spec).await?;
        let key = keys::generate().map_err(|e| CertError::Key(e, spec.name.to_string()))?;
        let sans = wanted_sans(spec);
        let san_list: Vec<San> = sans.iter().map(|s| San::host(s)).collect();
        let csr = keys::csr(&key, &spec.common_name, &san_list)
            .map_err(|e| CertError::Key(e, spec.name.to_string()))?;
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
            name: spec.name.to_string(),
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
