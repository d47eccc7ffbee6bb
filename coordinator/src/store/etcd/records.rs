//! The records of the `Store` trait on etcd. Layout under the prefix:
//! `tokens/<hash>`, `agents/<guest>`, `desired/<guest>`, `declared/<guest>`,
//! `reports/<guest>`, `service_certs/<guest>/<name>`, `meta/revision` (the counter) and
//! `leader`. Guest ids are zero-padded so key order is numeric order, like redb's.

use super::{EtcdStore, MAX_TXN_BYTES, MAX_TXN_KEYS, MAX_VALUE_BYTES, check_size};
use crate::store::{
    AgentRecord, DesiredRecord, LeaderTerm, ReportRecord, ReportWrite, ServiceCertRecord, Store,
    StoreError, TokenRecord, check_current, mark_revoked, spend_token, token_usable,
};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use phoenix_proto::model::GuestId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashSet;

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Io {
        action: "encode record",
        reason: e.to_string(),
    })
}

fn dec<T: DeserializeOwned>(key: &str, b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Io {
        action: "decode record",
        reason: format!("{key}: {e}"),
    })
}

fn dec_opt<T: DeserializeOwned>(key: &str, b: Option<&Vec<u8>>) -> Result<Option<T>, StoreError> {
    b.map(|b| dec(key, b)).transpose()
}

fn guest_of(action: &'static str, key: &str) -> Result<GuestId, StoreError> {
    let id = key.split('/').next().unwrap_or_default();
    id.parse().map_err(|_| StoreError::Io {
        action,
        reason: format!("key {key:?} does not start with a guest id"),
    })
}

impl EtcdStore {
    fn guest_key(&self, dir: &str, g: GuestId) -> String {
        self.key(&format!("{dir}/{:010}", g.get()))
    }

    fn token_key(&self, hash: &str) -> String {
        self.key(&format!("tokens/{hash}"))
    }

    fn get_guest<T: DeserializeOwned>(
        &self,
        action: &'static str,
        dir: &str,
        g: GuestId,
    ) -> Result<Option<T>, StoreError> {
        let key = self.guest_key(dir, g);
        let snap = self.read_many(action, std::slice::from_ref(&key))?;
        dec_opt(&key, snap.values[0].as_ref())
    }

    fn all_guests<T: DeserializeOwned>(
        &self,
        action: &'static str,
        dir: &str,
    ) -> Result<Vec<(GuestId, T)>, StoreError> {
        self.list(action, dir)?
            .into_iter()
            .map(|(k, v)| Ok((guest_of(action, &k)?, dec(&k, &v)?)))
            .collect()
    }

    /// Read-modify-write of an enrolled guest's record.
    fn modify_agent(
        &self,
        action: &'static str,
        g: GuestId,
        f: &mut dyn FnMut(&mut AgentRecord) -> Result<(), StoreError>,
    ) -> Result<AgentRecord, StoreError> {
        let key = self.guest_key("agents", g);
        self.update_many(action, std::slice::from_ref(&key), |cur| {
            let mut rec: AgentRecord =
                dec_opt(&key, cur[0].as_ref())?.ok_or(StoreError::NotEnrolled { guest: g })?;
            f(&mut rec)?;
            Ok((vec![Some(enc(&rec)?)], rec))
        })
    }

    /// Stores `states` labelled `revision` in transactions of bounded size. A guest whose
    /// stored state is already newer (a concurrent apply on another replica allocated a
    /// later revision and wrote first) keeps it.
    fn write_desired(
        &self,
        revision: u64,
        states: &[(GuestId, String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        const A: &str = "save desired states";
        let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
        let mut bytes = 0;
        for (g, digest, spec_json) in states {
            let key = self.guest_key("desired", *g);
            let value = enc(&DesiredRecord {
                revision,
                digest: digest.clone(),
                spec_json: spec_json.clone(),
            })?;
            check_size(A, &key, value.len(), MAX_VALUE_BYTES)?;
            // etcd refuses a transaction that writes one key twice; a repeated guest goes
            // to the next batch, so the last state given wins, as with redb.
            if batch.len() == MAX_TXN_KEYS
                || bytes + value.len() > MAX_TXN_BYTES
                || batch.iter().any(|(k, _)| *k == key)
            {
                self.write_desired_batch(revision, &batch)?;
                batch.clear();
                bytes = 0;
            }
            bytes += value.len();
            batch.push((key, value));
        }
        if !batch.is_empty() {
            self.write_desired_batch(revision, &batch)?;
        }
        Ok(())
    }

    fn write_desired_batch(
        &self,
        revision: u64,
        batch: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        const A: &str = "save desired states";
        let keys: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
        self.update_many(A, &keys, |cur| {
            let mut new = Vec::with_capacity(batch.len());
            for ((key, value), cur) in batch.iter().zip(cur) {
                let stored: Option<DesiredRecord> = dec_opt(key, cur.as_ref())?;
                let newer = stored.is_some_and(|d| d.revision > revision);
                new.push((!newer).then(|| value.clone()));
            }
            Ok((new, ()))
        })
    }
}

impl EtcdStore {
    /// Stores the reports `group` (indexes into `batch`, one per guest) with their agent
    /// records in one transaction that compares every agent record read; one result per
    /// index. Err: the store failed (the whole group failed).
    fn commit_reports(
        &self,
        batch: &[ReportWrite],
        group: &[usize],
    ) -> Result<GroupResults, StoreError> {
        const A: &str = "save report";
        for _ in 0..super::MAX_ATTEMPTS {
            let touching: Vec<usize> = group
                .iter()
                .copied()
                .filter(|i| batch[*i].touches_agent())
                .collect();
            let keys: Vec<String> = touching
                .iter()
                .map(|i| self.guest_key("agents", batch[*i].guest))
                .collect();
            let snap = if keys.is_empty() {
                None
            } else {
                Some(self.read_many(A, &keys)?)
            };
            let mut results: GroupResults = Vec::new();
            let mut ops = Vec::new();
            let mut bytes = 0;
            for &i in group {
                let w = &batch[i];
                let agent = match touching.iter().position(|t| *t == i) {
                    None => Ok(None),
                    Some(k) => {
                        let cur = snap.as_ref().and_then(|s| s.values[k].as_ref());
                        match dec_opt::<AgentRecord>(&keys[k], cur) {
                            Ok(None) => Err(StoreError::NotEnrolled { guest: w.guest }),
                            Ok(Some(mut rec)) => {
                                check_current(w.guest, &rec, None).and_then(|()| {
                                    w.apply_to(&mut rec);
                                    Ok(Some((k, enc(&rec)?)))
                                })
                            }
                            Err(e) => Err(e),
                        }
                    }
                };
                let report_key = self.guest_key("reports", w.guest);
                let report = enc(&ReportRecord {
                    seq: 0,
                    ..w.record.clone()
                })
                .and_then(|v| {
                    check_size(A, &report_key, v.len(), MAX_VALUE_BYTES)?;
                    Ok(v)
                });
                match (agent, report) {
                    (Ok(agent), Ok(report)) => {
                        if let Some((k, rec)) = agent {
                            bytes += rec.len();
                            ops.push(TxnOp::put(keys[k].as_str(), rec, None));
                        }
                        bytes += report.len();
                        ops.push(TxnOp::put(report_key, report, None));
                        results.push((i, Ok(0)));
                    }
                    (Err(e), _) | (_, Err(e)) => results.push((i, Err(e))),
                }
            }
            if bytes > MAX_TXN_BYTES && group.len() > 1 {
                // Large reports: halves, each its own transaction.
                let (a, b) = group.split_at(group.len() / 2);
                let mut out = self.commit_reports(batch, a)?;
                out.extend(self.commit_reports(batch, b)?);
                return Ok(out);
            }
            if ops.is_empty() {
                return Ok(results);
            }
            let compares: Vec<Compare> = snap
                .iter()
                .flat_map(|s| keys.iter().zip(&s.mod_revs))
                .map(|(k, rev)| Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev))
                .collect();
            let resp = self.txn(A, Txn::new().when(compares).and_then(ops))?;
            if !resp.succeeded() {
                // An agent record changed meanwhile (a Hello, a renewal): decide again.
                continue;
            }
            let at = resp.header().map_or(0, |h| h.revision() as u64);
            for (_, r) in &mut results {
                if let Ok(pos) = r {
                    *pos = at;
                }
            }
            return Ok(results);
        }
        Err(StoreError::Io {
            action: A,
            reason: format!(
                "agent records kept changing under concurrent writers; gave up after {} attempts",
                super::MAX_ATTEMPTS
            ),
        })
    }
}

/// Each report of a group (its index in the batch) with its result.
type GroupResults = Vec<(usize, Result<u64, StoreError>)>;

/// The same failure for each report of a group the store failed (StoreError is not Clone).
fn group_failed(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable {
            action,
            endpoints,
            reason,
        } => StoreError::Unavailable {
            action,
            endpoints: endpoints.clone(),
            reason: reason.clone(),
        },
        other => StoreError::Io {
            action: "save report",
            reason: other.to_string(),
        },
    }
}

impl Store for EtcdStore {
    /// Each report is stored in one transaction with the agent record it changes: the
    /// agent's `last_pass_seq` is never stored without its report. (Two writes, as the
    /// trait's default makes, let a replica killed between them leave the pass number
    /// recorded and the report not; the agent, never acknowledged, sends the report again
    /// to another replica, which recognises the number, acknowledges, and stores
    /// nothing: the report is lost.) Reports of different guests go together, up to
    /// `MAX_TXN_KEYS` keys and 1 MiB per transaction: one read and one write per group
    /// instead of three round trips per report.
    fn put_reports(&self, batch: &[ReportWrite]) -> Vec<Result<u64, StoreError>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut group: Vec<usize> = Vec::new();
        let mut guests = HashSet::new();
        for (i, w) in batch.iter().enumerate() {
            // A guest once per transaction (etcd refuses a key twice), two keys each.
            if group.len() * 2 >= MAX_TXN_KEYS || !guests.insert(w.guest) {
                groups.push(std::mem::take(&mut group));
                guests.clear();
                guests.insert(w.guest);
            }
            group.push(i);
        }
        groups.push(group);
        let mut out: Vec<Option<Result<u64, StoreError>>> = batch.iter().map(|_| None).collect();
        for group in groups.iter().filter(|g| !g.is_empty()) {
            match self.commit_reports(batch, group) {
                Ok(results) => {
                    for (i, r) in results {
                        out[i] = Some(r);
                    }
                }
                Err(e) => {
                    for i in group {
                        out[*i] = Some(Err(group_failed(&e)));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Io {
                        action: "save report",
                        reason: "no result for a report of the batch".into(),
                    })
                })
            })
            .collect()
    }

    fn put_token(&self, token_hash: &str, rec: &TokenRecord) -> Result<(), StoreError> {
        self.put("save join token", self.token_key(token_hash), enc(rec)?)
    }

    fn check_token(
        &self,
        token_hash: &str,
        claimed: GuestId,
        now_unix: i64,
    ) -> Result<TokenRecord, StoreError> {
        const A: &str = "check join token";
        let keys = [
            self.token_key(token_hash),
            self.guest_key("agents", claimed),
        ];
        let snap = self.read_many(A, &keys)?;
        let tok: TokenRecord =
            dec_opt(&keys[0], snap.values[0].as_ref())?.ok_or(StoreError::TokenUnknown)?;
        let current: Option<AgentRecord> = dec_opt(&keys[1], snap.values[1].as_ref())?;
        token_usable(&tok, claimed, now_unix, current.as_ref())?;
        Ok(tok)
    }

    fn enroll(
        &self,
        token_hash: &str,
        claimed: GuestId,
        now_unix: i64,
        expected_serial: Option<&str>,
        rec: &AgentRecord,
    ) -> Result<(), StoreError> {
        const A: &str = "enroll agent";
        let keys = [
            self.token_key(token_hash),
            self.guest_key("agents", claimed),
        ];
        let agent = enc(rec)?;
        // The token and the guest's record are compared in the same transaction, so of
        // two replicas enrolling with one token, the second re-reads a used token.
        self.update_many(A, &keys, |cur| {
            let tok: TokenRecord =
                dec_opt(&keys[0], cur[0].as_ref())?.ok_or(StoreError::TokenUnknown)?;
            let current: Option<AgentRecord> = dec_opt(&keys[1], cur[1].as_ref())?;
            let tok = spend_token(
                tok,
                claimed,
                now_unix,
                expected_serial,
                current.as_ref(),
                &rec.serial,
            )?;
            Ok((vec![Some(enc(&tok)?), Some(agent.clone())], ()))
        })
    }

    fn agent(&self, g: GuestId) -> Result<Option<AgentRecord>, StoreError> {
        self.get_guest("read agent", "agents", g)
    }

    /// `durable` has no meaning here: every etcd write is replicated to a quorum.
    fn update_agent(
        &self,
        g: GuestId,
        expected_serial: Option<&str>,
        _durable: bool,
        f: &mut dyn FnMut(&mut AgentRecord),
    ) -> Result<AgentRecord, StoreError> {
        self.modify_agent("update agent", g, &mut |rec| {
            check_current(g, rec, expected_serial)?;
            f(rec);
            Ok(())
        })
    }

    fn revoke_agent(&self, g: GuestId, now_unix: i64) -> Result<AgentRecord, StoreError> {
        self.modify_agent("revoke agent", g, &mut |rec| {
            mark_revoked(rec, now_unix);
            Ok(())
        })
    }

    fn agents(&self) -> Result<Vec<(GuestId, AgentRecord)>, StoreError> {
        self.all_guests("list agents", "agents")
    }

    fn desired(&self, g: GuestId) -> Result<Option<DesiredRecord>, StoreError> {
        self.get_guest("read desired state", "desired", g)
    }

    fn desired_many(&self, guests: &[GuestId]) -> Result<Vec<Option<DesiredRecord>>, StoreError> {
        let mut out = Vec::with_capacity(guests.len());
        for chunk in guests.chunks(MAX_TXN_KEYS) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|g| self.guest_key("desired", *g))
                .collect();
            let snap = self.read_many("read desired states", &keys)?;
            for (k, v) in keys.iter().zip(&snap.values) {
                out.push(dec_opt(k, v.as_ref())?);
            }
        }
        Ok(out)
    }

    fn all_desired(&self) -> Result<Vec<(GuestId, DesiredRecord)>, StoreError> {
        self.all_guests("list desired states", "desired")
    }

    /// The revision comes from a counter key incremented by its own transaction, so
    /// every replica's applies are numbered 1, 2, 3… without gaps or duplicates. The
    /// states follow in transactions of at most `MAX_TXN_KEYS` keys and 1 MiB: a large
    /// apply interrupted by a lost etcd is partly stored (each guest consistent), and
    /// running it again completes it.
    fn put_desired(&self, states: &[(GuestId, String, Vec<u8>)]) -> Result<u64, StoreError> {
        const A: &str = "allocate a revision";
        let key = self.key("meta/revision");
        let revision = self.update_many(A, std::slice::from_ref(&key), |cur| {
            let last: u64 = match &cur[0] {
                Some(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| StoreError::Io {
                        action: A,
                        reason: format!(
                            "{key} holds {:?}, not a number",
                            String::from_utf8_lossy(b)
                        ),
                    })?,
                None => 0,
            };
            let next = last + 1;
            Ok((vec![Some(next.to_string().into_bytes())], next))
        })?;
        self.write_desired(revision, states)?;
        Ok(revision)
    }

    fn declared(&self, g: GuestId) -> Result<Option<Vec<u8>>, StoreError> {
        let snap = self.read_many(
            "read declared facts",
            std::slice::from_ref(&self.guest_key("declared", g)),
        )?;
        Ok(snap.values.into_iter().next().flatten())
    }

    fn put_declared(&self, g: GuestId, json: &[u8]) -> Result<(), StoreError> {
        self.put(
            "save declared facts",
            self.guest_key("declared", g),
            json.to_vec(),
        )
    }

    fn put_service_cert(&self, g: GuestId, rec: &ServiceCertRecord) -> Result<(), StoreError> {
        let key = self.key(&format!("service_certs/{:010}/{}", g.get(), rec.name));
        self.put("save service certificate", key, enc(rec)?)
    }

    fn service_certs(&self) -> Result<Vec<(GuestId, ServiceCertRecord)>, StoreError> {
        self.all_guests("list service certificates", "service_certs")
    }

    /// A report's position (`seq`) is the etcd revision that wrote it.
    fn report(&self, g: GuestId) -> Result<Option<ReportRecord>, StoreError> {
        let key = self.guest_key("reports", g);
        let snap = self.read_many("read report", std::slice::from_ref(&key))?;
        let rec: Option<ReportRecord> = dec_opt(&key, snap.values[0].as_ref())?;
        Ok(rec.map(|r| ReportRecord {
            seq: snap.mod_revs[0] as u64,
            ..r
        }))
    }

    fn put_report(&self, g: GuestId, rec: &ReportRecord) -> Result<u64, StoreError> {
        let rec = ReportRecord {
            seq: 0,
            ..rec.clone()
        };
        self.put_at("save report", self.guest_key("reports", g), enc(&rec)?)
    }

    fn reports_since(&self, after: u64) -> Result<Vec<(GuestId, ReportRecord)>, StoreError> {
        const A: &str = "read reports since";
        let after = i64::try_from(after).map_err(|_| StoreError::Io {
            action: A,
            reason: format!("position {after} is beyond etcd's revisions"),
        })?;
        let mut found = self
            .list_since(A, "reports", after)?
            .into_iter()
            .map(|(k, v, rev)| {
                let rec: ReportRecord = dec(&k, &v)?;
                Ok((
                    guest_of(A, &k)?,
                    ReportRecord {
                        seq: rev as u64,
                        ..rec
                    },
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        found.sort_by_key(|(_, r)| r.seq);
        Ok(found)
    }

    fn try_lead(&self, replica: &str) -> Result<Option<LeaderTerm>, StoreError> {
        self.campaign(replica)
    }

    fn resign(&self, term: LeaderTerm) -> Result<(), StoreError> {
        self.step_down(term)
    }

    fn prune_tokens(
        &self,
        term: LeaderTerm,
        expired_before_unix: i64,
    ) -> Result<usize, StoreError> {
        const A: &str = "prune join tokens";
        let mut expired = Vec::new();
        for (hash, v) in self.list(A, "tokens")? {
            let tok: TokenRecord = dec(&hash, &v)?;
            if tok.expires_unix < expired_before_unix {
                expired.push(self.token_key(&hash));
            }
        }
        for chunk in expired.chunks(MAX_TXN_KEYS) {
            self.fenced_delete(A, term, chunk)?;
        }
        Ok(expired.len())
    }

    fn register_replica(&self, replica: &str, addr: &str) -> Result<(), StoreError> {
        self.put_replica(replica, addr)
    }

    fn replica_addrs(&self) -> Result<Vec<String>, StoreError> {
        self.list_replica_addrs()
    }

    fn forward_plans(
        &self,
        plans: &[(GuestId, DesiredRecord)],
        wait: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.put_plans(plans, super::forward::plan_lease_ttl(wait))
            .map(|()| true)
    }

    fn forward_pass(&self, guest: GuestId, from: &str) -> Result<bool, StoreError> {
        self.put_pass_request(guest, from).map(|()| true)
    }

    fn claim_job(
        &self,
        term: LeaderTerm,
        job: &str,
        every: std::time::Duration,
        now_unix_ms: i64,
        replica: &str,
    ) -> Result<bool, StoreError> {
        self.claim(term, job, every, now_unix_ms, replica)
    }
}
