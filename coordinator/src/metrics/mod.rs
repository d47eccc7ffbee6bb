//! Prometheus metrics of the coordinator, served as OpenMetrics text on a listener of
//! their own (`phoenix serve --metrics-listen`, off by default; see [`http`]).
//!
//! Two kinds of series:
//! - *events* ([`Metrics`]): counters and a histogram bumped where the event happens
//!   (a renewal, an RPC answered, a report for a pushed revision, a watcher falling behind);
//! - *state* ([`live::Live`]): read from the store, the hub and the identity store at
//!   scrape time, so they can never disagree with `phoenix status`.
//!
//! Naming follows prometheus.io/docs/practices/naming: the `phoenix_` prefix, base units
//! in the name (`_seconds`, `_bytes`), counters end in `_total`. Every label is bounded:
//! guest ids by the fleet, certificate names by the configs, RPC methods by the services
//! (an unknown method is counted as `unknown`), codes by gRPC. No serials, no error text.

mod http;
mod live;
mod rpc;

pub use http::{MetricsError, spawn};
pub use rpc::Recorded;

use phoenix_proto::model::GuestId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Which certificate a renewal was for.
#[derive(Debug, Clone, Copy)]
pub enum CertKind {
    /// An agent's identity (Renew, RenewExpired).
    Identity,
    /// A guest service certificate (SignServiceCert: first issue and renewals alike).
    Service,
    /// The coordinator's own identity.
    Coordinator,
}

impl CertKind {
    fn label(self) -> &'static str {
        match self {
            CertKind::Identity => "identity",
            CertKind::Service => "service",
            CertKind::Coordinator => "coordinator",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RenewalLabels {
    kind: &'static str,
    result: &'static str,
}

/// Why an event did not make it into the log.
#[derive(Debug, Clone, Copy)]
pub enum EventDrop {
    /// The store refused the append (unavailable, full disk); logged with the reason.
    Store,
    /// An agent's outbox was full while it could not reach the coordinator, so it
    /// dropped its oldest reports (the agent says how many with its next report).
    AgentOutbox,
    /// A refusal repeated by too many sources at once to track (a flood).
    RateLimited,
}

impl EventDrop {
    fn label(self) -> &'static str {
        match self {
            EventDrop::Store => "store",
            EventDrop::AgentOutbox => "agent_outbox",
            EventDrop::RateLimited => "rate_limited",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    service: &'static str,
    method: String,
    code: &'static str,
}

/// The event series; one per coordinator, shared by the services that bump them.
#[derive(Debug)]
pub struct Metrics {
    renewals: Family<RenewalLabels, Counter>,
    rpcs: Family<RpcLabels, Counter>,
    report_latency: Histogram,
    watch_lagged: Counter,
    events_dropped: Family<DropLabels, Counter>,
    /// The revision pushed last to each guest and when, until its report arrives.
    pushed: Mutex<HashMap<GuestId, (u64, Instant)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            renewals: Family::default(),
            rpcs: Family::default(),
            // 0.1 s (files only) to about 14 min (image pulls, an agent that was away).
            report_latency: Histogram::new(exponential_buckets(0.1, 2.0, 14)),
            watch_lagged: Counter::default(),
            events_dropped: Family::default(),
            pushed: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    /// A certificate was signed (`ok`) or could not be (`failed`) for `kind`.
    pub fn renewal(&self, kind: CertKind, ok: bool) {
        self.renewals
            .get_or_create(&RenewalLabels {
                kind: kind.label(),
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// An RPC of `service` was answered with `code`; `method` is the last path segment.
    pub(crate) fn rpc(&self, service: &'static str, method: &str, code: tonic::Code) {
        // Only methods the service knows reach a handler; anything else is answered
        // Unimplemented and must not add a series per path a client makes up.
        let method = if code == tonic::Code::Unimplemented {
            "unknown".to_string()
        } else {
            method.to_string()
        };
        self.rpcs
            .get_or_create(&RpcLabels {
                service,
                method,
                code: rpc::code_name(code),
            })
            .inc();
    }

    /// A desired state with `revision` was pushed to `guest` (`phoenix apply`).
    pub fn pushed(&self, guest: GuestId, revision: u64) {
        self.lock_pushed().insert(guest, (revision, Instant::now()));
    }

    /// A report (not a plan) for `revision` arrived from `guest`: the first one for the
    /// revision pushed last is timed, from the push, failed or not.
    pub fn reported(&self, guest: GuestId, revision: u64) {
        let mut pushed = self.lock_pushed();
        if let Some((rev, at)) = pushed.get(&guest).copied()
            && rev == revision
        {
            pushed.remove(&guest);
            self.report_latency.observe(at.elapsed().as_secs_f64());
        }
    }

    /// A live report watcher (`apply`) fell behind the live channel by `n` reports and
    /// re-read them from the store (nothing is dropped; a rising rate means watchers lag).
    pub fn watch_lagged(&self, n: u64) {
        self.watch_lagged.inc_by(n);
    }

    /// `n` events were lost for `why` (the event log has a gap there).
    pub fn events_dropped(&self, why: EventDrop, n: u64) {
        self.events_dropped
            .get_or_create(&DropLabels {
                reason: why.label(),
            })
            .inc_by(n);
    }

    #[cfg(test)]
    pub(crate) fn watch_lagged_total(&self) -> u64 {
        self.watch_lagged.get()
    }

    fn lock_pushed(&self) -> std::sync::MutexGuard<'_, HashMap<GuestId, (u64, Instant)>> {
        self.pushed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the event series to `registry` (handles are shared, so later bumps show).
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "cert_renewals",
            "Certificates signed by the coordinator's CA on renewal (identity, coordinator) or request (service), by result",
            self.renewals.clone(),
        );
        registry.register(
            "rpcs",
            "gRPC calls answered, by service, method and status code (a stream counts when it is accepted)",
            self.rpcs.clone(),
        );
        registry.register_with_unit(
            "apply_report_latency",
            "Time from a desired state being pushed by apply to the guest's report for that revision",
            Unit::Seconds,
            self.report_latency.clone(),
        );
        registry.register(
            "report_watch_lagged",
            "Reports a live watcher (apply) fell behind on and re-read from the store",
            self.watch_lagged.clone(),
        );
        registry.register(
            "events_dropped",
            "Events that never reached the event log: the store refused them, or an agent's full outbox dropped reports",
            self.events_dropped.clone(),
        );
    }
}

/// The registry behind `/metrics`: the event series of `metrics` plus `live`.
fn registry(metrics: &Metrics, live: Option<live::Live>) -> Registry {
    let mut registry = Registry::with_prefix("phoenix");
    registry.register(
        "build",
        "Version of the running coordinator",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    metrics.register(&mut registry);
    if let Some(live) = live {
        registry.register_collector(Box::new(live));
    }
    registry
}

#[cfg(test)]
mod tests;
