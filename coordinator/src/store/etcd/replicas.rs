//! What the replicas of a cluster share besides the records: their addresses (for join
//! tokens) under `replicas/<name>`, and the schedule of leader-only jobs under
//! `jobs/<name>`.

use super::EtcdStore;
use crate::store::{JOB_HISTORY, JobRecord, JobRun, LeaderTerm, StoreError};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};

impl EtcdStore {
    /// Kept without a lease: a replica that is down for a while still belongs in new
    /// tokens (its agents fail over while it is away and come back when it is up).
    pub(super) fn put_replica(&self, replica: &str, addr: &str) -> Result<(), StoreError> {
        self.put(
            "register replica",
            self.key(&format!("replicas/{replica}")),
            addr.as_bytes().to_vec(),
        )
    }

    pub(super) fn list_replica_addrs(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list("list replicas", "replicas")?
            .into_iter()
            .filter_map(|(_, v)| String::from_utf8(v).ok())
            .collect())
    }

    /// One transaction: the leader key still has `term`'s create revision, the job's
    /// record is the one read (so two leaders in a row cannot both claim one slot), and
    /// the last run is at least `every` ago.
    pub(super) fn claim(
        &self,
        term: LeaderTerm,
        job: &str,
        every: std::time::Duration,
        now_unix_ms: i64,
        replica: &str,
    ) -> Result<bool, StoreError> {
        const A: &str = "claim a scheduled job";
        let key = self.key(&format!("jobs/{job}"));
        let snap = self.read_many(A, std::slice::from_ref(&key))?;
        let mut rec: JobRecord = match &snap.values[0] {
            Some(v) => serde_json::from_slice(v).map_err(|e| StoreError::Io {
                action: A,
                reason: format!("{key}: {e}"),
            })?,
            None => JobRecord::default(),
        };
        let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
        if let Some(last) = rec.history.last()
            && now_unix_ms.saturating_sub(last.at_unix_ms) < every_ms
        {
            return Ok(false);
        }
        rec.runs += 1;
        rec.history.push(JobRun {
            at_unix_ms: now_unix_ms,
            replica: replica.to_string(),
            fence: term.fence,
        });
        if rec.history.len() > JOB_HISTORY {
            rec.history.remove(0);
        }
        let value = serde_json::to_vec(&rec).map_err(|e| StoreError::Io {
            action: A,
            reason: e.to_string(),
        })?;
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.key("leader"), CompareOp::Equal, term.fence),
                Compare::mod_revision(key.as_str(), CompareOp::Equal, snap.mod_revs[0]),
            ])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        if self.txn(A, txn)?.succeeded() {
            return Ok(true);
        }
        // Lost leadership, or another leader claimed it meanwhile: either way not ours.
        if self.still_leads(term)? {
            Ok(false)
        } else {
            Err(StoreError::NotLeader { action: A })
        }
    }

    fn still_leads(&self, term: LeaderTerm) -> Result<bool, StoreError> {
        let key = self.key("leader");
        let kv = self.kv.clone();
        let resp = self.call("check leadership", move || {
            let (mut kv, key) = (kv.clone(), key.clone());
            async move { kv.get(key, None).await }
        })?;
        Ok(resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == term.fence))
    }
}

impl EtcdStore {
    /// The value of `<prefix><rest>`, if any (cluster-wide settings such as the sealed CA).
    pub fn get_shared(&self, rest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(rest);
        Ok(self
            .read_many("read cluster setting", std::slice::from_ref(&key))?
            .values
            .swap_remove(0))
    }

    /// Creates `<prefix><rest>` only if absent: None when this call created it, else the
    /// value another replica put there first.
    pub fn create_shared(&self, rest: &str, value: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        const A: &str = "create cluster setting";
        let key = self.key(rest);
        super::check_size(A, &key, value.len(), super::MAX_VALUE_BYTES)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = self.txn(A, txn)?;
        if resp.succeeded() {
            return Ok(None);
        }
        for op in resp.op_responses() {
            if let etcd_client::TxnOpResponse::Get(g) = op
                && let Some(kv) = g.kvs().first()
            {
                return Ok(Some(kv.value().to_vec()));
            }
        }
        Err(StoreError::Io {
            action: A,
            reason: format!("{key} exists but could not be read"),
        })
    }
}
