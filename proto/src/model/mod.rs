//! The desired-state model: what a guest must look like. Serialized as JSON inside
//! `DesiredState.spec_json`; deserializing validates every newtype, so a `GuestSpec`
//! in hand is known to be well formed (paths absolute, names safe, references resolvable).

mod cert;
pub mod compose;
mod declared;
mod exec;
mod file;
mod ids;
mod package;
mod secret;
mod service;
mod stack;

pub use cert::{CertSpec, Reload, ReservedName, reserved_cert_names, reserved_name};
pub use declared::{Declared, Mismatch, compare};
pub use exec::ExecSpec;
pub use file::{AbsPath, Ensure, FileMode, FileSpec};
pub use ids::{GuestId, ResourceRef, TrustDomain};
pub use package::{AptSourceSpec, KeySource, PackageSpec, PackageState};
pub use secret::SecretRef;
pub use service::{ResourceLimits, RunState, ServiceSpec, UnitSpec, valid_unit_name};
pub use stack::{StackFile, StackSpec};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("invalid guest id {0:?}: expected an integer from 1 to 999999999")]
    GuestId(String),
    #[error("invalid resource reference {0:?}: expected <kind>:<name>")]
    ResourceRef(String),
    #[error("invalid trust domain {0:?}: expected a lowercase DNS name")]
    TrustDomain(String),
    #[error("invalid path {0:?}: expected an absolute, normalized path without '..'")]
    Path(String),
    #[error("invalid file mode {0:?}: expected octal such as \"0644\"")]
    Mode(String),
    #[error("invalid {what} {value:?}: {reason}")]
    Name {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("resource {0} is declared twice")]
    Duplicate(ResourceRef),
    #[error("resource {from} depends on {to}, which is not declared")]
    UnknownDependency { from: ResourceRef, to: ResourceRef },
    #[error("dependency cycle: {0}")]
    Cycle(crate::graph::Cycle<ResourceRef>),
    #[error("resource {resource}: {reason}")]
    Invalid {
        resource: ResourceRef,
        reason: String,
    },
    #[error("spec JSON: {0}")]
    Json(String),
}

/// One thing Phoenix manages in a guest, tagged by `kind`.
// Specs are built once per pass and matched on everywhere; boxing the big variants would
// only make every handler's pattern noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    File(FileSpec),
    Package(PackageSpec),
    AptSource(AptSourceSpec),
    Service(ServiceSpec),
    Stack(StackSpec),
    Cert(CertSpec),
    Exec(ExecSpec),
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::File(_) => "file",
            Resource::Package(_) => "package",
            Resource::AptSource(_) => "apt_source",
            Resource::Service(_) => "service",
            Resource::Stack(_) => "stack",
            Resource::Cert(_) => "cert",
            Resource::Exec(_) => "exec",
        }
    }

    /// The stable identity other resources refer to, `<kind>:<name>`.
    pub fn id(&self) -> ResourceRef {
        let name = match self {
            Resource::File(s) => s.path.to_string(),
            Resource::Package(s) => s.name.clone(),
            Resource::AptSource(s) => s.name.clone(),
            Resource::Service(s) => s.name.clone(),
            Resource::Stack(s) => s.name.clone(),
            Resource::Cert(s) => s.name.clone(),
            Resource::Exec(s) => s.name.clone(),
        };
        ResourceRef::new(self.kind(), &name)
    }

    pub fn depends_on(&self) -> &[ResourceRef] {
        match self {
            Resource::File(s) => &s.depends_on,
            Resource::Package(s) => &s.depends_on,
            Resource::AptSource(s) => &s.depends_on,
            Resource::Service(s) => &s.depends_on,
            Resource::Stack(s) => &s.depends_on,
            Resource::Cert(s) => &s.depends_on,
            Resource::Exec(s) => &s.depends_on,
        }
    }

    /// Every resource this one must come after: `depends_on` plus the resources whose
    /// change triggers it (restart_on, reload_on, refresh_on). Only `depends_on` makes a
    /// failure propagate as "skipped".
    pub fn after(&self) -> Vec<&ResourceRef> {
        let mut out: Vec<&ResourceRef> = self.depends_on().iter().collect();
        match self {
            Resource::Service(s) => out.extend(s.restart_on.iter().chain(&s.reload_on)),
            Resource::Exec(s) => out.extend(s.refresh_on.iter()),
            _ => {}
        }
        out
    }

    fn validate(&self) -> Result<(), ModelError> {
        let invalid = |reason: String| ModelError::Invalid {
            resource: self.id(),
            reason,
        };
        match self {
            Resource::File(s) => s.validate().map_err(invalid),
            Resource::Package(s) => s.validate().map_err(invalid),
            Resource::AptSource(s) => s.validate().map_err(invalid),
            Resource::Service(s) => s.validate().map_err(invalid),
            Resource::Stack(s) => s.validate().map_err(invalid),
            Resource::Cert(s) => s.validate().map_err(invalid),
            Resource::Exec(s) => s.validate().map_err(invalid),
        }
    }
}

/// Everything one guest must look like. Order in `resources` is irrelevant;
/// `depends_on` edges decide the apply order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestSpec {
    #[serde(default)]
    pub resources: Vec<Resource>,
}

impl GuestSpec {
    /// Checks every resource, uniqueness and the dependency graph; returns all errors.
    pub fn validate(&self) -> Result<(), Vec<ModelError>> {
        let mut errors = Vec::new();
        let mut ids = BTreeSet::new();
        for r in &self.resources {
            if let Err(e) = r.validate() {
                errors.push(e);
            }
            if !ids.insert(r.id()) {
                errors.push(ModelError::Duplicate(r.id()));
            }
        }
        for r in &self.resources {
            for dep in r.after() {
                if !ids.contains(dep) {
                    errors.push(ModelError::UnknownDependency {
                        from: r.id(),
                        to: dep.clone(),
                    });
                }
            }
        }
        if errors.is_empty()
            && let Err(e) = self.order()
        {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Indices of `resources` in dependency order, ties broken by id, so the order is
    /// deterministic across runs and hosts.
    pub fn order(&self) -> Result<Vec<usize>, ModelError> {
        let index: BTreeMap<ResourceRef, usize> = self
            .resources
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id(), i))
            .collect();
        let nodes = self
            .resources
            .iter()
            .map(|r| (r.id(), r.after().into_iter().cloned()));
        let ids = crate::graph::sort(nodes).map_err(ModelError::Cycle)?;
        Ok(ids.iter().map(|id| index[id]).collect())
    }

    /// Canonical bytes (serde_json of the struct: field order fixed by the types).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, Vec<ModelError>> {
        let spec: GuestSpec =
            serde_json::from_slice(bytes).map_err(|e| vec![ModelError::Json(e.to_string())])?;
        spec.validate()?;
        Ok(spec)
    }
}

/// Hex SHA-256, the digest used for desired states.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A validated desired state as the agent receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    pub revision: u64,
    pub digest: String,
    pub spec: GuestSpec,
    pub dry_run: bool,
}

/// Outcome of one resource in one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Unchanged,
    Changed,
    Failed,
    Skipped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Unchanged => "unchanged",
            Status::Changed => "changed",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceResult {
    pub resource: String,
    pub status: Status,
    pub message: String,
    pub duration_micros: u64,
    pub diff: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub revision: u64,
    pub digest: String,
    pub dry_run: bool,
    pub results: Vec<ResourceResult>,
    pub duration_micros: u64,
    pub trigger: String,
}

impl ApplyReport {
    /// True when every resource is unchanged or changed: the guest matches its spec.
    pub fn converged(&self) -> bool {
        self.results
            .iter()
            .all(|r| matches!(r.status, Status::Unchanged | Status::Changed))
    }

    pub fn count(&self, status: Status) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }
}

#[cfg(test)]
mod tests;
