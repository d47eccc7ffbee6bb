//! What a replica tells the others about its agents, kept alive by its lease
//! (docs/design/0010, phase 3):
//!
//! - `sessions/<replica>/<guest>`: a session of `guest` is open on `replica`. Put under
//!   the replica's lease, so a replica that dies (or loses etcd for a lease) takes its
//!   sessions with it and no replica shows them as connected any more.
//! - `plans/<guest>`: a dry run (`phoenix plan`) for the replica holding the guest's
//!   session, and `plan_reports/<guest>`: its agent's answer, for every replica's report
//!   watchers. Both live under a short lease granted per plan, so etcd forgets them on
//!   its own. Only replicas hold etcd credentials: what a guest says reaches these keys
//!   only as the report of its own authenticated session, for a plan that was asked.

use super::EtcdStore;
use crate::store::{DesiredRecord, StoreError};
use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use phoenix_proto::model::{ApplyReport, GuestId};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The replica holding a guest's session by the answer to one claim of
/// [`EtcdStore::sync_sessions`]; None when the claim was granted.
fn holder_of(answer: &TxnOpResponse) -> Option<String> {
    let TxnOpResponse::Txn(outer) = answer else {
        return Some("an unknown replica".into());
    };
    if outer.succeeded() {
        return None;
    }
    let Some(TxnOpResponse::Txn(inner)) = outer.op_responses().into_iter().next() else {
        return Some("an unknown replica".into());
    };
    if inner.succeeded() {
        return None;
    }
    match inner.op_responses().into_iter().next() {
        Some(TxnOpResponse::Get(g)) => g
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
        _ => None,
    }
    .or_else(|| Some("an unknown replica".into()))
}

impl EtcdStore {
    fn session_key(&self, replica: &str, g: GuestId) -> String {
        self.key(&format!("sessions/{replica}/{:010}", g.get()))
    }

    fn holder_key(&self, g: GuestId) -> String {
        self.key(&format!("holders/{:010}", g.get()))
    }

    /// Claims and registers `open` sessions and removes `closed` ones of `replica`,
    /// under its lease, in transactions of at most `MAX_TXN_KEYS` guests; returns the
    /// lease used and the guests of `open` another replica holds (with its name), which
    /// this replica must not serve. A lease that changed (the old one expired) means every
    /// registration is to be put again: the caller compares.
    ///
    /// One live session per identity across the cluster: `holders/<guest>` names the one
    /// replica holding the guest's session, under that replica's lease. A claim puts it
    /// (and `sessions/<replica>/<guest>`) only if it is absent or already this replica's,
    /// each guest in a nested transaction of one request, so two replicas racing for a
    /// guest end with exactly one holder, and a replica that dies lets its guests go when
    /// its lease expires. A removal deletes the holder key only if it is still this
    /// replica's.
    pub fn sync_sessions(
        &self,
        replica: &str,
        open: &[GuestId],
        closed: &[GuestId],
    ) -> Result<(i64, HashMap<GuestId, String>), StoreError> {
        const A: &str = "register agent sessions";
        let lease = self.lease_id(A)?;
        let under = || Some(PutOptions::new().with_lease(lease));
        let mut lost = HashMap::new();
        for chunk in open.chunks(super::MAX_TXN_KEYS) {
            let claims: Vec<TxnOp> = chunk
                .iter()
                .map(|g| {
                    let (holder, session) = (self.holder_key(*g), self.session_key(replica, *g));
                    let take = vec![
                        TxnOp::put(holder.as_str(), replica, under()),
                        TxnOp::put(session.as_str(), replica, under()),
                    ];
                    let mine_or_who = Txn::new()
                        .when([Compare::value(holder.as_str(), CompareOp::Equal, replica)])
                        .and_then(take.clone())
                        .or_else([TxnOp::get(holder.as_str(), None)]);
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::create_revision(
                                holder.as_str(),
                                CompareOp::Equal,
                                0,
                            )])
                            .and_then(take)
                            .or_else([TxnOp::txn(mine_or_who)]),
                    )
                })
                .collect();
            let resp = self.lease_txn(A, lease, Txn::new().and_then(claims))?;
            let answers = resp.op_responses();
            if answers.len() != chunk.len() {
                return Err(StoreError::Io {
                    action: A,
                    reason: format!(
                        "claimed {} sessions, got {} answers",
                        chunk.len(),
                        answers.len()
                    ),
                });
            }
            for (g, answer) in chunk.iter().zip(answers) {
                if let Some(other) = holder_of(&answer) {
                    lost.insert(*g, other);
                }
            }
        }
        let mut ops: Vec<TxnOp> = Vec::with_capacity(closed.len() * 2);
        for g in closed {
            let holder = self.holder_key(*g);
            ops.push(TxnOp::txn(
                Txn::new()
                    .when([Compare::value(holder.as_str(), CompareOp::Equal, replica)])
                    .and_then([TxnOp::delete(holder.as_str(), None)]),
            ));
            ops.push(TxnOp::delete(self.session_key(replica, *g), None));
        }
        for chunk in ops.chunks(super::MAX_TXN_KEYS) {
            self.lease_txn(A, lease, Txn::new().and_then(chunk.to_vec()))?;
        }
        Ok((lease, lost))
    }

    /// A transaction putting keys under `lease`; a lease etcd no longer knows is dropped
    /// here so the next sync takes a new one.
    fn lease_txn(
        &self,
        action: &'static str,
        lease: i64,
        txn: Txn,
    ) -> Result<TxnResponse, StoreError> {
        match self.txn(action, txn) {
            Err(StoreError::Io { reason, .. }) if reason.contains("lease not found") => {
                // Expired before the keep-alive noticed: the next sync takes a new one.
                self.forget_lease(lease);
                Err(StoreError::Io {
                    action,
                    reason: format!("lease {lease:x} expired; registering again"),
                })
            }
            r => r,
        }
    }

    /// The sessions registered for `replica` under `lease` (what is really in etcd).
    pub fn registered_sessions(
        &self,
        replica: &str,
        lease: i64,
    ) -> Result<HashSet<GuestId>, StoreError> {
        Ok(self
            .sessions_under(&format!("sessions/{replica}/"))?
            .into_iter()
            .filter(|(_, _, l)| *l == lease)
            .map(|(g, _, _)| g)
            .collect())
    }

    /// Every registered session: guest and replica.
    pub fn all_sessions(&self) -> Result<Vec<(GuestId, String)>, StoreError> {
        Ok(self
            .sessions_under("sessions/")?
            .into_iter()
            .map(|(g, r, _)| (g, r))
            .collect())
    }

    /// (guest, replica, lease) of every session key under `<prefix><dir>`. The values
    /// are a replica name each, so one range read holds even 10,000 of them.
    fn sessions_under(&self, dir: &str) -> Result<Vec<(GuestId, String, i64)>, StoreError> {
        let start = self.key(dir);
        let end = super::prefix_end(&start);
        let kv = self.kv.clone();
        let from = start.clone();
        let resp = self.call("list agent sessions", move || {
            let (mut kv, from, end) = (kv.clone(), from.clone(), end.clone());
            async move { kv.get(from, Some(GetOptions::new().with_range(end))).await }
        })?;
        let prefix_len = self.key("sessions/").len();
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let rest = kv.key().get(prefix_len..)?;
                let (replica, guest) = std::str::from_utf8(rest).ok()?.rsplit_once('/')?;
                let g = GuestId::try_from(guest.parse::<u32>().ok()?).ok()?;
                Some((g, replica.to_string(), kv.lease()))
            })
            .collect())
    }

    /// Forwards dry runs to whichever replica holds each guest's session: one lease of
    /// `ttl` for the whole plan (`forward::plan_lease_ttl`), `plans/<guest>` under it.
    pub fn put_plans(
        &self,
        plans: &[(GuestId, DesiredRecord)],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        const A: &str = "forward a plan";
        if plans.is_empty() {
            return Ok(());
        }
        let lease = self.grant(A, ttl)?;
        let mut ops = Vec::with_capacity(plans.len());
        let mut batch_bytes = 0;
        let mut batches = Vec::new();
        for (g, rec) in plans {
            let key = self.key(&format!("plans/{:010}", g.get()));
            let value = serde_json::to_vec(rec).map_err(|e| StoreError::Io {
                action: A,
                reason: e.to_string(),
            })?;
            super::check_size(A, &key, value.len(), super::MAX_VALUE_BYTES)?;
            if ops.len() == super::MAX_TXN_KEYS || batch_bytes + value.len() > super::MAX_TXN_BYTES
            {
                batches.push(std::mem::take(&mut ops));
                batch_bytes = 0;
            }
            batch_bytes += value.len();
            ops.push(TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        batches.push(ops);
        for ops in batches {
            self.txn(A, Txn::new().and_then(ops))?;
        }
        Ok(())
    }

    /// The report of a forwarded plan, under the plan's lease (gone with it). A plan
    /// whose lease expired is not answered: nobody waits for it any more.
    pub fn put_plan_report(
        &self,
        g: GuestId,
        lease: i64,
        report: &ApplyReport,
    ) -> Result<(), StoreError> {
        const A: &str = "return a plan report";
        let key = self.key(&format!("plan_reports/{:010}", g.get()));
        let value = serde_json::to_vec(report).map_err(|e| StoreError::Io {
            action: A,
            reason: e.to_string(),
        })?;
        super::check_size(A, &key, value.len(), super::MAX_VALUE_BYTES)?;
        let kv = self.kv.clone();
        self.call(A, move || {
            let (mut kv, key, value) = (kv.clone(), key.clone(), value.clone());
            async move {
                kv.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })?;
        Ok(())
    }
}
