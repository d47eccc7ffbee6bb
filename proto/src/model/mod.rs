//! The desired-state model: what a guest must look like. Serialized as JSON inside
//! `DesiredState.spec_json`; deserializing validates every newtype, so a `GuestSpec`
//! in hand is known to be well formed (paths absolute, names safe, references resolvable).

mod cert;
pub mod compose;
mod declared;
mod exec;
mod file;
mod ids;
mod names;
mod package;
mod secret;
mod service;
mod stack;

pub use cert::{CertSpec, Reload, ReservedName, reserved_cert_names, reserved_name};
pub use declared::{Declared, DeclaredMount, Mismatch, MountSource, compare};
pub use exec::ExecSpec;
pub use file::{AbsPath, Ensure, FileMode, FileSpec};
pub use ids::{GuestId, ResourceRef, TrustDomain};
pub use names::{AccountName, ContainerName, EnvName, PackageName, SimpleName, UnitName};
pub use package::{AptSourceSpec, KeySource, PackageSpec, PackageState};
pub use secret::SecretRef;
pub use service::{ResourceLimits, RunState, ServiceSpec, UnitSpec};
pub use stack::{DEFAULT_PROJECTS_DIR, StackFile, StackSpec};

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
            Resource::Package(s) => s.name.to_string(),
            Resource::AptSource(s) => s.name.to_string(),
            Resource::Service(s) => s.name.to_string(),
            Resource::Stack(s) => s.name.to_string(),
            Resource::Cert(s) => s.name.to_string(),
            Resource::Exec(s) => s.name.to_string(),
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
///
/// Only obtainable validated: through [`GuestSpec::new`] or deserialization, which runs
/// the same checks (every resource, duplicates, unknown dependencies, cycles). So the
/// agent's own `desired.json`, a wire message and a compiled config are held to one rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(try_from = "RawGuestSpec")]
pub struct GuestSpec {
    resources: Vec<Resource>,
}

/// The JSON shape of a `GuestSpec` before validation.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawGuestSpec {
    #[serde(default)]
    resources: Vec<Resource>,
}

/// Every reason a spec was refused, as serde reports one error.
#[derive(Debug, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<ModelError>);

impl std::fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            e.fmt(f)?;
        }
        Ok(())
    }
}

impl TryFrom<RawGuestSpec> for GuestSpec {
    type Error = SpecErrors;
    fn try_from(raw: RawGuestSpec) -> Result<Self, SpecErrors> {
        GuestSpec::new(raw.resources).map_err(SpecErrors)
    }
}

impl GuestSpec {
    /// Checks every resource, uniqueness and the dependency graph; returns all errors.
    pub fn new(resources: Vec<Resource>) -> Result<Self, Vec<ModelError>> {
        let spec = GuestSpec { resources };
        let mut errors = Vec::new();
        let mut ids = BTreeSet::new();
        for r in &spec.resources {
            if let Err(e) = r.validate() {
                errors.push(e);
            }
            if !ids.insert(r.id()) {
                errors.push(ModelError::Duplicate(r.id()));
            }
            if let Resource::Cert(c) = r
                && let Err(reason) = c.check_reloads(&spec.resources)
            {
                errors.push(ModelError::Invalid {
                    resource: r.id(),
                    reason,
                });
            }
        }
        for r in &spec.resources {
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
            && let Err(e) = spec.try_order()
        {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(spec)
        } else {
            Err(errors)
        }
    }

    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    pub fn into_resources(self) -> Vec<Resource> {
        self.resources
    }

    /// Indices of `resources` in dependency order, ties broken by id, so the order is
    /// deterministic across runs and hosts. A `GuestSpec` was checked for cycles when it
    /// was made, so every resource appears.
    pub fn order(&self) -> Vec<usize> {
        self.try_order()
            .unwrap_or_else(|_| (0..self.resources.len()).collect())
    }

    fn try_order(&self) -> Result<Vec<usize>, ModelError> {
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

    /// Parses and validates, keeping every model error apart (serde would join them).
    pub fn from_json(bytes: &[u8]) -> Result<Self, Vec<ModelError>> {
        let raw: RawGuestSpec =
            serde_json::from_slice(bytes).map_err(|e| vec![ModelError::Json(e.to_string())])?;
        GuestSpec::new(raw.resources)
    }

    /// `from_json` for a value already parsed (a guest inside a larger document).
    pub fn from_value(value: serde_json::Value) -> Result<Self, Vec<ModelError>> {
        let raw: RawGuestSpec =
            serde_json::from_value(value).map_err(|e| vec![ModelError::Json(e.to_string())])?;
        GuestSpec::new(raw.resources)
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
