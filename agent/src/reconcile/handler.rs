//! The seam between the reconcile engine and host effects. One `Converge<S>` per resource
//! kind; the engine never touches the host itself.

use phoenix_proto::model::ResourceRef;
use std::collections::BTreeSet;

/// Any module error; its message must name the action and the object.
pub type ResourceError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler may know about the pass it runs in.
#[derive(Debug, Default, Clone)]
pub struct PassContext {
    /// Plan only: `apply` is never called; `check` must not mutate either way.
    pub dry_run: bool,
    /// Resources that changed (or would change, in dry-run) earlier in this pass, so a
    /// service can restart when a file or package it declares changed.
    pub changed: BTreeSet<ResourceRef>,
}

impl PassContext {
    pub fn any_changed<'a>(
        &self,
        refs: impl IntoIterator<Item = &'a ResourceRef>,
    ) -> Option<&'a ResourceRef> {
        refs.into_iter().find(|r| self.changed.contains(*r))
    }
}

/// Result of comparing desired with observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    InSync,
    /// Not converged; `diff` says what would change, human readable, secrets redacted.
    Drift {
        diff: String,
    },
}

#[async_trait::async_trait]
pub trait Converge<S: Sync>: Send + Sync {
    /// Pure checks that need agent-side knowledge (allowed roots, rendering a unit, parsing
    /// a Compose file). Runs for every resource before anything is changed; one failure
    /// means nothing in the pass is applied.
    fn validate(&self, spec: &S) -> Result<(), ResourceError>;

    /// Observe the host and compare with `spec`. Never mutates.
    async fn check(&self, spec: &S, cx: &PassContext) -> Result<Check, ResourceError>;

    /// Make the host match `spec`. Called only after `check` returned `Drift`, never in
    /// dry-run. Returns a short description of what was done.
    async fn apply(&self, spec: &S, cx: &PassContext) -> Result<String, ResourceError>;

    /// Apply several drifted resources of this kind together, where the host does better
    /// with one transaction than with many (apt resolves all package changes of a pass in
    /// one `apt-get` run). The engine passes resources that are ready together: every
    /// dependency of each is done. One result per spec, in order. Default: `apply` each.
    async fn apply_batch(
        &self,
        specs: &[&S],
        cx: &PassContext,
    ) -> Vec<Result<String, ResourceError>> {
        let mut out = Vec::with_capacity(specs.len());
        for spec in specs {
            out.push(self.apply(spec, cx).await);
        }
        out
    }
}

/// Something a handler created on the host that the desired state no longer declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// Reported as the result's resource, e.g. `file:/etc/app.conf`.
    pub resource: String,
    /// What removing it does, for the plan; a removal starts with `- `.
    pub diff: String,
    /// The handler's own key for it (a path, a unit name).
    pub key: String,
}

/// Removal of what Phoenix created once it is no longer declared. Only what the handler's
/// ownership record says it created is ever offered; what it took over or what someone
/// changed since is released (no longer managed) and left in place.
#[async_trait::async_trait]
pub trait Prune: Send + Sync {
    /// The resource kind, for a failure to list leftovers.
    fn kind(&self) -> &'static str;

    /// What this handler created that `spec` no longer declares. Never mutates.
    async fn leftovers(
        &self,
        spec: &phoenix_proto::model::GuestSpec,
    ) -> Result<Vec<Leftover>, ResourceError>;

    /// Removes one leftover (or releases it); returns what was done.
    async fn remove(&self, leftover: &Leftover) -> Result<String, ResourceError>;
}
