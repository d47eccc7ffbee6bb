//! The running agent: four parts, each its own module and (but the policy) its own task.
//!
//! - `passes`: the pass scheduler, fed by a `watch` of the desired state (latest wins);
//!   retries failed passes with backoff; persists a state before applying it.
//! - `outbox`: reports of passes until the coordinator acknowledges them (persisted).
//! - `session`: one stream to the coordinator, reconnecting with backoff; delivers the
//!   outbox.
//! - `renewal`: renews the identity at about 2/3 of its lifetime and publishes it.
//! - `backoff` and `policy`: how long to wait, and whether waiting helps at all.
//!
//! The passes never depend on the session: with the coordinator away the agent keeps
//! enforcing the last desired state from disk. Shutdown is cooperative: the pass in
//! progress finishes the resource it is on (an apt transaction, a container swap) and
//! starts no other; `run` waits for it up to a deadline. See
//! docs/design/0009-agent-runtime-lifecycle.md.

pub mod backoff;
pub mod outbox;
pub mod passes;
pub mod policy;
pub mod renewal;
mod session;

use crate::certs::SessionSigner;
use crate::reconcile::Engine;
use crate::state::{Enrollment, StateDir, StateError};
use phoenix_pki::tls::{self, Identity, IdentityStore, TlsSetupError, TrustStore};
use phoenix_pki::transport::{self, ChannelOptions};
use phoenix_proto::model::{ApplyReport, DesiredState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Clone)]
pub struct Options {
    pub passes: passes::Timing,
    /// Reconnect backoff of the session.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long a shutdown waits for the pass in progress.
    pub shutdown_deadline: Duration,
    /// How long the coordinator gets to answer a session's opening before the agent
    /// gives up on that connection and reconnects.
    pub session_open_timeout: Duration,
    pub channel: ChannelOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            passes: passes::Timing {
                drift_interval: Duration::from_secs(300),
                retry_base: Duration::from_secs(2),
                retry_max: Duration::from_secs(120),
            },
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            // Below systemd's default TimeoutStopSec (90 s), so the agent, not SIGKILL,
            // decides what happens when a pass does not finish.
            shutdown_deadline: Duration::from_secs(80),
            // A connection the peer closed while the HTTP/2 request was pending (a TLS
            // alert right after the handshake) has been seen to leave that request
            // unanswered forever; without a bound the agent would never reconnect.
            session_open_timeout: Duration::from_secs(60),
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
    #[error(
        "shutdown: the reconcile pass did not finish within {0:?}; exiting without interrupting it (a running apt or dpkg keeps running in its own process group)"
    )]
    PassStillRunning(Duration),
}

/// What every task reads.
pub struct Shared {
    signer: SessionSigner,
    state: Arc<StateDir>,
    enrollment: Enrollment,
    identity: Arc<IdentityStore>,
    trust: Arc<TrustStore>,
    opts: Options,
    /// Every coordinator replica (`Enrollment::coordinators`, updated when a replica
    /// sends the cluster's list), and the index of the one tried first: the last that
    /// answered, or another after its session broke.
    coordinators: std::sync::RwLock<Vec<String>>,
    preferred: AtomicUsize,
}

impl Shared {
    /// Client TLS presenting our current identity (mTLS).
    fn mutual_tls(&self) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
        tls::client_config(
            self.identity.clone(),
            self.trust.clone(),
            &self.enrollment.trust_domain.coordinator_uri(),
        )
    }

    /// A new channel to a coordinator, which must prove its identity against our roots:
    /// the preferred replica first, then each other one in turn; the one that answers
    /// becomes the preferred. Every replica holds the same identity (`coordinator.<trust
    /// domain>`, one CA), so any of them will do.
    async fn connect(
        &self,
        cfg: Arc<rustls::ClientConfig>,
    ) -> Result<tonic::transport::Channel, transport::ConnectError> {
        let coordinators = self.coordinator_list();
        let n = coordinators.len().max(1);
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let addr = coordinators.get(idx).map_or("", String::as_str);
            match transport::connect(
                addr,
                &self.enrollment.trust_domain.coordinator_dns(),
                cfg.clone(),
                &self.opts.channel,
            )
            .await
            {
                Ok(ch) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(ch);
                }
                Err(e) if i + 1 < n => {
                    tracing::warn!(error = %e, "coordinator replica unreachable; trying the next")
                }
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e),
            // Unreachable (n >= 1), but without a panic: an empty address fails to parse.
            None => transport::connect("", "", cfg, &self.opts.channel).await,
        }
    }

    fn coordinator_list(&self) -> Vec<String> {
        self.coordinators
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The preferred coordinator's address (for logs).
    fn coordinator(&self) -> String {
        self.coordinator_list()
            .get(self.preferred.load(Ordering::Relaxed))
            .cloned()
            .unwrap_or_else(|| self.enrollment.coordinator.clone())
    }

    /// After a session broke: prefer another replica, picked at random so the agents of
    /// a replica that died spread over the others instead of all moving to the next.
    fn fail_over(&self) {
        let n = self.coordinator_list().len();
        if n > 1 {
            let cur = self.preferred.load(Ordering::Relaxed);
            let step = rand::Rng::random_range(&mut rand::rng(), 1..n);
            self.preferred.store((cur + step) % n, Ordering::Relaxed);
        }
    }
}

/// Runs the agent until `shutdown` resolves, then lets the pass in progress finish
/// (up to `opts.shutdown_deadline`).
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
    let last = state.desired_at_start()?.map(Arc::new);
    let serial = identity.current().info.serial_hex;
    let state = Arc::new(state);
    let (desired_tx, desired_rx) = watch::channel(last);
    let (dry_tx, dry_rx) = watch::channel::<Option<Arc<DesiredState>>>(None);
    let (report_tx, report_rx) = watch::channel::<Option<Arc<ApplyReport>>>(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (identity_tx, identity_rx) = watch::channel(serial);
    let coordinators = enrollment.coordinators();
    let (run_pass_tx, run_pass_rx) = watch::channel(0u64);
    let outbox = Arc::new(outbox::Outbox::open(&state));
    let shared = Arc::new(Shared {
        state: state.clone(),
        coordinators: std::sync::RwLock::new(coordinators),
        preferred: AtomicUsize::new(0),
        enrollment,
        identity,
        trust,
        opts: opts.clone(),
        signer,
    });
    let mut passes = tokio::spawn(passes::scheduler(
        engine,
        state,
        opts.passes.clone(),
        passes::Inputs {
            desired: desired_rx,
            dry: dry_rx,
            stop: stop_rx,
            run_pass: run_pass_rx,
        },
        report_tx,
        outbox.clone(),
    ));
    let renewer = renewal::Live(shared.clone());
    let renewal = tokio::spawn(async move { renewal::schedule(&renewer, &identity_tx).await });
    let session = tokio::spawn(session::run(
        shared,
        session::Channels {
            desired: desired_tx,
            dry: dry_tx,
            reports: report_rx,
            identity: identity_rx,
            outbox,
            run_pass: run_pass_tx,
        },
    ));
    let ended = tokio::select! {
        _ = shutdown => false,
        // The scheduler ends on its own only if its inputs close, which they do not
        // while the session task holds them; treat it as a shutdown all the same.
        _ = &mut passes => true,
    };
    tracing::info!("shutting down: finishing the resource in progress, starting no other");
    stop_tx.send_replace(true);
    // Neither holds anything half-done across an await: renewal persists and swaps
    // without yielding, the session only talks.
    renewal.abort();
    let finished = if ended {
        Ok(())
    } else {
        tokio::time::timeout(opts.shutdown_deadline, passes)
            .await
            .map(drop)
    };
    session.abort();
    match finished {
        Ok(_) => {
            tracing::info!("reconcile pass finished; exiting");
            Ok(())
        }
        Err(_) => Err(RunError::PassStillRunning(opts.shutdown_deadline)),
    }
}
