//! What the coordinator must not forget across restarts: enrolled agents, join tokens,
//! desired revisions, the last report of each guest and the event log ([`events`]). Behind a trait so a distributed
//! store (etcd, shared by several coordinator replicas) can replace the embedded one; see
//! docs/design/0001-embedded-store.md and docs/design/0010-ha-on-etcd.md.

mod etcd;
pub mod events;
mod forget;
mod redb_store;

pub use etcd::{Change, EtcdConfig, EtcdStore, EtcdTls};
pub use events::{Event, EventBounds, EventLog, Retention, Topic};
pub use forget::{ForgetGuest, Forgotten};
pub use redb_store::RedbStore;

use phoenix_proto::model::{ApplyReport, GuestId};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open store at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("store {action}: {reason}")]
    Io {
        action: &'static str,
        reason: String,
    },
    #[error("join token is unknown (never issued, or issued by another coordinator)")]
    TokenUnknown,
    #[error(
        "join token was already used at {used_at_unix} (tokens are single-use; create a new one)"
    )]
    TokenUsed { used_at_unix: i64 },
    #[error("join token expired at {expired_at_unix} (create a new one)")]
    TokenExpired { expired_at_unix: i64 },
    #[error("join token is for guest {token_guest}, not guest {claimed}")]
    TokenGuest {
        token_guest: GuestId,
        claimed: GuestId,
    },
    #[error("guest {guest} is not enrolled")]
    NotEnrolled { guest: GuestId },
    #[error(
        "identity of guest {guest} was revoked at unix time {at}; re-join with a new token (`phoenix token create --guest {guest}`)"
    )]
    Revoked { guest: GuestId, at: i64 },
    /// Another enrollment or renewal of the guest committed while this one waited for
    /// the CA; writing ours would silently undo it.
    #[error(
        "identity of guest {guest} changed while the CA was signing (serial {expected} is now {found}); retry"
    )]
    Changed {
        guest: GuestId,
        expected: String,
        found: String,
    },
    /// The shared store cannot be reached or has lost its quorum; nothing was written.
    #[error("store {action}: etcd at {endpoints} is unavailable: {reason}")]
    Unavailable {
        action: &'static str,
        endpoints: String,
        reason: String,
    },
    #[error("store {action}: {key} would be {bytes} bytes, over the store's {limit}-byte limit")]
    TooLarge {
        action: &'static str,
        key: String,
        bytes: usize,
        limit: usize,
    },
    /// Fencing: a replica that lost leadership (its lease expired, another replica took
    /// over) must not do leader-only work any more.
    #[error("{action} refused: this coordinator replica is no longer the leader")]
    NotLeader { action: &'static str },
}

/// A replica's proof of leadership. Leader-only writes carry it and the store refuses
/// them once another replica has taken over (etcd: the leader key's create revision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderTerm {
    pub fence: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub guest: GuestId,
    pub expires_unix: i64,
    pub used_unix: Option<i64>,
    /// Serial of the identity this token produced. Until the agent has used that
    /// identity once (`AgentRecord::confirmed`) the same token may enroll again, so an
    /// answer the agent refused (clock skew, lost reply) does not burn the token.
    #[serde(default)]
    pub issued_serial: Option<String>,
    /// May replace the identity of a guest that is connected right now
    /// (`phoenix token create --replace`).
    #[serde(default)]
    pub replace: bool,
}

/// An enrolled agent's identity and what it last told us.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Serial of the identity cert issued last; a cert with another serial (an old
    /// identity of a rebuilt guest) is refused.
    pub serial: String,
    /// The serial before the last renewal, accepted until the new one is seen, so a
    /// renewal whose answer was lost does not lock the agent out.
    pub previous_serial: Option<String>,
    pub not_after_unix: i64,
    pub enrolled_unix: i64,
    pub renewed_unix: i64,
    pub last_seen_unix: i64,
    pub agent_version: String,
    pub applied_revision: u64,
    pub applied_digest: String,
    /// Facts from the last Hello, protobuf-encoded `v1::Facts`.
    #[serde(with = "base64_bytes")]
    pub facts: Vec<u8>,
    /// Set by `phoenix revoke`: every certificate of this guest is refused until it
    /// re-joins (step-ca 0.19 has no CRL/OCSP, so this deny-list is the revocation).
    #[serde(default)]
    pub revoked_unix: Option<i64>,
    /// The agent has authenticated with `serial` at least once; until then the join
    /// token that produced it may be used again.
    #[serde(default = "yes")]
    pub confirmed: bool,
    /// The highest outbox position (`PassReport::seq`) of this agent recorded so far: a
    /// report sent again because its acknowledgement was lost is not recorded twice.
    #[serde(default)]
    pub last_pass_seq: u64,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRecord {
    pub revision: u64,
    pub digest: String,
    #[serde(with = "base64_bytes")]
    pub spec_json: Vec<u8>,
}

/// Byte fields of records as base64 strings: serde's default, a JSON array of numbers,
/// takes up to 4 bytes per byte, and etcd caps a value at 1.5 MiB. Arrays written by
/// earlier versions are still read.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("base64 text or an array of bytes")
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
                STANDARD.decode(v).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_any(Bytes)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRecord {
    /// Where this report stands in the store's order of reports, set by `put_report`:
    /// increasing in commit order, so a watcher that fell behind asks for what came after
    /// the last position it had read (`reports_since`).
    #[serde(default)]
    pub seq: u64,
    /// The index of the report's event in the event log (`Applied`, `ApplyFailed`), which
    /// keeps every report, superseded or not: a report watcher that fell behind re-reads
    /// the log after the last index it read, and skips what it already had by this index.
    /// 0: no event (the log refused it) or stored by an older version.
    #[serde(default)]
    pub event: u64,
    pub received_unix: i64,
    pub report: ApplyReport,
}

/// What `Store::record_reports` did: the events' indexes, and each report's position or
/// its own error.
pub type RecordedReports = (Vec<u64>, Vec<Result<u64, StoreError>>);

/// Gives report `i` the index of its event, `indexes[event_of[i]]`.
fn number_reports(reports: &mut [ReportWrite], event_of: &[usize], indexes: &[u64]) {
    for (w, &i) in reports.iter_mut().zip(event_of) {
        w.record.event = indexes.get(i).copied().unwrap_or(0);
    }
}

/// One report for `Store::put_reports`.
#[derive(Debug, Clone)]
pub struct ReportWrite {
    pub guest: GuestId,
    pub record: ReportRecord,
    /// The report says the guest converged: its agent record takes the revision.
    pub converged: bool,
    /// The agent's number for the pass (its outbox): recorded so a resent report is
    /// recognised; None for older agents, or when its event could not be recorded.
    pub pass_seq: Option<u64>,
}

impl ReportWrite {
    /// Whether the guest's agent record changes with this report.
    pub fn touches_agent(&self) -> bool {
        self.converged || self.pass_seq.is_some()
    }

    /// What the report changes in the guest's agent record.
    pub fn apply_to(&self, rec: &mut AgentRecord) {
        if self.converged {
            rec.applied_revision = self.record.report.revision;
            rec.applied_digest = self.record.report.digest.clone();
        }
        if let Some(seq) = self.pass_seq {
            rec.last_pass_seq = rec.last_pass_seq.max(seq);
        }
        rec.last_seen_unix = self.record.received_unix;
    }
}

/// A guest service certificate the coordinator had signed, for `phoenix certs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCertRecord {
    /// The `cert` resource's name.
    pub name: String,
    pub common_name: String,
    pub sans: Vec<String>,
    pub serial: String,
    pub not_after_unix: i64,
    pub issued_unix: i64,
    /// "ok", or why the last signing request failed.
    pub result: String,
    /// Set when the guest was revoked: how this certificate was revoked.
    #[serde(default)]
    pub revoked: Option<String>,
}

/// Whether `tok` may enroll `claimed` now. A used token stays usable while the identity
/// it produced is the guest's current one and has never been used (the agent refused
/// the answer or never received it).
fn token_usable(
    tok: &TokenRecord,
    claimed: GuestId,
    now_unix: i64,
    current: Option<&AgentRecord>,
) -> Result<(), StoreError> {
    if tok.guest != claimed {
        return Err(StoreError::TokenGuest {
            token_guest: tok.guest,
            claimed,
        });
    }
    if let Some(used) = tok.used_unix {
        let unconfirmed = match (&tok.issued_serial, current) {
            (Some(s), Some(rec)) => {
                *s == rec.serial && !rec.confirmed && rec.revoked_unix.is_none()
            }
            _ => false,
        };
        if !unconfirmed {
            return Err(StoreError::TokenUsed { used_at_unix: used });
        }
    }
    if now_unix >= tok.expires_unix {
        return Err(StoreError::TokenExpired {
            expired_at_unix: tok.expires_unix,
        });
    }
    Ok(())
}

/// The decision of `Store::enroll`, shared by every implementation: the token must be
/// usable and the guest's serial still `expected_serial` (None: not enrolled); returns
/// the token marked used for the identity with serial `new_serial`.
fn spend_token(
    mut tok: TokenRecord,
    claimed: GuestId,
    now_unix: i64,
    expected_serial: Option<&str>,
    current: Option<&AgentRecord>,
    new_serial: &str,
) -> Result<TokenRecord, StoreError> {
    token_usable(&tok, claimed, now_unix, current)?;
    let found = current.map(|r| r.serial.as_str());
    if found != expected_serial {
        return Err(StoreError::Changed {
            guest: claimed,
            expected: expected_serial.unwrap_or("none").to_string(),
            found: found.unwrap_or("none").to_string(),
        });
    }
    tok.used_unix = Some(now_unix);
    tok.issued_serial = Some(new_serial.to_string());
    Ok(tok)
}

/// What `Store::revoke_agent` does to the record (an earlier revocation time stays).
fn mark_revoked(rec: &mut AgentRecord, now_unix: i64) {
    rec.revoked_unix.get_or_insert(now_unix);
    rec.previous_serial = None;
}

/// The checks of `Store::update_agent`, shared by every implementation.
fn check_current(
    guest: GuestId,
    rec: &AgentRecord,
    expected_serial: Option<&str>,
) -> Result<(), StoreError> {
    if let Some(at) = rec.revoked_unix {
        return Err(StoreError::Revoked { guest, at });
    }
    match expected_serial {
        Some(s) if s != rec.serial => Err(StoreError::Changed {
            guest,
            expected: s.to_string(),
            found: rec.serial.clone(),
        }),
        _ => Ok(()),
    }
}

pub trait Store: EventLog + ForgetGuest + Send + Sync + 'static {
    fn put_token(&self, token_hash: &str, rec: &TokenRecord) -> Result<(), StoreError>;
    /// Checks a join token without using it, so the CA is not asked for a bad token.
    fn check_token(
        &self,
        token_hash: &str,
        guest: GuestId,
        now_unix: i64,
    ) -> Result<TokenRecord, StoreError>;
    /// Completes an enrollment in one transaction: re-checks the token, checks that the
    /// guest's serial is still `expected_serial` (None: not enrolled), marks the token
    /// used for `rec.serial` and stores `rec`.
    fn enroll(
        &self,
        token_hash: &str,
        guest: GuestId,
        now_unix: i64,
        expected_serial: Option<&str>,
        rec: &AgentRecord,
    ) -> Result<(), StoreError>;

    fn agent(&self, guest: GuestId) -> Result<Option<AgentRecord>, StoreError>;
    /// Read-modify-write of an enrolled guest's record in one write transaction. Fails,
    /// writing nothing, when the guest was revoked or, with `expected_serial`, when its
    /// serial is no longer that one (a revoke or renewal that landed while the caller
    /// waited for the CA is never undone). `durable: false` is for soft state (last
    /// seen, facts) that may be lost on a crash without harm.
    fn update_agent(
        &self,
        guest: GuestId,
        expected_serial: Option<&str>,
        durable: bool,
        f: &mut dyn FnMut(&mut AgentRecord),
    ) -> Result<AgentRecord, StoreError>;
    /// Marks the guest revoked (whatever happens concurrently) and returns the record.
    fn revoke_agent(&self, guest: GuestId, now_unix: i64) -> Result<AgentRecord, StoreError>;
    fn agents(&self) -> Result<Vec<(GuestId, AgentRecord)>, StoreError>;

    fn desired(&self, guest: GuestId) -> Result<Option<DesiredRecord>, StoreError>;
    fn all_desired(&self) -> Result<Vec<(GuestId, DesiredRecord)>, StoreError>;
    /// The desired states of `guests`, in that order. etcd reads them in a few round
    /// trips instead of one per guest (each is a quorum read).
    fn desired_many(&self, guests: &[GuestId]) -> Result<Vec<Option<DesiredRecord>>, StoreError> {
        guests.iter().map(|g| self.desired(*g)).collect()
    }
    /// Stores a batch of new desired states and returns the revision given to them:
    /// one global, monotonically increasing counter, so "newer" is unambiguous.
    fn put_desired(&self, states: &[(GuestId, String, Vec<u8>)]) -> Result<u64, StoreError>;

    /// What the configs declare about the guest (JSON of `phoenix_proto::model::Declared`).
    fn declared(&self, guest: GuestId) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_declared(&self, guest: GuestId, json: &[u8]) -> Result<(), StoreError>;
    /// Stores the declared facts of many guests; a backend that can commits them together
    /// (one apply of a whole fleet, not one durable commit per guest).
    fn put_declared_many(&self, facts: &[(GuestId, Vec<u8>)]) -> Result<(), StoreError> {
        for (g, json) in facts {
            self.put_declared(*g, json)?;
        }
        Ok(())
    }

    fn put_service_cert(&self, guest: GuestId, rec: &ServiceCertRecord) -> Result<(), StoreError>;
    fn service_certs(&self) -> Result<Vec<(GuestId, ServiceCertRecord)>, StoreError>;

    fn report(&self, guest: GuestId) -> Result<Option<ReportRecord>, StoreError>;
    /// Stores the guest's last report under the next position of the report order (its
    /// `seq` is ignored) and returns that position. Positions increase in commit order.
    fn put_report(&self, guest: GuestId, rec: &ReportRecord) -> Result<u64, StoreError>;
    /// Stores many guests' reports, committed together where the backend can (like
    /// `put_report`, soft state), one result per report in order. A converged report also
    /// records the applied revision in its agent record; a guest that is not enrolled or
    /// was revoked gets that error, and nothing of its report is stored.
    fn put_reports(&self, batch: &[ReportWrite]) -> Vec<Result<u64, StoreError>> {
        batch
            .iter()
            .map(|w| {
                if w.touches_agent() {
                    self.update_agent(w.guest, None, false, &mut |rec| w.apply_to(rec))?;
                }
                self.put_report(w.guest, &w.record)
            })
            .collect()
    }
    /// Appends `events` to the log (as `append_events`) and stores `reports` (as
    /// `put_reports`), report `i` taking the index of `events[event_of[i]]` as its
    /// `record.event`. Where the backend can, in one durable commit; otherwise the events
    /// first, so a report is never stored without its event. Err: the events were not
    /// appended and no report was stored; else their indexes and one result per report.
    fn record_reports(
        &self,
        events: &[Event],
        reports: &mut [ReportWrite],
        event_of: &[usize],
    ) -> Result<RecordedReports, StoreError> {
        let indexes = self.append_events(events)?;
        number_reports(reports, event_of, &indexes);
        let stored = self.put_reports(reports);
        Ok((indexes, stored))
    }
    /// The last report of every guest whose last report was stored after position `after`,
    /// in store order. From one snapshot: everything stored up to the highest position
    /// returned is in it or superseded by it.
    fn reports_since(&self, after: u64) -> Result<Vec<(GuestId, ReportRecord)>, StoreError>;

    /// Makes this replica the leader of work that must run once in a cluster (pruning,
    /// anything scheduled) if no other replica leads; `None` while another one does.
    /// Call it again periodically: a replica leads until its lease is lost or it
    /// resigns. A single-node store always leads.
    fn try_lead(&self, replica: &str) -> Result<Option<LeaderTerm>, StoreError>;
    /// Gives leadership up at once so another replica takes over without waiting for
    /// the lease to expire.
    fn resign(&self, term: LeaderTerm) -> Result<(), StoreError>;
    /// Leader-only: deletes join tokens that expired before `expired_before_unix`, so
    /// tokens do not accumulate. Refused with `NotLeader` once `term` is over.
    fn prune_tokens(&self, term: LeaderTerm, expired_before_unix: i64)
    -> Result<usize, StoreError>;

    /// Records a replica's address (agents dial it), so join tokens minted by any
    /// replica list every one. A single-node store has no other replica to tell.
    fn register_replica(&self, _replica: &str, _addr: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// Every registered replica's address, in name order.
    fn replica_addrs(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    /// Hands dry runs (revision 0) to the replicas, so the one holding each guest's
    /// session pushes it (docs/design/0010); they stay there at least as long as the
    /// asker `wait`s for their reports. `false`: a single coordinator, which pushes them
    /// to its own sessions.
    fn forward_plans(
        &self,
        _plans: &[(GuestId, DesiredRecord)],
        _wait: std::time::Duration,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Asks the replica holding the session of `guest` (not this one, `from`) to have its
    /// agent run a pass now. `false`: a single coordinator, where every session is local.
    fn forward_pass(&self, _guest: GuestId, _from: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Leader-only: claims one run of the scheduled job `job` if no leader ran it within
    /// `every` before `now_unix_ms`, and records the run (with `replica`) in the same
    /// transaction, so a new leader does not repeat what the old one just did. `false`:
    /// not due yet. Refused with `NotLeader` once `term` is over. A single-node store
    /// keeps no record: its one process's own timer is the schedule.
    fn claim_job(
        &self,
        _term: LeaderTerm,
        _job: &str,
        _every: std::time::Duration,
        _now_unix_ms: i64,
        _replica: &str,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }
}

/// The record of a scheduled job (`Store::claim_job`): when it last ran and where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub runs: u64,
    /// The last runs, newest last, at most `JOB_HISTORY` (for operators and tests).
    pub history: Vec<JobRun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRun {
    pub at_unix_ms: i64,
    pub replica: String,
    /// The leader term (fence) that ran it.
    pub fence: i64,
}

pub const JOB_HISTORY: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_fields_are_base64_and_old_arrays_still_read() {
        let rec = DesiredRecord {
            revision: 3,
            digest: "d".into(),
            spec_json: b"{\"a\":1}".to_vec(),
        };
        let json = serde_json::to_string(&rec).expect("encode");
        assert_eq!(
            json,
            r#"{"revision":3,"digest":"d","spec_json":"eyJhIjoxfQ=="}"#
        );
        let old = r#"{"revision":3,"digest":"d","spec_json":[123,34,97,34,58,49,125]}"#;
        let back: DesiredRecord = serde_json::from_str(old).expect("decode old");
        assert_eq!(back, rec);
        assert_eq!(
            serde_json::from_str::<DesiredRecord>(&json).expect("decode"),
            rec
        );
    }
}
