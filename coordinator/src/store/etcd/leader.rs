//! Leader election on etcd: a replica leads while the key `<prefix>leader` exists with
//! its lease attached. The key is created only if absent (`create_revision == 0`), so one
//! replica holds it; its create revision is the fencing token ([`LeaderTerm`]): a
//! leader-only write compares it in the same transaction, and when the lease expires
//! etcd deletes the key, so a deposed leader's write (a process paused past its lease)
//! finds another create revision, or none, and is refused.
//!
//! One lease per store, kept alive every TTL/3 by a task on the store's runtime. When
//! etcd says the lease is gone (TTL 0), or no keep-alive was answered for a whole TTL,
//! the lease is dropped and the next `try_lead` asks for a new one.

use super::EtcdStore;
use crate::store::{LeaderTerm, StoreError};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

pub(super) struct Lease {
    id: i64,
    alive: Arc<AtomicBool>,
    keeper: JoinHandle<()>,
}

impl EtcdStore {
    /// The id of this store's live lease, granted (and kept alive) on first use.
    pub(super) fn lease_id(&self, action: &'static str) -> Result<i64, StoreError> {
        let mut slot = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = slot.as_ref().filter(|l| l.alive.load(Ordering::Acquire)) {
            return Ok(l.id);
        }
        let ttl = self.lease_ttl;
        let client = self.client.clone();
        let secs = ttl.as_secs() as i64;
        let id = self
            .call(action, move || {
                let mut client = client.clone();
                async move { client.lease_grant(secs, None).await }
            })?
            .id();
        let alive = Arc::new(AtomicBool::new(true));
        let rt = self.rt.as_ref().ok_or(StoreError::Io {
            action,
            reason: "the etcd client is shut down".into(),
        })?;
        let keeper = rt.spawn(keep_alive(self.client.clone(), id, ttl, alive.clone()));
        if let Some(old) = slot.replace(Lease { id, alive, keeper }) {
            old.keeper.abort();
        }
        Ok(id)
    }

    pub(super) fn campaign(&self, replica: &str) -> Result<Option<LeaderTerm>, StoreError> {
        const A: &str = "campaign for leadership";
        let id = self.lease_id(A)?;
        match self.campaign_with(replica, id) {
            // The lease ended in etcd before the keep-alive task noticed (expired while
            // etcd was out of reach, or revoked): start over with a new one.
            Err(StoreError::Io { reason, .. }) if reason.contains("lease not found") => {
                self.forget_lease(id);
                let id = self.lease_id(A)?;
                self.campaign_with(replica, id)
            }
            other => other,
        }
    }

    pub(super) fn forget_lease(&self, id: i64) {
        let mut slot = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|l| l.id == id)
            && let Some(l) = slot.take()
        {
            l.keeper.abort();
        }
    }

    fn campaign_with(&self, replica: &str, id: i64) -> Result<Option<LeaderTerm>, StoreError> {
        const A: &str = "campaign for leadership";
        let key = self.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                replica,
                Some(PutOptions::new().with_lease(id)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = self.txn(A, txn)?;
        if resp.succeeded() {
            // The put is the transaction's only write: the key's create revision is the
            // revision the transaction produced.
            let fence = resp.header().map_or(0, |h| h.revision());
            return Ok(Some(LeaderTerm { fence }));
        }
        // Held already: by this store (an earlier call) or by another replica.
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op
                && let Some(kv) = g.kvs().first()
                && kv.lease() == id
            {
                return Ok(Some(LeaderTerm {
                    fence: kv.create_revision(),
                }));
            }
        }
        Ok(None)
    }

    pub(super) fn step_down(&self, term: LeaderTerm) -> Result<(), StoreError> {
        const A: &str = "resign leadership";
        let key = self.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                term.fence,
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        self.txn(A, txn)?;
        Ok(())
    }

    /// Deletes `keys` only while `term` is the current leadership.
    pub(super) fn fenced_delete(
        &self,
        action: &'static str,
        term: LeaderTerm,
        keys: &[String],
    ) -> Result<(), StoreError> {
        let fence = Compare::create_revision(self.key("leader"), CompareOp::Equal, term.fence);
        let ops: Vec<TxnOp> = keys
            .iter()
            .map(|k| TxnOp::delete(k.as_str(), None))
            .collect();
        if self
            .txn(action, Txn::new().when([fence]).and_then(ops))?
            .succeeded()
        {
            Ok(())
        } else {
            Err(StoreError::NotLeader { action })
        }
    }

    /// Stops keeping the lease alive and revokes it (best effort: if etcd is away the
    /// lease expires after its TTL anyway), which deletes the leader key if we held it.
    pub(super) fn release_lease(&self) {
        let lease = self.lease.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(l) = lease {
            l.keeper.abort();
            let client = self.client.clone();
            if let Err(e) = self.call("revoke lease", move || {
                let mut client = client.clone();
                async move { client.lease_revoke(l.id).await }
            }) {
                tracing::warn!("{e}; the lease expires within {:?}", self.lease_ttl);
            }
        }
    }
}

/// Keeps lease `id` alive every `ttl`/3, re-opening the keep-alive stream when it breaks
/// (etcd-io/etcd#7357: streams can stop silently, so each answer has a deadline). Clears
/// `alive` when etcd says the lease is gone or no answer came for a whole TTL.
async fn keep_alive(client: Client, id: i64, ttl: Duration, alive: Arc<AtomicBool>) {
    let period = ttl / 3;
    let mut last_ack = Instant::now();
    while last_ack.elapsed() < ttl {
        let mut c = client.clone();
        if let Ok((mut keeper, mut stream)) = c.lease_keep_alive(id).await {
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(period, stream.message()).await {
                    Ok(Ok(Some(resp))) if resp.ttl() > 0 => last_ack = Instant::now(),
                    Ok(Ok(Some(_))) => {
                        tracing::warn!("etcd lease {id:x} expired; leadership lost");
                        alive.store(false, Ordering::Release);
                        return;
                    }
                    _ => break,
                }
                tokio::time::sleep(period).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tracing::warn!("etcd lease {id:x} not renewed for {ttl:?}; leadership lost");
    alive.store(false, Ordering::Release);
}
