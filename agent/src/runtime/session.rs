//! The session: one bidirectional stream to the coordinator, carrying desired states and
//! pass requests in, and reports (the outbox, then plans as they come) and heartbeats out. Reconnects with capped full-jitter backoff; a refusal
//! no retry fixes (revoked identity, protocol mismatch) is logged with the operator's
//! advice and retried at the cap, because a `join` on this guest fixes it without a
//! restart. Renewal runs in its own task, so this loop never stops servicing the stream.

use super::Shared;
use super::backoff::Backoff;
use super::outbox::Outbox;
use super::policy::{self, Call, Verdict};
use super::renewal::reload_identity_from_disk;
use crate::facts;
use phoenix_pki::tls::TlsSetupError;
use phoenix_pki::transport;
use phoenix_proto::MAX_MESSAGE_BYTES;
use phoenix_proto::model::{ApplyReport, DesiredState, Resource};
use phoenix_proto::v1::{self, agent_message, coordinator_message};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};

/// A session that lasted this long was healthy: the next failure starts a new series.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("session: {0}")]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    Connect(#[from] transport::ConnectError),
    #[error("session: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("session: coordinator closed the stream")]
    Closed,
    #[error("session: identity certificate expired; waiting for its renewal")]
    Expired,
    #[error("session: coordinator {0} did not answer the session's opening within {1:?}")]
    OpenTimedOut(String, Duration),
}

pub struct Channels {
    pub desired: watch::Sender<Option<Arc<DesiredState>>>,
    pub dry: watch::Sender<Option<Arc<DesiredState>>>,
    pub reports: watch::Receiver<Option<Arc<ApplyReport>>>,
    /// Serial of each identity the renewal task publishes.
    pub identity: watch::Receiver<String>,
    /// Reports of passes not yet acknowledged by the coordinator.
    pub outbox: Arc<Outbox>,
    /// Bumped when the coordinator asks for a pass now.
    pub run_pass: watch::Sender<u64>,
}

pub async fn run(shared: Arc<Shared>, mut ch: Channels) {
    let mut backoff = Backoff::new(shared.opts.backoff_base, shared.opts.backoff_max);
    loop {
        reload_identity_from_disk(&shared);
        let started = Instant::now();
        let result = session(&shared, &mut ch).await;
        shared.signer.set(None);
        if started.elapsed() > HEALTHY_SESSION {
            backoff.reset();
        }
        // The replica may be gone (killed, its node down, cut off from etcd): the next
        // attempt starts at another one; `connect` still walks all of them.
        if result.is_err() {
            shared.fail_over();
        }
        let expired = shared.identity.current().info.not_after <= SystemTime::now();
        let wait = match &result {
            // Whatever the coordinator said, only the renewal task can help now; it wakes
            // this loop when it publishes the renewed identity.
            Err(e) if expired => {
                tracing::warn!(error = %e, "identity certificate expired; waiting for its renewal");
                backoff.next_delay()
            }
            Err(SessionError::Rpc(s)) => {
                match policy::classify(Call::Session, s.code(), Some(shared.enrollment.guest)) {
                    Verdict::Fatal { advice } => {
                        tracing::error!(error = %s, "coordinator refused the session: {advice}");
                        backoff.ceiling(u32::MAX)
                    }
                    Verdict::Retry => {
                        tracing::warn!(error = %s, "coordinator session ended");
                        backoff.next_delay()
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "coordinator session ended");
                backoff.next_delay()
            }
            Ok(()) => backoff.next_delay(),
        };
        // A renewed identity is worth trying at once.
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = ch.identity.changed() => if r.is_err() { tokio::time::sleep(wait).await },
        }
    }
}

fn hello(shared: &Shared, facts: v1::Facts) -> v1::AgentMessage {
    let applied = shared.state.applied().unwrap_or_default();
    v1::AgentMessage {
        msg: Some(agent_message::Msg::Hello(v1::Hello {
            guest_id: shared.enrollment.guest.get(),
            agent_version: super::AGENT_VERSION.to_string(),
            facts: Some(facts),
            applied_revision: applied.revision,
            applied_digest: applied.digest,
        })),
    }
}

async fn session(shared: &Arc<Shared>, ch: &mut Channels) -> Result<(), SessionError> {
    // Identities published before this attempt are the one it uses.
    ch.identity.borrow_and_update();
    if shared.identity.current().info.not_after <= SystemTime::now() {
        return Err(SessionError::Expired);
    }
    let managed: Vec<String> = ch
        .desired
        .borrow()
        .as_ref()
        .map(|d| {
            d.spec
                .resources()
                .iter()
                .filter_map(|r| match r {
                    Resource::Package(p) => Some(p.name.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    // A collection that panics is sent as empty facts by an unwinding build; the shipped
    // agent aborts instead (`panic = "abort"`, Cargo.toml) and systemd restarts it.
    let facts = tokio::task::spawn_blocking(move || {
        let mut f = facts::collect();
        f.packages = facts::package_versions(&managed);
        f
    })
    .await
    .unwrap_or_default();
    // Facts first: the coordinator closes a connection whose first request does not come
    // within its handshake timeout, and collecting them can take seconds.
    let cfg = shared.mutual_tls()?;
    let channel = shared.connect(cfg).await?;
    shared.signer.set(Some(channel.clone()));
    let mut client = v1::agent_client::AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (out, out_rx) = mpsc::channel::<v1::AgentMessage>(16);
    let _ = out.send(hello(shared, facts)).await;
    // Every report not acknowledged yet goes first (passes done while the coordinator
    // was away, or whose acknowledgement was lost); `sent` is how far this session got.
    let mut newest = ch.outbox.subscribe();
    newest.mark_changed();
    let mut sent = 0u64;
    // A plan made before this session was for an operator who has gone.
    ch.reports.borrow_and_update();
    let opening = client.session(tokio_stream::wrappers::ReceiverStream::new(out_rx));
    let limit = shared.opts.session_open_timeout;
    let mut inbound = tokio::time::timeout(limit, opening)
        .await
        .map_err(|_| SessionError::OpenTimedOut(shared.coordinator().to_string(), limit))??
        .into_inner();
    tracing::info!(coordinator = %shared.coordinator(), "session open");
    loop {
        tokio::select! {
            m = inbound.message() => match m? {
                None => return Err(SessionError::Closed),
                Some(v1::CoordinatorMessage { msg: Some(coordinator_message::Msg::Desired(d)) }) => {
                    match DesiredState::try_from(d) {
                        Ok(state) if state.dry_run => { ch.dry.send_replace(Some(Arc::new(state))); }
                        Ok(state) => {
                            ch.desired.send_if_modified(|cur| {
                                let same = cur.as_ref().is_some_and(|c| c.digest == state.digest && c.revision == state.revision);
                                if !same { *cur = Some(Arc::new(state)); }
                                !same
                            });
                        }
                        Err(e) => tracing::error!(error = %e, "refused desired state from coordinator"),
                    }
                }
                Some(v1::CoordinatorMessage { msg: Some(coordinator_message::Msg::Ping(_)) }) => {
                    let applied = shared.state.applied().unwrap_or_default();
                    let hb = v1::AgentMessage { msg: Some(agent_message::Msg::Heartbeat(v1::Heartbeat { applied_revision: applied.revision })) };
                    if out.send(hb).await.is_err() { return Err(SessionError::Closed); }
                }
                Some(v1::CoordinatorMessage { msg: Some(coordinator_message::Msg::PassAck(a)) }) => ch.outbox.ack(a.seq),
                Some(v1::CoordinatorMessage { msg: Some(coordinator_message::Msg::RunPass(_)) }) => {
                    ch.run_pass.send_modify(|n| *n = n.wrapping_add(1));
                }
                Some(v1::CoordinatorMessage { msg: Some(coordinator_message::Msg::Replicas(r)) }) => {
                    learn_replicas(shared, &r.addrs);
                }
                Some(_) => {}
            },
            r = newest.changed() => {
                if r.is_err() { return Err(SessionError::Closed); }
                newest.borrow_and_update();
                for e in ch.outbox.after(sent) {
                    sent = e.seq;
                    let m = v1::AgentMessage { msg: Some(agent_message::Msg::Pass(v1::PassReport {
                        report: Some(v1::ApplyReport::from(&e.report)),
                        seq: e.seq,
                        finished_unix_ms: e.finished_unix_ms,
                        dropped_before: e.dropped_before,
                    })) };
                    if out.send(m).await.is_err() { return Err(SessionError::Closed); }
                }
            }
            r = ch.reports.changed() => {
                if r.is_err() { return Err(SessionError::Closed); }
                // Applies travel through the outbox; only plans are sent from here.
                let report = ch.reports.borrow_and_update().clone().filter(|r| r.dry_run);
                if let Some(report) = report {
                    let m = v1::AgentMessage { msg: Some(agent_message::Msg::Report(v1::ApplyReport::from(report.as_ref()))) };
                    if out.send(m).await.is_err() { return Err(SessionError::Closed); }
                }
            }
        }
    }
}

/// Keeps the cluster's replica list a coordinator sent (checked, then written to
/// agent.json atomically) and fails over through it from now on, so replicas added after
/// this agent joined are known. The coordinator proved its identity on this session; a
/// list that does not check out is logged and changes nothing.
fn learn_replicas(shared: &Shared, addrs: &[String]) {
    let addrs = match crate::state::replica_addrs(addrs) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "coordinator sent a replica list that is not kept");
            return;
        }
    };
    let learned = crate::state::Enrollment {
        replicas: addrs,
        ..shared.enrollment.clone()
    };
    let list = learned.coordinators();
    let current = shared.coordinator();
    {
        let mut cur = shared
            .coordinators
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if *cur == list {
            return;
        }
        *cur = list.clone();
    }
    // The replica this session is on stays the preferred one.
    let idx = list.iter().position(|a| *a == current).unwrap_or(0);
    shared
        .preferred
        .store(idx, std::sync::atomic::Ordering::Relaxed);
    match shared.state.save_enrollment(&learned) {
        Ok(()) => tracing::info!(replicas = ?list, "coordinator replicas updated"),
        Err(e) => {
            tracing::warn!(error = %e, replicas = ?list, "coordinator replicas updated for this run; not saved")
        }
    }
}
