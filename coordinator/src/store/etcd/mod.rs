//! The coordinator's store on etcd v3, shared by every coordinator replica of a Proxmox
//! cluster (docs/design/0010-ha-on-etcd.md).
//!
//! Every read-modify-write is one etcd transaction that compares the `mod_revision` of
//! each key it read and retries when another replica wrote first, so two replicas cannot
//! both consume a join token or both allocate one revision. Keys live under a prefix
//! (`/phoenix/` by default); values are the same JSON records as the embedded store's.
//!
//! The `Store` trait is synchronous (redb answers in microseconds). The etcd client is
//! async, so it runs on a small runtime this store owns; a caller on a multi-threaded
//! tokio runtime waits inside `block_in_place`, so its worker thread is handed over
//! instead of stalled, and every request is bounded by `request_timeout`.

mod events;
mod forward;
mod leader;
mod records;
mod replicas;
mod sessions;
mod watch;

pub use watch::Change;

use super::StoreError;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

/// etcd refuses requests over `--max-request-bytes` (1.5 MiB by default); one value and
/// one transaction stay under 1 MiB so a default-configured etcd accepts them.
const MAX_VALUE_BYTES: usize = 1 << 20;
const MAX_TXN_BYTES: usize = 1 << 20;
/// etcd refuses transactions with more than `--max-txn-ops` (128 by default) operations.
const MAX_TXN_KEYS: usize = 64;
/// Keys per page when listing; with values of at most 1 MiB a page fits the decoding
/// limit below.
const PAGE: i64 = 48;
const MAX_DECODE_BYTES: usize = 64 << 20;
/// Attempts of one read-modify-write before giving up under contention.
const MAX_ATTEMPTS: usize = 64;

/// How to reach etcd. Validated by [`EtcdStore::connect`].
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://host:port` of every member (the client balances and fails over).
    pub endpoints: Vec<String>,
    /// Every key lives under it, so several installations can share one etcd.
    pub prefix: String,
    /// Lease of the leader key: a crashed leader is replaced after at most this long.
    pub lease_ttl: Duration,
    /// Bound of every request; past it the store reports etcd unavailable.
    pub request_timeout: Duration,
    /// TLS to etcd (https:// endpoints); None: plain http://.
    pub tls: Option<EtcdTls>,
}

/// etcd over TLS, mutual when `identity` is given (etcd `--client-cert-auth`). PEM text,
/// read by the caller. rustls with the ring provider, as everywhere in Phoenix.
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA etcd's server certificates chain to.
    pub ca_pem: String,
    /// This replica's client certificate chain and key.
    pub identity: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdTls {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_cert", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            prefix: "/phoenix/".into(),
            lease_ttl: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

pub struct EtcdStore {
    client: Client,
    kv: KvClient,
    /// `Option` only so `Drop` can shut it down without blocking.
    rt: Option<Runtime>,
    /// Comma-separated, for error messages.
    endpoints: String,
    prefix: String,
    lease_ttl: Duration,
    timeout: Duration,
    lease: Mutex<Option<leader::Lease>>,
    /// The short lease pass requests for other replicas go under (`forward`).
    pass_lease: Mutex<Option<forward::PassLease>>,
}

/// A consistent read of several keys: values and the `mod_revision` each was read at
/// (0: absent), which the write compares.
struct Snapshot {
    values: Vec<Option<Vec<u8>>>,
    mod_revs: Vec<i64>,
}

impl EtcdStore {
    /// Connects and reads once, so a wrong or dead endpoint list fails here, naming it.
    pub fn connect(cfg: EtcdConfig) -> Result<Self, StoreError> {
        let endpoints = cfg.endpoints.join(",");
        let bad = |reason: String| StoreError::Open {
            path: format!("etcd {endpoints}"),
            reason,
        };
        if cfg.endpoints.is_empty() {
            return Err(bad("no endpoints given".into()));
        }
        // One scheme for all: TLS is all or nothing, so no request goes out in clear.
        let scheme = if cfg.tls.is_some() {
            "https://"
        } else {
            "http://"
        };
        if let Some(e) = cfg.endpoints.iter().find(|e| !e.starts_with(scheme)) {
            return Err(bad(format!(
                "endpoint {e:?} is not an {scheme} URL ({})",
                if cfg.tls.is_some() {
                    "TLS to etcd is configured"
                } else {
                    "https:// needs the etcd CA"
                }
            )));
        }
        if !cfg.prefix.starts_with('/') || !cfg.prefix.ends_with('/') {
            return Err(bad(format!(
                "key prefix {:?} must start and end with '/'",
                cfg.prefix
            )));
        }
        if cfg.lease_ttl < Duration::from_secs(2) {
            return Err(bad("leader lease must be at least 2 s".into()));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("phoenix-etcd")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("start the etcd client runtime: {e}")))?;
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(cfg.request_timeout)
            .with_timeout(cfg.request_timeout)
            .with_keep_alive(Duration::from_secs(5), cfg.request_timeout)
            // A member cut off from the quorum answers "no leader" instead of stale data.
            .with_require_leader(true);
        if let Some(tls) = &cfg.tls {
            let mut t = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
            if let Some((chain, key)) = &tls.identity {
                t = t.identity(etcd_client::Identity::from_pem(chain, key));
            }
            opts = opts.with_tls(t);
        }
        let eps = cfg.endpoints.clone();
        let client = bridge(&rt, cfg.request_timeout, async move {
            Client::connect(eps, Some(opts)).await
        })
        .map_err(|e| bad(e.to_string()))?
        .map_err(|e| bad(e.to_string()))?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_DECODE_BYTES);
        let store = EtcdStore {
            client,
            kv,
            rt: Some(rt),
            endpoints: endpoints.clone(),
            prefix: cfg.prefix,
            lease_ttl: cfg.lease_ttl,
            timeout: cfg.request_timeout,
            lease: Mutex::new(None),
            pass_lease: Mutex::new(None),
        };
        // A refused TLS handshake is not "unavailable": say which etcd refused what.
        store
            .read_many("connect", &[store.key("meta/revision")])
            .map_err(|e| match e {
                StoreError::Io { reason, .. } => bad(reason),
                other => other,
            })?;
        Ok(store)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Runs one etcd call (`make` builds each attempt) on the store's runtime and waits
    /// for it. The client balances over the endpoints but does not fail over: a request
    /// that lands on a dead member fails with "unavailable", so the call is tried again
    /// (another member, picked at random) until `request_timeout` is spent. A retried
    /// write may have been applied already; every read-modify-write compares revisions,
    /// so it then re-reads instead of applying twice.
    fn call<T, Fut>(
        &self,
        action: &'static str,
        make: impl Fn() -> Fut + Send + 'static,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        const PAUSE: Duration = Duration::from_millis(100);
        let rt = self.rt.as_ref().ok_or(StoreError::Io {
            action,
            reason: "the etcd client is shut down".into(),
        })?;
        let give_up = self.timeout.saturating_sub(PAUSE * 2);
        let attempts = async move {
            let t0 = tokio::time::Instant::now();
            loop {
                match make().await {
                    Err(e) if unavailable(&e) && t0.elapsed() + PAUSE < give_up => {
                        tokio::time::sleep(PAUSE).await;
                    }
                    r => return r,
                }
            }
        };
        match bridge(rt, self.timeout, attempts) {
            Ok(r) => r.map_err(|e| self.map_err(action, e)),
            Err(reason) => Err(StoreError::Unavailable {
                action,
                endpoints: self.endpoints.clone(),
                reason,
            }),
        }
    }

    /// Connection loss, timeouts and a lost quorum are "unavailable" (a client may retry
    /// elsewhere); anything else is a store error naming the action.
    fn map_err(&self, action: &'static str, e: etcd_client::Error) -> StoreError {
        // tonic hides the cause (a refused TLS handshake, a reset) in the sources.
        let reason = match &e {
            etcd_client::Error::GRpcStatus(s) => {
                let mut r = s.message().to_string();
                let mut cur = std::error::Error::source(s);
                while let Some(c) = cur {
                    r = format!("{r}: {c}");
                    cur = c.source();
                }
                r
            }
            other => phoenix_pki::transport::error_chain(other),
        };
        if unavailable(&e) {
            StoreError::Unavailable {
                action,
                endpoints: self.endpoints.clone(),
                reason,
            }
        } else {
            StoreError::Io { action, reason }
        }
    }

    fn txn(&self, action: &'static str, txn: Txn) -> Result<TxnResponse, StoreError> {
        let kv = self.kv.clone();
        self.call(action, move || {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
    }

    fn put(&self, action: &'static str, key: String, value: Vec<u8>) -> Result<(), StoreError> {
        self.put_at(action, key, value).map(|_| ())
    }

    /// Puts `key` and returns the etcd revision of the write: the key's mod_revision,
    /// increasing in commit order across every replica.
    fn put_at(&self, action: &'static str, key: String, value: Vec<u8>) -> Result<u64, StoreError> {
        check_size(action, &key, value.len(), MAX_VALUE_BYTES)?;
        let kv = self.kv.clone();
        let resp = self.call(action, move || {
            let (mut kv, key, value) = (kv.clone(), key.clone(), value.clone());
            async move { kv.put(key, value, None).await }
        })?;
        resp.header()
            .map(|h| h.revision() as u64)
            .ok_or(StoreError::Io {
                action,
                reason: "etcd answered a put without a header revision".into(),
            })
    }

    /// Reads `keys` in one transaction, so the values belong to one revision.
    fn read_many(&self, action: &'static str, keys: &[String]) -> Result<Snapshot, StoreError> {
        let ops: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
        let resp = self.txn(action, Txn::new().and_then(ops))?;
        let mut snap = Snapshot {
            values: Vec::with_capacity(keys.len()),
            mod_revs: Vec::with_capacity(keys.len()),
        };
        for op in resp.op_responses() {
            let TxnOpResponse::Get(g) = op else {
                return Err(StoreError::Io {
                    action,
                    reason: "etcd answered a read with another operation".into(),
                });
            };
            let kv = g.kvs().first();
            snap.values.push(kv.map(|kv| kv.value().to_vec()));
            snap.mod_revs.push(kv.map_or(0, |kv| kv.mod_revision()));
        }
        if snap.values.len() != keys.len() {
            return Err(StoreError::Io {
                action,
                reason: format!("asked for {} keys, got {}", keys.len(), snap.values.len()),
            });
        }
        Ok(snap)
    }

    /// Optimistic read-modify-write of `keys`: `f` gets their current values and returns
    /// the new ones (`None`: leave the key alone) and a result. The write commits only
    /// if none of the keys changed since the read; otherwise it starts over, so `f` may
    /// run several times and always decides on the latest values.
    fn update_many<T>(
        &self,
        action: &'static str,
        keys: &[String],
        mut f: impl FnMut(&[Option<Vec<u8>>]) -> Result<(Vec<Option<Vec<u8>>>, T), StoreError>,
    ) -> Result<T, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.read_many(action, keys)?;
            let (new, out) = f(&snap.values)?;
            let mut total = 0;
            let mut puts = Vec::new();
            for (k, v) in keys.iter().zip(new) {
                if let Some(v) = v {
                    check_size(action, k, v.len(), MAX_VALUE_BYTES)?;
                    total += v.len();
                    puts.push(TxnOp::put(k.as_str(), v, None));
                }
            }
            let what = format!("a transaction over {} keys from {}", keys.len(), keys[0]);
            check_size(action, &what, total, MAX_TXN_BYTES)?;
            if puts.is_empty() {
                return Ok(out);
            }
            let compares: Vec<Compare> = keys
                .iter()
                .zip(&snap.mod_revs)
                .map(|(k, rev)| Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev))
                .collect();
            if self
                .txn(action, Txn::new().when(compares).and_then(puts))?
                .succeeded()
            {
                return Ok(out);
            }
        }
        Err(StoreError::Io {
            action,
            reason: format!(
                "{} kept changing under concurrent writers; gave up after {MAX_ATTEMPTS} attempts",
                keys.join(",")
            ),
        })
    }

    /// Every key under `<prefix><dir>/` with its value, in key order, read page by page
    /// at one revision (so the listing is one consistent snapshot). If etcd compacts that
    /// revision away meanwhile, the listing starts over at a new one.
    fn list(&self, action: &'static str, dir: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .list_since(action, dir, 0)?
            .into_iter()
            .map(|(k, v, _)| (k, v))
            .collect())
    }

    /// Like [`Self::list`], only keys last written after etcd revision `after`, each with
    /// its mod_revision.
    fn list_since(
        &self,
        action: &'static str,
        dir: &str,
        after: i64,
    ) -> Result<Vec<(String, Vec<u8>, i64)>, StoreError> {
        let start = self.key(&format!("{dir}/"));
        let end = prefix_end(&start);
        'snapshot: for _ in 0..3 {
            let mut out = Vec::new();
            let mut from = start.clone().into_bytes();
            let mut rev = 0;
            loop {
                let mut opts = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(PAGE)
                    .with_revision(rev);
                if after > 0 {
                    opts = opts.with_min_mod_revision(after + 1);
                }
                let (kv, key) = (self.kv.clone(), from.clone());
                let get = move || {
                    let (mut kv, key, opts) = (kv.clone(), key.clone(), opts.clone());
                    async move { kv.get(key, Some(opts)).await }
                };
                let resp = match self.call(action, get) {
                    Err(StoreError::Io { reason, .. }) if reason.contains("compacted") => {
                        continue 'snapshot;
                    }
                    other => other?,
                };
                if rev == 0 {
                    rev = resp.header().map_or(0, |h| h.revision());
                }
                for kv in resp.kvs() {
                    let k = String::from_utf8_lossy(&kv.key()[start.len()..]).into_owned();
                    out.push((k, kv.value().to_vec(), kv.mod_revision()));
                }
                match resp.kvs().last() {
                    Some(last) if resp.more() => {
                        from = last.key().to_vec();
                        from.push(0);
                    }
                    _ => return Ok(out),
                }
            }
        }
        Err(StoreError::Io {
            action,
            reason: format!("etcd compacted {start} three times while it was being listed"),
        })
    }
}

impl Drop for EtcdStore {
    /// Revokes the lease, so a leader that stops hands over at once instead of after
    /// the lease TTL, and stops the client runtime without waiting for it.
    fn drop(&mut self) {
        self.release_lease();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `fut` on `rt` and waits on this thread, bounded by `timeout`. Works from plain
/// threads and from inside any tokio runtime (where `Runtime::block_on` would panic).
fn bridge<T: Send + 'static>(
    rt: &Runtime,
    timeout: Duration,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        // The balancer waits for a ready endpoint without a deadline of its own.
        let _ = tx.send(tokio::time::timeout(timeout, fut).await);
    });
    let wait = move || rx.recv();
    let out = match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    };
    match out {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(format!("no answer within {timeout:?}")),
        Err(_) => Err("the etcd client runtime stopped".into()),
    }
}

/// Whether `e` means etcd could not be reached or could not answer (no quorum, timeout).
fn unavailable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(s) => match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => true,
            // A connection that breaks under a request in flight (the member was killed)
            // comes back as Unknown with the transport error as its source.
            Code::Unknown => caused_by_transport(s),
            _ => false,
        },
        E::TransportError(_) | E::IoError(_) => true,
        _ => false,
    }
}

/// Only a connection lost or refused: a TLS refusal (a bad client certificate) also comes
/// as an I/O error under the transport error, and is a configuration error, not an outage.
fn caused_by_transport(status: &tonic::Status) -> bool {
    use std::io::ErrorKind as K;
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                K::BrokenPipe
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::ConnectionRefused
                    | K::NotConnected
                    | K::UnexpectedEof
            );
        }
        cause = e.source();
    }
    false
}

fn check_size(
    action: &'static str,
    key: &str,
    bytes: usize,
    limit: usize,
) -> Result<(), StoreError> {
    if bytes > limit {
        return Err(StoreError::TooLarge {
            action,
            key: key.to_string(),
            bytes,
            limit,
        });
    }
    Ok(())
}

/// The first key after every key starting with `prefix` (which ends in '/', so the last
/// byte can simply be incremented).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::unavailable;

    #[test]
    fn a_connection_broken_under_a_request_is_unavailability() {
        let broken = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let status = tonic::Status::from_error(Box::new(broken));
        assert_eq!(status.code(), tonic::Code::Unknown);
        assert!(unavailable(&etcd_client::Error::GRpcStatus(status)));
        // An Unknown answer etcd itself gave is not, nor a refused client certificate.
        let answered = tonic::Status::unknown("etcdserver: something odd");
        assert!(!unavailable(&etcd_client::Error::GRpcStatus(answered)));
        let refused = std::io::Error::new(std::io::ErrorKind::InvalidData, "BadCertificate");
        let refused = tonic::Status::from_error(Box::new(refused));
        assert!(!unavailable(&etcd_client::Error::GRpcStatus(refused)));
    }
}
