//! The running agent: a reconcile loop fed by a `watch` of the desired state (latest wins),
//! and a session loop that keeps one stream to the coordinator, reconnecting with jittered
//! exponential backoff and renewing the identity in memory at about 2/3 of its lifetime.
//! The reconcile loop never depends on the session: with the coordinator away it keeps
//! enforcing the last desired state from disk.

use crate::certs::SessionSigner;
use crate::facts;
use crate::reconcile::Engine;
use crate::state::{Applied, Enrollment, StateDir, StateError};
use phoenix_pki::keys;
use phoenix_pki::rotation;
use phoenix_pki::tls::{self, Identity, IdentityStore, TlsSetupError, TrustStore};
use phoenix_pki::transport::{self, ChannelOptions};
use phoenix_proto::MAX_MESSAGE_BYTES;
use phoenix_proto::model::{ApplyReport, DesiredState, Status};
use phoenix_proto::v1::{self, agent_message, coordinator_message};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Deadline of every unary call (renewals); the session stream itself has none.
const RPC_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Options {
    /// Re-check the last desired state this often, to catch and repair drift.
    pub drift_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub channel: ChannelOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            drift_interval: Duration::from_secs(300),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            channel: ChannelOptions::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Connect(#[from] transport::ConnectError),
    #[error("session: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("session: coordinator closed the stream")]
    Closed,
}

/// Full-jitter exponential backoff (AWS architecture blog): a fleet that lost the
/// coordinator together does not come back together.
struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_secs_f64(rand::Rng::random_range(
            &mut rand::rng(),
            0.0..=cap.as_secs_f64(),
        ))
    }
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

struct Shared {
    signer: SessionSigner,
    state: StateDir,
    enrollment: Enrollment,
    identity: Arc<IdentityStore>,
    trust: Arc<TrustStore>,
    opts: Options,
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    state: StateDir,
    engine: Arc<Engine>,
    signer: SessionSigner,
    opts: Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let enrollment = state.enrollment()?;
    let (chain, key, roots) = state.identity()?;
    let identity = IdentityStore::new(Identity::from_pem(&chain, &key)?);
    let trust = TrustStore::from_pem(&roots)?;
    let last = state.desired()?.map(Arc::new);
    let (desired_tx, desired_rx) = watch::channel(last);
    let (dry_tx, dry_rx) = watch::channel::<Option<Arc<DesiredState>>>(None);
    let (report_tx, report_rx) = watch::channel::<Option<Arc<ApplyReport>>>(None);
    let shared = Arc::new(Shared {
        state,
        enrollment,
        identity,
        trust,
        opts,
        signer,
    });
    let reconcile = tokio::spawn(reconcile_loop(
        shared.clone(),
        engine,
        desired_rx,
        dry_rx,
        report_tx,
    ));
    let session = tokio::spawn(session_loop(shared, desired_tx, dry_tx, report_rx));
    shutdown.await;
    reconcile.abort();
    session.abort();
    Ok(())
}

async fn reconcile_loop(
    shared: Arc<Shared>,
    engine: Arc<Engine>,
    mut desired: watch::Receiver<Option<Arc<DesiredState>>>,
    mut dry: watch::Receiver<Option<Arc<DesiredState>>>,
    reports: watch::Sender<Option<Arc<ApplyReport>>>,
) {
    // Enforce what is on disk right away, before any coordinator is reachable.
    desired.mark_changed();
    let mut trigger = "startup";
    let mut drift = tokio::time::interval(shared.opts.drift_interval);
    drift.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    drift.tick().await;
    loop {
        let (state, why) = tokio::select! {
            r = desired.changed() => {
                if r.is_err() { return; }
                let s = desired.borrow_and_update().clone();
                let why = std::mem::replace(&mut trigger, "push");
                (s, why)
            }
            r = dry.changed() => {
                if r.is_err() { return; }
                let s = dry.borrow_and_update().clone();
                (s, "dry-run")
            }
            _ = drift.tick() => (desired.borrow().clone(), "drift"),
        };
        let Some(state) = state else { continue };
        if !state.dry_run
            && why == "push"
            && let Err(e) = shared.state.save_desired(&state)
        {
            tracing::error!(error = %e, "cannot persist desired state; applying anyway");
        }
        let watcher = desired.clone();
        let superseded = move || {
            if watcher.has_changed().unwrap_or(false) {
                watcher.borrow().as_ref().map(|d| d.revision)
            } else {
                None
            }
        };
        let report = engine.run(&state, why, &superseded).await;
        let changed_or_failed = report.results.iter().any(|r| r.status != Status::Unchanged);
        tracing::info!(
            revision = report.revision,
            trigger = why,
            changed = report.count(Status::Changed),
            failed = report.count(Status::Failed),
            skipped = report.count(Status::Skipped),
            micros = report.duration_micros,
            "pass done"
        );
        if !report.dry_run && report.converged() {
            let applied = Applied {
                revision: report.revision,
                digest: report.digest.clone(),
            };
            if let Err(e) = shared.state.save_applied(&applied) {
                tracing::error!(error = %e, "cannot record applied revision");
            }
        }
        // A drift pass that found nothing is not news.
        if why != "drift" || changed_or_failed {
            reports.send_replace(Some(Arc::new(report)));
        }
    }
}

fn hello(shared: &Shared, facts: v1::Facts) -> v1::AgentMessage {
    let applied = shared.state.applied().unwrap_or_default();
    v1::AgentMessage {
        msg: Some(agent_message::Msg::Hello(v1::Hello {
            guest_id: shared.enrollment.guest.get(),
            agent_version: AGENT_VERSION.to_string(),
            facts: Some(facts),
            applied_revision: applied.revision,
            applied_digest: applied.digest,
        })),
    }
}

/// What to do when our identity expired while we could not renew it.
fn expired_advice(shared: &Shared, info: &phoenix_pki::x509::CertInfo) -> String {
    format!(
        "identity certificate {} expired at {:?}; the CA does not renew expired certificates: on the host run `phoenix token create --guest {}`, then here `phoenix-agent join <token>` (this agent keeps enforcing its last desired state meanwhile and picks up the new identity by itself)",
        info.serial_hex, info.not_after, shared.enrollment.guest
    )
}

/// A `join` while we run replaces the files on disk; pick that identity up.
fn reload_identity_from_disk(shared: &Shared) {
    if let Ok((chain, key, roots)) = shared.state.identity()
        && let Ok(id) = Identity::from_pem(&chain, &key)
        && id.info.serial_hex != shared.identity.current().info.serial_hex
        && id.info.not_after > shared.identity.current().info.not_after
        && shared.trust.swap(&roots).is_ok()
    {
        tracing::info!(serial = %id.info.serial_hex, "identity replaced on disk; using it");
        shared.identity.swap(id);
    }
}

async fn session_loop(
    shared: Arc<Shared>,
    desired: watch::Sender<Option<Arc<DesiredState>>>,
    dry: watch::Sender<Option<Arc<DesiredState>>>,
    mut reports: watch::Receiver<Option<Arc<ApplyReport>>>,
) {
    let mut backoff = Backoff {
        base: shared.opts.backoff_base,
        max: shared.opts.backoff_max,
        attempt: 0,
    };
    loop {
        reload_identity_from_disk(&shared);
        let info = shared.identity.current().info;
        if info.not_after <= SystemTime::now() {
            match renew_expired(&shared).await {
                Ok(()) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "{}", expired_advice(&shared, &info));
                    tokio::time::sleep(backoff.next().max(Duration::from_secs(5))).await;
                    continue;
                }
            }
        }
        let started = Instant::now();
        let result = session(&shared, &desired, &dry, &mut reports).await;
        shared.signer.set(None);
        if let Err(e) = &result {
            tracing::warn!(error = %e, "coordinator session ended");
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

async fn session(
    shared: &Arc<Shared>,
    desired: &watch::Sender<Option<Arc<DesiredState>>>,
    dry: &watch::Sender<Option<Arc<DesiredState>>>,
    reports: &mut watch::Receiver<Option<Arc<ApplyReport>>>,
) -> Result<(), SessionError> {
    let managed: Vec<String> = desired
        .borrow()
        .as_ref()
        .map(|d| {
            d.spec
                .resources()
                .iter()
                .filter_map(|r| match r {
                    phoenix_proto::model::Resource::Package(p) => Some(p.name.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let facts = tokio::task::spawn_blocking(move || {
        let mut f = facts::collect();
        f.packages = facts::package_versions(&managed);
        f
    })
    .await
    .unwrap_or_default();
    // Facts first: the coordinator closes a connection whose first request does not come
    // within its handshake timeout, and collecting them can take seconds.
    let cfg = tls::client_config(
        shared.identity.clone(),
        shared.trust.clone(),
        &shared.enrollment.trust_domain.coordinator_uri(),
    )
    .map_err(|e| SessionError::Rpc(tonic::Status::internal(e.to_string())))?;
    let channel = transport::connect(
        &shared.enrollment.coordinator,
        &shared.enrollment.trust_domain.coordinator_dns(),
        cfg,
        &shared.opts.channel,
    )
    .await?;
    shared.signer.set(Some(channel.clone()));
    let mut client = v1::agent_client::AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (out, out_rx) = mpsc::channel::<v1::AgentMessage>(16);
    let _ = out.send(hello(shared, facts)).await;
    // The coordinator may have lost our last report (restart); send it again.
    reports.mark_changed();
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    tracing::info!(coordinator = %shared.enrollment.coordinator, "session open");

    let mut renew_attempt = 0u32;
    let mut renew_at = tokio::time::Instant::now()
        + rotation::renew_delay(&shared.identity.current().info, SystemTime::now());
    loop {
        tokio::select! {
            m = inbound.message() => match m? {
                None => return Err(SessionError::Closed),
                Some(v1::CoordinatorMessage { msg: Some(coordinator_message::Msg::Desired(d)) }) => {
                    match DesiredState::try_from(d) {
                        Ok(state) if state.dry_run => { dry.send_replace(Some(Arc::new(state))); }
                        Ok(state) => {
                            desired.send_if_modified(|cur| {
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
                Some(_) => {}
            },
            r = reports.changed() => {
                if r.is_err() { return Err(SessionError::Closed); }
                let report = reports.borrow_and_update().clone();
                if let Some(report) = report {
                    let m = v1::AgentMessage { msg: Some(agent_message::Msg::Report(v1::ApplyReport::from(report.as_ref()))) };
                    if out.send(m).await.is_err() { return Err(SessionError::Closed); }
                }
            }
            _ = tokio::time::sleep_until(renew_at) => {
                match renew(shared, &mut client).await {
                    Ok(()) => {
                        renew_attempt = 0;
                        renew_at = tokio::time::Instant::now()
                            + rotation::renew_delay(&shared.identity.current().info, SystemTime::now());
                    }
                    Err(e) => {
                        let remaining = shared.identity.current().info.not_after
                            .duration_since(SystemTime::now()).unwrap_or_default();
                        let wait = rotation::retry_delay(renew_attempt, remaining);
                        renew_attempt += 1;
                        tracing::warn!(error = %e, retry_in = ?wait, "identity renewal failed; keeping the current certificate");
                        renew_at = tokio::time::Instant::now() + wait;
                    }
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error("renew identity: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("renew identity: {0}")]
    Key(#[from] keys::KeyError),
    #[error("renew identity: {0}")]
    Tls(#[from] TlsSetupError),
    #[error("renew identity: new certificate does not carry {0}")]
    WrongIdentity(String),
    #[error("renew identity: {0}")]
    State(#[from] StateError),
}

/// New key, CSR in, chain out; checked against the roots and our own identity before it is
/// published, then swapped in memory so open streams stay up.
async fn renew(
    shared: &Shared,
    client: &mut v1::agent_client::AgentClient<tonic::transport::Channel>,
) -> Result<(), RenewError> {
    let guest = shared.enrollment.guest;
    let key = keys::generate()?;
    let csr = keys::csr(&key, &format!("guest-{guest}"), &[])?;
    // A deadline, because this runs inside the session loop: a hung coordinator must not
    // stall the stream.
    let mut req = tonic::Request::new(v1::RenewRequest { csr_pem: csr });
    req.set_timeout(RPC_DEADLINE);
    let resp = client.renew(req).await?.into_inner();
    adopt(shared, &key, resp)
}

/// An identity that expired while we were offline: prove we hold its key and ask for a
/// new one over a server-authenticated connection (the expired cert cannot do mTLS).
async fn renew_expired(shared: &Shared) -> Result<(), RenewError> {
    let guest = shared.enrollment.guest;
    let (chain, old_key, _) = shared.state.identity()?;
    let old_key = keys::load(&old_key)?;
    let key = keys::generate()?;
    let csr = keys::csr(&key, &format!("guest-{guest}"), &[])?;
    let proof = keys::sign(&old_key, &keys::renew_expired_message(&csr))?;
    let cfg = tls::server_auth_config(
        shared.trust.clone(),
        &shared.enrollment.trust_domain.coordinator_uri(),
    )?;
    let channel = transport::connect(
        &shared.enrollment.coordinator,
        &shared.enrollment.trust_domain.coordinator_dns(),
        cfg,
        &shared.opts.channel,
    )
    .await
    .map_err(|e| RenewError::Rpc(tonic::Status::unavailable(e.to_string())))?;
    let mut req = tonic::Request::new(v1::RenewExpiredRequest {
        chain_pem: chain,
        csr_pem: csr,
        proof,
    });
    req.set_timeout(RPC_DEADLINE);
    let resp = v1::agent_client::AgentClient::new(channel)
        .renew_expired(req)
        .await?
        .into_inner();
    adopt(shared, &key, resp)?;
    tracing::info!("expired identity renewed");
    Ok(())
}

/// Checks a renewed chain against the roots and our own identity, persists it, then
/// publishes it in memory.
fn adopt(shared: &Shared, key: &rcgen::KeyPair, resp: v1::RenewResponse) -> Result<(), RenewError> {
    let guest = shared.enrollment.guest;
    let trust = TrustStore::from_pem(&resp.roots_pem)?;
    trust.verify_chain(&resp.chain_pem)?;
    let id = Identity::from_pem(&resp.chain_pem, &key.serialize_pem())?;
    let want = shared.enrollment.trust_domain.guest_uri(guest);
    if !id.info.uris().any(|u| u == want) {
        return Err(RenewError::WrongIdentity(want));
    }
    shared
        .state
        .save_renewed(&key.serialize_pem(), &resp.chain_pem, &resp.roots_pem)?;
    shared.trust.swap(&resp.roots_pem)?;
    tracing::info!(serial = %id.info.serial_hex, not_after = ?id.info.not_after, "identity renewed");
    shared.identity.swap(id);
    Ok(())
}
