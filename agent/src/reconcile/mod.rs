//! The reconcile engine: validate every resource, then walk them in dependency order,
//! check → apply, and report each honestly.
//!
//! Guarantees: nothing is changed unless every resource validated; a resource whose
//! `depends_on` failed or was skipped is skipped; one failure does not stop independent
//! resources; passes never overlap (one lock); a newer desired state arriving mid-pass,
//! or a shutdown, stops the pass between resources (never inside one: an apt transaction
//! or a container swap always finishes), the rest reported as skipped.

pub mod handler;
mod pass;

pub use handler::{Check, Converge, Leftover, PassContext, Prune, ResourceError};
pub use pass::{Stop, Trigger};

use phoenix_proto::model::{
    ApplyReport, AptSourceSpec, CertSpec, DesiredState, ExecSpec, FileSpec, PackageSpec, Resource,
    ResourceRef, ResourceResult, ServiceSpec, StackSpec, Status,
};
use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

/// One handler per resource kind.
#[derive(Clone)]
pub struct Handlers {
    pub files: Arc<dyn Converge<FileSpec>>,
    pub packages: Arc<dyn Converge<PackageSpec>>,
    pub apt_sources: Arc<dyn Converge<AptSourceSpec>>,
    pub services: Arc<dyn Converge<ServiceSpec>>,
    pub stacks: Arc<dyn Converge<StackSpec>>,
    pub certs: Arc<dyn Converge<CertSpec>>,
    pub execs: Arc<dyn Converge<ExecSpec>>,
    /// Remove what Phoenix created and no longer declares, in this order (units are
    /// stopped before the files they read go).
    pub prune: Vec<Arc<dyn Prune>>,
}

/// Stands in for a kind this agent build cannot manage: it fails validation, so a spec
/// using it is refused whole instead of half-applied.
pub struct Unsupported<S>(&'static str, PhantomData<fn(&S)>);

impl<S> Unsupported<S> {
    pub fn new(kind: &'static str) -> Arc<Self> {
        Arc::new(Unsupported(kind, PhantomData))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("resource kind {0:?} is not supported by this agent build")]
struct UnsupportedKind(&'static str);

#[async_trait::async_trait]
impl<S: Sync> Converge<S> for Unsupported<S> {
    fn validate(&self, _spec: &S) -> Result<(), ResourceError> {
        Err(Box::new(UnsupportedKind(self.0)))
    }
    async fn check(&self, _spec: &S, _cx: &PassContext) -> Result<Check, ResourceError> {
        Err(Box::new(UnsupportedKind(self.0)))
    }
    async fn apply(&self, _spec: &S, _cx: &PassContext) -> Result<String, ResourceError> {
        Err(Box::new(UnsupportedKind(self.0)))
    }
}

impl Handlers {
    /// Only files; every other kind unsupported. Used by tests of the engine itself.
    pub fn files_only(files: Arc<dyn Converge<FileSpec>>) -> Self {
        Handlers {
            files,
            packages: Unsupported::new("package"),
            apt_sources: Unsupported::new("apt_source"),
            services: Unsupported::new("service"),
            stacks: Unsupported::new("stack"),
            certs: Unsupported::new("cert"),
            execs: Unsupported::new("exec"),
            prune: Vec::new(),
        }
    }

    fn validate(&self, r: &Resource) -> Result<(), ResourceError> {
        match r {
            Resource::File(s) => self.files.validate(s),
            Resource::Package(s) => self.packages.validate(s),
            Resource::AptSource(s) => self.apt_sources.validate(s),
            Resource::Service(s) => self.services.validate(s),
            Resource::Stack(s) => self.stacks.validate(s),
            Resource::Cert(s) => self.certs.validate(s),
            Resource::Exec(s) => self.execs.validate(s),
        }
    }

    async fn check(&self, r: &Resource, cx: &PassContext) -> Result<Check, ResourceError> {
        match r {
            Resource::File(s) => self.files.check(s, cx).await,
            Resource::Package(s) => self.packages.check(s, cx).await,
            Resource::AptSource(s) => self.apt_sources.check(s, cx).await,
            Resource::Service(s) => self.services.check(s, cx).await,
            Resource::Stack(s) => self.stacks.check(s, cx).await,
            Resource::Cert(s) => self.certs.check(s, cx).await,
            Resource::Exec(s) => self.execs.check(s, cx).await,
        }
    }

    async fn apply(&self, r: &Resource, cx: &PassContext) -> Result<String, ResourceError> {
        match r {
            Resource::File(s) => self.files.apply(s, cx).await,
            Resource::Package(s) => self.packages.apply(s, cx).await,
            Resource::AptSource(s) => self.apt_sources.apply(s, cx).await,
            Resource::Service(s) => self.services.apply(s, cx).await,
            Resource::Stack(s) => self.stacks.apply(s, cx).await,
            Resource::Cert(s) => self.certs.apply(s, cx).await,
            Resource::Exec(s) => self.execs.apply(s, cx).await,
        }
    }
}

pub struct Engine {
    handlers: Handlers,
    lock: tokio::sync::Mutex<()>,
}

fn result(
    id: &ResourceRef,
    status: Status,
    message: String,
    diff: String,
    started: Instant,
) -> ResourceResult {
    ResourceResult {
        resource: id.to_string(),
        status,
        message,
        duration_micros: started.elapsed().as_micros() as u64,
        diff,
    }
}

impl Engine {
    pub fn new(handlers: Handlers) -> Self {
        Engine {
            handlers,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs one pass. `stop` is polled between resources; when it says why, the pass
    /// stops there.
    pub async fn run(
        &self,
        desired: &DesiredState,
        trigger: Trigger,
        stop: &(dyn Fn() -> Option<Stop> + Send + Sync),
    ) -> ApplyReport {
        let _pass = self.lock.lock().await;
        let started = Instant::now();
        let spec = &desired.spec;
        let mut results = Vec::with_capacity(spec.resources().len());
        // A `GuestSpec` is acyclic by construction, so every resource is in the order.
        let order = spec.order();

        let invalid: Vec<(usize, String)> = order
            .iter()
            .filter_map(|&i| {
                self.handlers
                    .validate(&spec.resources()[i])
                    .err()
                    .map(|e| (i, e.to_string()))
            })
            .collect();
        if !invalid.is_empty() {
            let n = invalid.len();
            for &i in &order {
                let r = &spec.resources()[i];
                let t = Instant::now();
                match invalid.iter().find(|(j, _)| *j == i) {
                    Some((_, msg)) => results.push(result(&r.id(), Status::Failed, format!("invalid: {msg}"), String::new(), t)),
                    None => results.push(result(
                        &r.id(),
                        Status::Skipped,
                        format!("not applied: {n} resource(s) of this state failed validation, so nothing was changed"),
                        String::new(),
                        t,
                    )),
                }
            }
            return self.report(desired, trigger, results, started);
        }

        let mut cx = PassContext {
            dry_run: desired.dry_run,
            changed: BTreeSet::new(),
        };
        // Leftovers first: a unit replaced by another frees its port before the new one
        // starts.
        self.prune(spec, &cx, stop, &mut results).await;
        let mut not_ok: BTreeSet<ResourceRef> = BTreeSet::new();
        // Converged so far, and packages already handled by an earlier batch.
        let mut settled: BTreeSet<ResourceRef> = BTreeSet::new();
        let mut batched: BTreeSet<usize> = BTreeSet::new();
        for (pos, &i) in order.iter().enumerate() {
            if batched.contains(&i) {
                continue;
            }
            let r = &spec.resources()[i];
            let id = r.id();
            let t = Instant::now();
            if let Some(why) = stop() {
                not_ok.insert(id.clone());
                results.push(result(
                    &id,
                    Status::Skipped,
                    why.to_string(),
                    String::new(),
                    t,
                ));
                continue;
            }
            if let Some(dep) = r.depends_on().iter().find(|d| not_ok.contains(*d)) {
                not_ok.insert(id.clone());
                results.push(result(
                    &id,
                    Status::Skipped,
                    format!("dependency {dep} did not converge"),
                    String::new(),
                    t,
                ));
                continue;
            }
            match self.handlers.check(r, &cx).await {
                Ok(Check::InSync) => {
                    settled.insert(id.clone());
                    results.push(result(
                        &id,
                        Status::Unchanged,
                        String::new(),
                        String::new(),
                        t,
                    ))
                }
                Ok(Check::Drift { diff }) if !cx.dry_run && matches!(r, Resource::Package(_)) => {
                    // One apt transaction: every later package whose dependencies have
                    // all converged joins this one.
                    let mut batch = vec![(i, diff)];
                    for &j in &order[pos + 1..] {
                        let Resource::Package(p) = &spec.resources()[j] else {
                            continue;
                        };
                        if batched.contains(&j) || !p.depends_on.iter().all(|d| settled.contains(d))
                        {
                            continue;
                        }
                        batched.insert(j);
                        let jid = spec.resources()[j].id();
                        let tj = Instant::now();
                        match self.handlers.packages.check(p, &cx).await {
                            Ok(Check::InSync) => {
                                settled.insert(jid.clone());
                                results.push(result(
                                    &jid,
                                    Status::Unchanged,
                                    String::new(),
                                    String::new(),
                                    tj,
                                ));
                            }
                            Ok(Check::Drift { diff }) => batch.push((j, diff)),
                            Err(e) => {
                                not_ok.insert(jid.clone());
                                results.push(result(
                                    &jid,
                                    Status::Failed,
                                    e.to_string(),
                                    String::new(),
                                    tj,
                                ));
                            }
                        }
                    }
                    let specs: Vec<&PackageSpec> = batch
                        .iter()
                        .filter_map(|(j, _)| match &spec.resources()[*j] {
                            Resource::Package(p) => Some(p),
                            _ => None,
                        })
                        .collect();
                    let outcomes = self.handlers.packages.apply_batch(&specs, &cx).await;
                    for ((j, diff), outcome) in batch.into_iter().zip(outcomes) {
                        let jid = spec.resources()[j].id();
                        match outcome {
                            Ok(msg) => {
                                cx.changed.insert(jid.clone());
                                settled.insert(jid.clone());
                                results.push(result(&jid, Status::Changed, msg, diff, t));
                            }
                            Err(e) => {
                                not_ok.insert(jid.clone());
                                results.push(result(&jid, Status::Failed, e.to_string(), diff, t));
                            }
                        }
                    }
                }
                Ok(Check::Drift { diff }) if cx.dry_run => {
                    cx.changed.insert(id.clone());
                    results.push(result(&id, Status::Changed, "would change".into(), diff, t));
                }
                Ok(Check::Drift { diff }) => match self.handlers.apply(r, &cx).await {
                    Ok(msg) => {
                        cx.changed.insert(id.clone());
                        settled.insert(id.clone());
                        results.push(result(&id, Status::Changed, msg, diff, t));
                    }
                    Err(e) => {
                        not_ok.insert(id.clone());
                        results.push(result(&id, Status::Failed, e.to_string(), diff, t));
                    }
                },
                Err(e) => {
                    not_ok.insert(id.clone());
                    results.push(result(&id, Status::Failed, e.to_string(), String::new(), t));
                }
            }
        }
        self.report(desired, trigger, results, started)
    }

    /// Removes (or, in a plan, lists) what Phoenix created and `spec` no longer declares.
    async fn prune(
        &self,
        spec: &phoenix_proto::model::GuestSpec,
        cx: &PassContext,
        stop: &(dyn Fn() -> Option<Stop> + Send + Sync),
        results: &mut Vec<ResourceResult>,
    ) {
        for p in &self.handlers.prune {
            let t = Instant::now();
            let leftovers = match p.leftovers(spec).await {
                Ok(l) => l,
                Err(e) => {
                    let id = format!("{}:*", p.kind());
                    results.push(ResourceResult {
                        resource: id,
                        status: Status::Failed,
                        message: format!("list what is no longer declared: {e}"),
                        duration_micros: t.elapsed().as_micros() as u64,
                        diff: String::new(),
                    });
                    continue;
                }
            };
            for l in leftovers {
                let t = Instant::now();
                let (status, message) = if let Some(why) = stop() {
                    (Status::Skipped, why.to_string())
                } else if cx.dry_run {
                    (Status::Changed, "would change".to_owned())
                } else {
                    match p.remove(&l).await {
                        Ok(msg) => (Status::Changed, msg),
                        Err(e) => (Status::Failed, e.to_string()),
                    }
                };
                results.push(ResourceResult {
                    resource: l.resource,
                    status,
                    message,
                    duration_micros: t.elapsed().as_micros() as u64,
                    diff: l.diff,
                });
            }
        }
    }

    fn report(
        &self,
        desired: &DesiredState,
        trigger: Trigger,
        results: Vec<ResourceResult>,
        started: Instant,
    ) -> ApplyReport {
        ApplyReport {
            revision: desired.revision,
            digest: desired.digest.clone(),
            dry_run: desired.dry_run,
            results,
            duration_micros: started.elapsed().as_micros() as u64,
            trigger: trigger.to_string(),
        }
    }
}

#[cfg(test)]
mod tests;
