//! The daemon: the agent-facing gRPC service on TCP (TLS done by hand so identities rotate
//! in memory, connections admitted and time-limited in [`listener`]), the admin service on
//! a unix socket ([`admin_socket`]), and the renewal of its own identity.

mod admin_service;
pub mod admin_socket;
mod agent_service;
mod error;
pub mod hub;
pub mod listener;
mod report_watch;

pub(crate) use admin_service::status_without_reports;
pub use error::RpcError;

use crate::store::{EtcdConfig, EtcdStore, RedbStore, Store, StoreError};
use hub::Hub;
use phoenix_ca::embedded::EmbeddedCa;
use phoenix_ca::{CaError, CertAuthority, IssueRequest};
use phoenix_pki::statedir::write_atomic;
use phoenix_pki::tls::{Identity, IdentityStore, TlsSetupError, TrustStore};
use phoenix_pki::{San, keys};
use phoenix_proto::MAX_MESSAGE_BYTES;
use phoenix_proto::model::{GuestId, TrustDomain};
use phoenix_proto::v1;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

/// How the daemon is set up; every field has a flag in `phoenix serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    /// The shared store of coordinator replicas; `None`: redb in `state_dir`.
    pub etcd: Option<EtcdConfig>,
    pub listen: SocketAddr,
    /// Address written into join tokens; defaults to the bound listen address.
    pub advertise: Option<String>,
    pub trust_domain: TrustDomain,
    pub admin_socket: PathBuf,
    /// Group allowed to use the admin socket besides root.
    pub admin_group: Option<String>,
    pub agent_cert_ttl: Duration,
    pub coordinator_cert_ttl: Duration,
    /// How long after expiry an agent may still renew by proving possession of its old
    /// key (zero: never; it must re-join with a new token).
    pub renew_after_expiry: Duration,
    /// Application-level ping on every session, on top of HTTP/2 keepalive, so a
    /// half-open session is noticed by both sides.
    pub ping_interval: Duration,
    /// Agent-port connections not yet authenticated, held at once; more are closed at once.
    pub max_pending_connections: usize,
    /// From accept to the first request (TLS, HTTP/2 preface, request headers).
    pub handshake_timeout: Duration,
    /// Where to serve Prometheus metrics (plain HTTP, no authentication); None: off.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to serve the status page (plain HTTP, read-only); None: off.
    pub status_listen: Option<SocketAddr>,
    /// The token a status page reader must present; required beyond loopback.
    pub status_token_file: Option<PathBuf>,
    /// How long and how many events the log keeps (`phoenix events`).
    pub events: crate::store::Retention,
    /// This replica's name and the leader's schedule (docs/design/0010).
    pub cluster: crate::cluster::ClusterConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("prepare state directory {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state directory: {0}")]
    Insecure(#[from] phoenix_pki::statedir::StateDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    ClusterCa(#[from] crate::cluster::ca::ClusterCaError),
    #[error("coordinator identity: {0}")]
    Identity(String),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    AdminSocket(#[from] admin_socket::AdminSocketError),
    #[error("start the admin socket server: {0}")]
    AdminThread(#[source] std::io::Error),
    #[error("start the event writer's thread: {0}")]
    EventThread(#[source] std::io::Error),
    #[error("the admin socket server ended abnormally")]
    AdminStopped,
    #[error("read the open-file limit: {0}")]
    FdLimit(#[source] nix::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    StatusPage(#[from] crate::web::WebError),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Runs a store call off the async workers: a read of many records, or a durable write
/// that waits for the store's one writer.
pub(crate) async fn blocking<T: Send + 'static>(
    action: &'static str,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Io {
            action,
            reason: e.to_string(),
        })
    })
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Shared state of the daemon.
pub struct Coordinator {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) ca: Arc<dyn CertAuthority>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) td: TrustDomain,
    pub(crate) identity: Arc<IdentityStore>,
    pub(crate) trust: Arc<TrustStore>,
    pub(crate) advertise: String,
    pub(crate) cfg: Config,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) events: Arc<crate::events::Recorder>,
}

/// The store's file in the state directory.
pub(crate) const STORE_FILE: &str = "phoenix.redb";

impl Coordinator {
    pub(crate) fn ca_fingerprint(&self) -> Result<String, RpcError> {
        let roots =
            phoenix_pki::x509::parse_chain(&self.trust.pem(), "trust bundle").map_err(|e| {
                RpcError::Ca(CaError::BadAnswer {
                    ca: self.ca.name().to_string(),
                    action: "list roots",
                    source: Box::new(e.into()),
                })
            })?;
        // The last root is the one agents pin; a bundle in transition lists the new root first.
        roots
            .last()
            .map(|r| phoenix_pki::x509::fingerprint(r))
            .ok_or_else(|| RpcError::NotFound("no root CA".into()))
    }
}

/// A fresh key and certificate for the coordinator, chain ending with the root so an
/// enrolling agent can pin the root by fingerprint.
async fn issue_own_identity(
    ca: &dyn CertAuthority,
    td: &TrustDomain,
    advertise: &str,
    ttl: Duration,
) -> Result<Identity, ServeError> {
    let key = keys::generate().map_err(|e| ServeError::Identity(e.to_string()))?;
    let mut sans = vec![
        San::Dns(td.coordinator_dns()),
        San::Uri(td.coordinator_uri()),
    ];
    let host = advertise
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']))
        .unwrap_or(advertise);
    if !host.is_empty() && host != td.coordinator_dns() {
        sans.push(San::host(host));
    }
    let csr = keys::csr(&key, &td.coordinator_dns(), &sans)
        .map_err(|e| ServeError::Identity(e.to_string()))?;
    let issued = ca
        .issue(IssueRequest {
            csr_pem: csr,
            common_name: td.coordinator_dns(),
            sans,
            ttl,
        })
        .await?;
    let chain = format!("{}{}", issued.chain_pem, issued.roots_pem);
    Ok(Identity::from_pem(&chain, &key.serialize_pem())?)
}

/// Renews the coordinator's identity at about 2/3 of its lifetime; on failure keeps the
/// old one and retries.
async fn renew_own_identity(c: Arc<Coordinator>) {
    loop {
        let info = c.identity.current().info;
        let wait = phoenix_pki::rotation::renew_delay(&info, SystemTime::now());
        tokio::time::sleep(wait).await;
        let renewed = issue_own_identity(
            c.ca.as_ref(),
            &c.td,
            &c.advertise,
            c.cfg.coordinator_cert_ttl,
        )
        .await;
        match renewed.and_then(|id| {
            c.trust.verify_chain(&id.chain_pem)?;
            Ok(id)
        }) {
            Ok(id) => {
                tracing::info!(serial = %id.info.serial_hex, "coordinator identity renewed");
                c.events
                    .ca_result(c.ca.name(), "renew the coordinator identity", Ok(()));
                c.events.record(
                    crate::events::Kind::CoordinatorCertRenewed,
                    "coordinator",
                    serde_json::json!({
                        "serial": id.info.serial_hex,
                        "not_after_unix": unix(id.info.not_after),
                    }),
                );
                c.metrics
                    .renewal(crate::metrics::CertKind::Coordinator, true);
                c.identity.swap(id);
            }
            Err(e) => {
                tracing::warn!(error = %e, "coordinator identity renewal failed; keeping the current one");
                c.events.ca_result(
                    c.ca.name(),
                    "renew the coordinator identity",
                    Err(e.to_string()),
                );
                c.events.record_limited(
                    crate::events::Kind::CoordinatorCertRenewFailed,
                    "coordinator",
                    "coordinator",
                    serde_json::json!({ "error": e.to_string() }),
                );
                c.metrics
                    .renewal(crate::metrics::CertKind::Coordinator, false);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Runs the daemon until `shutdown` resolves. `listener` is passed in so tests and
/// callers choose the port; `ca` overrides the embedded CA (Step-CA).
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    ca: Option<Arc<dyn CertAuthority>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Refused before anything changes: a page open to the network without a token.
    let status_access = cfg
        .status_listen
        .map(|addr| crate::web::Access::new(addr, cfg.status_token_file.as_deref()))
        .transpose()
        .map_err(crate::web::WebError::from)?;
    // Before anything changes: a second daemon must not take over a running one's socket.
    let admin_claim = admin_socket::claim(&cfg.admin_socket, cfg.admin_group.as_deref())?;
    let (nofile, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_err(ServeError::FdLimit)?;
    let max_connections = listener::connection_budget(nofile);
    let limits = listener::Limits {
        max_pending: cfg.max_pending_connections.clamp(1, max_connections),
        handshake_timeout: cfg.handshake_timeout,
        max_connections,
    };
    // Never follows a link; loose modes are fixed with a logged warning.
    phoenix_pki::statedir::secure(&cfg.state_dir, &[])?;
    let ca_dir = cfg.state_dir.join("ca");
    phoenix_pki::statedir::secure(&ca_dir, &["ca.key"])?;
    let etcd = match &cfg.etcd {
        Some(etcd) => Some(Arc::new(EtcdStore::connect(etcd.clone())?)),
        None => None,
    };
    let store: Arc<dyn Store> = match &etcd {
        Some(etcd) => etcd.clone(),
        None => Arc::new(RedbStore::open(&cfg.state_dir.join(STORE_FILE))?),
    };
    let ca: Arc<dyn CertAuthority> = match (ca, &etcd) {
        (Some(ca), _) => ca,
        // Replicas share one root: its key sealed in etcd, not one node's file.
        (None, Some(etcd)) => Arc::new(crate::cluster::ca::shared_embedded(
            etcd,
            cfg.cluster.ca_secret_file.as_deref(),
            &ca_dir,
            cfg.trust_domain.as_str(),
        )?),
        (None, None) => Arc::new(EmbeddedCa::load_or_create(
            &ca_dir,
            cfg.trust_domain.as_str(),
        )?),
    };
    let local = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: cfg.listen.to_string(),
        source,
    })?;
    let advertise = cfg.advertise.clone().unwrap_or_else(|| local.to_string());
    let trust = TrustStore::from_pem(&ca.roots_pem().await?)?;
    let identity = issue_own_identity(
        ca.as_ref(),
        &cfg.trust_domain,
        &advertise,
        cfg.coordinator_cert_ttl,
    )
    .await?;
    trust.verify_chain(&identity.chain_pem)?;
    let identity = IdentityStore::new(identity);
    store.register_replica(cfg.cluster.replica.as_str(), &advertise)?;
    // Read before the hub is filled: the change feed starts here, so no write from
    // another replica falls between the two.
    let feed_from = etcd.as_ref().map(|e| e.revision()).transpose()?;
    let hub = Hub::new();
    for (guest, rec) in store.all_desired()? {
        hub.push(guest, desired_message(&rec));
    }
    let server_tls = phoenix_pki::tls::server_config(identity.clone(), trust.clone())?;
    let metrics: Arc<crate::metrics::Metrics> = Default::default();
    let (events, event_writer) = crate::events::Recorder::new(store.clone(), metrics.clone());
    let published = hub.clone();
    event_writer
        .on_stored(Box::new(move |guest, event, report| {
            published.publish_report(guest, event, Arc::new(report));
        }))
        .start()
        .map_err(ServeError::EventThread)?;
    // The CA just signed our identity.
    events.ca_result(ca.name(), "issue the coordinator identity", Ok(()));
    let c = Arc::new(Coordinator {
        store,
        ca,
        hub,
        td: cfg.trust_domain.clone(),
        identity,
        trust,
        advertise: advertise.clone(),
        cfg: cfg.clone(),
        metrics,
        events,
    });
    // From here the guard removes the socket on every way out, a failed start included.
    let admin = admin_claim.bind()?;
    write_atomic(
        &cfg.state_dir.join("coordinator.addr"),
        advertise.as_bytes(),
        0o644,
    )
    .map_err(|source| ServeError::StateDir {
        path: cfg.state_dir.display().to_string(),
        source,
    })?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(addr) = cfg.metrics_listen {
        let bound = crate::metrics::spawn(c.clone(), addr, stop_rx.clone()).await?;
        tracing::info!(metrics = %bound, "serving Prometheus metrics at /metrics");
    }
    if let (Some(addr), Some(access)) = (cfg.status_listen, status_access) {
        let bound = crate::web::spawn(c.clone(), addr, access, stop_rx.clone()).await?;
        tracing::info!(status = %bound, "serving the status page at /");
    }
    let agent_svc = v1::agent_server::AgentServer::new(agent_service::AgentApi(c.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let agent_svc = crate::metrics::Recorded::new(agent_svc, c.metrics.clone());
    let admin_svc = tonic::service::interceptor::InterceptedService::new(
        v1::admin_server::AdminServer::new(admin_service::AdminApi(c.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        admin_socket::check_peer,
    );
    let admin_svc = crate::metrics::Recorded::new(admin_svc, c.metrics.clone());
    let admin_done = admin_socket::spawn_server(
        admin.listener,
        admin.policy,
        tonic::service::Routes::new(admin_svc),
        stop_rx.clone(),
    )
    .map_err(ServeError::AdminThread)?;
    // Both ports are up: the listener was bound by the caller and the admin socket above.
    notify(sd_notify::NotifyState::Ready);
    tracing::info!(
        listen = %local,
        %advertise,
        admin = %cfg.admin_socket.display(),
        ca = c.ca.name(),
        max_pending = limits.max_pending,
        max_connections = limits.max_connections,
        handshake_timeout_s = limits.handshake_timeout.as_secs(),
        "coordinator ready"
    );
    let renew = tokio::spawn(renew_own_identity(c.clone()));
    let mut cluster = vec![tokio::spawn(crate::cluster::leader::run(
        c.clone(),
        stop_rx.clone(),
    ))];
    if let (Some(etcd), Some(from)) = (&etcd, feed_from) {
        use crate::cluster::{feed, sessions};
        let (plan_tx, plan_rx) = tokio::sync::mpsc::unbounded_channel();
        let (claim_tx, claim_rx) = tokio::sync::mpsc::unbounded_channel();
        c.hub
            .join_cluster(cfg.cluster.replica.as_str(), plan_tx, claim_tx);
        let ttl = cfg
            .etcd
            .as_ref()
            .map_or(Duration::from_secs(10), |e| e.lease_ttl);
        cluster.push(tokio::spawn(sessions::register(
            c.clone(),
            etcd.clone(),
            ttl / 2,
            claim_rx,
            stop_rx.clone(),
        )));
        cluster.push(tokio::spawn(sessions::return_plans(
            etcd.clone(),
            plan_rx,
            stop_rx.clone(),
        )));
        cluster.push(tokio::spawn(feed::follow(
            c.clone(),
            etcd.clone(),
            from,
            stop_rx.clone(),
        )));
        let health = feed::Health {
            probe_every: ttl / 3,
            lost_after: ttl,
        };
        cluster.push(tokio::spawn(feed::watch_health(
            c.clone(),
            etcd.clone(),
            health,
            stop_rx.clone(),
        )));
    }
    let agent_server = tokio::spawn(listener::serve(
        listener,
        server_tls,
        tonic::service::Routes::new(agent_svc),
        limits,
        stop_rx,
    ));
    let stopping = c.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop(&stopping, &stop_tx);
    });
    let (agents, admin_result) = tokio::join!(agent_server, admin_done);
    renew.abort();
    // Sessions ended by the stop have queued their events; write them before exiting.
    c.events.flush().await;
    // The leader loop steps down when told to stop; give it a moment to do so.
    for task in cluster {
        if tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .is_err()
        {
            tracing::warn!("a cluster task did not stop in time");
        }
    }
    drop(admin.guard);
    if let Err(e) = agents {
        tracing::error!(error = %e, "agent port server ended abnormally");
    }
    admin_result.map_err(|_| ServeError::AdminStopped)??;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// The stop sequence: new agent-port connections and new streams are refused (GOAWAY),
/// then every agent session is ended with `Unavailable`, so its agent sees a clean end
/// and reconnects with backoff, and each connection closes as soon as its calls are done
/// (the listener's grace covers unary calls in flight). Nothing needs flushing: each
/// report and state change is its own committed store transaction before it is answered.
fn stop(c: &Coordinator, stop_tx: &tokio::sync::watch::Sender<bool>) {
    notify(sd_notify::NotifyState::Stopping);
    tracing::info!(
        connected = c.hub.connected_count(),
        "stopping: refusing new connections and ending agent sessions"
    );
    let _ = stop_tx.send(true);
    // From the hub, not the store: a replica that lost etcd must still let its agents go.
    c.hub.end_all_sessions(tonic::Status::unavailable(
        "coordinator is shutting down; reconnect later",
    ));
}

/// Tells systemd (`Type=notify`, `$NOTIFY_SOCKET`) where the daemon is; a no-op when not
/// run by systemd.
fn notify(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}

pub(crate) fn desired_message(rec: &crate::store::DesiredRecord) -> v1::DesiredState {
    v1::DesiredState {
        revision: rec.revision,
        digest: rec.digest.clone(),
        spec_json: rec.spec_json.clone(),
        dry_run: false,
    }
}

pub(crate) fn guest_id(raw: u32) -> Result<GuestId, RpcError> {
    GuestId::try_from(raw).map_err(|e| RpcError::BadRequest(e.to_string()))
}
