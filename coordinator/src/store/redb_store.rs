use super::events::{Event, EventBounds, EventLog, Retention, prune_count};
use super::forget::{ForgetGuest, Forgotten};
use super::{
    AgentRecord, DesiredRecord, LeaderTerm, RecordedReports, ReportRecord, ReportWrite,
    ServiceCertRecord, Store, StoreError, TokenRecord, check_current, mark_revoked, spend_token,
    token_usable,
};
use phoenix_proto::model::GuestId;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

/// Memory redb keeps for pages it read or wrote (its default is 1 GiB). Every apply to
/// a large fleet appends one event and rewrites one report per guest, and the cache kept
/// the written pages: the coordinator grew with each apply, though old events are rarely
/// read.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const AGENTS: TableDefinition<u32, &[u8]> = TableDefinition::new("agents");
const DESIRED: TableDefinition<u32, &[u8]> = TableDefinition::new("desired");
const REPORTS: TableDefinition<u32, &[u8]> = TableDefinition::new("reports");
/// Report position → guest, one entry per guest (its last report), for `reports_since`.
const REPORT_ORDER: TableDefinition<u64, u32> = TableDefinition::new("report_order");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DECLARED: TableDefinition<u32, &[u8]> = TableDefinition::new("declared");
/// Key: "<guest>/<cert name>".
const SERVICE_CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("service_certs");
/// Event index → JSON of `Event`.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

pub struct RedbStore {
    db: Database,
}

fn io(action: &'static str) -> impl Fn(redb::Error) -> StoreError {
    move |e| StoreError::Io {
        action,
        reason: e.to_string(),
    }
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Io {
        action: "encode record",
        reason: e.to_string(),
    })
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Io {
        action: "decode record",
        reason: e.to_string(),
    })
}

fn guest(k: u32) -> Result<GuestId, StoreError> {
    GuestId::try_from(k).map_err(|e| StoreError::Io {
        action: "decode key",
        reason: e.to_string(),
    })
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        // Create the tables up front so readers never see "table does not exist".
        let tx = db
            .begin_write()
            .map_err(|e| io("create tables")(e.into()))?;
        {
            let map = |e: redb::TableError| io("create tables")(e.into());
            tx.open_table(TOKENS).map_err(map)?;
            tx.open_table(AGENTS).map_err(map)?;
            tx.open_table(DESIRED).map_err(map)?;
            tx.open_table(REPORTS).map_err(map)?;
            tx.open_table(REPORT_ORDER).map_err(map)?;
            tx.open_table(META).map_err(map)?;
            tx.open_table(DECLARED).map_err(map)?;
            tx.open_table(SERVICE_CERTS).map_err(map)?;
            tx.open_table(EVENTS).map_err(map)?;
        }
        tx.commit().map_err(|e| io("create tables")(e.into()))?;
        let store = RedbStore { db };
        store.order_unordered_reports()?;
        Ok(store)
    }

    /// Gives reports stored before reports had positions one each, so `reports_since(0)`
    /// returns every stored report.
    fn order_unordered_reports(&self) -> Result<(), StoreError> {
        const A: &str = "order stored reports";
        let unordered: Vec<(GuestId, ReportRecord)> = self
            .all_u32::<ReportRecord>(REPORTS, A)?
            .into_iter()
            .filter(|(_, r)| r.seq == 0)
            .collect();
        for (g, rec) in unordered {
            self.put_report(g, &rec)?;
        }
        Ok(())
    }

    fn write<R>(
        &self,
        action: &'static str,
        durable: bool,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| io(action)(e.into()))?;
        if !durable {
            // Only fails when a persistent savepoint exists; we never make one.
            tx.set_durability(Durability::None)
                .map_err(|e| StoreError::Io {
                    action,
                    reason: e.to_string(),
                })?;
        }
        let out = f(&tx)?;
        tx.commit().map_err(|e| io(action)(e.into()))?;
        Ok(out)
    }

    fn get_u32<T: DeserializeOwned>(
        &self,
        table: TableDefinition<u32, &[u8]>,
        action: &'static str,
        key: u32,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| io(action)(e.into()))?;
        let t = tx.open_table(table).map_err(|e| io(action)(e.into()))?;
        match t.get(key).map_err(|e| io(action)(e.into()))? {
            Some(v) => Ok(Some(dec(v.value())?)),
            None => Ok(None),
        }
    }

    fn all_u32<T: DeserializeOwned>(
        &self,
        table: TableDefinition<u32, &[u8]>,
        action: &'static str,
    ) -> Result<Vec<(GuestId, T)>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| io(action)(e.into()))?;
        let t = tx.open_table(table).map_err(|e| io(action)(e.into()))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| io(action)(e.into()))? {
            let (k, v) = item.map_err(|e| io(action)(e.into()))?;
            out.push((guest(k.value())?, dec(v.value())?));
        }
        Ok(out)
    }
}

impl Store for RedbStore {
    fn put_token(&self, token_hash: &str, rec: &TokenRecord) -> Result<(), StoreError> {
        let bytes = enc(rec)?;
        self.write("save join token", true, |tx| {
            let mut t = tx
                .open_table(TOKENS)
                .map_err(|e| io("save join token")(e.into()))?;
            t.insert(token_hash, bytes.as_slice())
                .map_err(|e| io("save join token")(e.into()))?;
            Ok(())
        })
    }

    fn check_token(
        &self,
        token_hash: &str,
        claimed: GuestId,
        now_unix: i64,
    ) -> Result<TokenRecord, StoreError> {
        const A: &str = "check join token";
        let tx = self.db.begin_read().map_err(|e| io(A)(e.into()))?;
        let t = tx.open_table(TOKENS).map_err(|e| io(A)(e.into()))?;
        let tok: TokenRecord = match t.get(token_hash).map_err(|e| io(A)(e.into()))? {
            Some(v) => dec(v.value())?,
            None => return Err(StoreError::TokenUnknown),
        };
        let agents = tx.open_table(AGENTS).map_err(|e| io(A)(e.into()))?;
        let current: Option<AgentRecord> =
            match agents.get(claimed.get()).map_err(|e| io(A)(e.into()))? {
                Some(v) => Some(dec(v.value())?),
                None => None,
            };
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
        let bytes = enc(rec)?;
        self.write(A, true, |tx| {
            let mut tokens = tx.open_table(TOKENS).map_err(|e| io(A)(e.into()))?;
            let mut agents = tx.open_table(AGENTS).map_err(|e| io(A)(e.into()))?;
            let tok: TokenRecord = match tokens.get(token_hash).map_err(|e| io(A)(e.into()))? {
                Some(v) => dec(v.value())?,
                None => return Err(StoreError::TokenUnknown),
            };
            let current: Option<AgentRecord> =
                match agents.get(claimed.get()).map_err(|e| io(A)(e.into()))? {
                    Some(v) => Some(dec(v.value())?),
                    None => None,
                };
            let tok = spend_token(
                tok,
                claimed,
                now_unix,
                expected_serial,
                current.as_ref(),
                &rec.serial,
            )?;
            let tok_bytes = enc(&tok)?;
            tokens
                .insert(token_hash, tok_bytes.as_slice())
                .map_err(|e| io(A)(e.into()))?;
            agents
                .insert(claimed.get(), bytes.as_slice())
                .map_err(|e| io(A)(e.into()))?;
            Ok(())
        })
    }

    fn update_agent(
        &self,
        g: GuestId,
        expected_serial: Option<&str>,
        durable: bool,
        f: &mut dyn FnMut(&mut AgentRecord),
    ) -> Result<AgentRecord, StoreError> {
        const A: &str = "update agent";
        self.write(A, durable, |tx| {
            let mut t = tx.open_table(AGENTS).map_err(|e| io(A)(e.into()))?;
            let mut rec: AgentRecord = match t.get(g.get()).map_err(|e| io(A)(e.into()))? {
                Some(v) => dec(v.value())?,
                None => return Err(StoreError::NotEnrolled { guest: g }),
            };
            check_current(g, &rec, expected_serial)?;
            f(&mut rec);
            let bytes = enc(&rec)?;
            t.insert(g.get(), bytes.as_slice())
                .map_err(|e| io(A)(e.into()))?;
            Ok(rec)
        })
    }

    fn revoke_agent(&self, g: GuestId, now_unix: i64) -> Result<AgentRecord, StoreError> {
        const A: &str = "revoke agent";
        self.write(A, true, |tx| {
            let mut t = tx.open_table(AGENTS).map_err(|e| io(A)(e.into()))?;
            let mut rec: AgentRecord = match t.get(g.get()).map_err(|e| io(A)(e.into()))? {
                Some(v) => dec(v.value())?,
                None => return Err(StoreError::NotEnrolled { guest: g }),
            };
            mark_revoked(&mut rec, now_unix);
            let bytes = enc(&rec)?;
            t.insert(g.get(), bytes.as_slice())
                .map_err(|e| io(A)(e.into()))?;
            Ok(rec)
        })
    }

    fn agent(&self, g: GuestId) -> Result<Option<AgentRecord>, StoreError> {
        self.get_u32(AGENTS, "read agent", g.get())
    }

    fn agents(&self) -> Result<Vec<(GuestId, AgentRecord)>, StoreError> {
        self.all_u32(AGENTS, "list agents")
    }

    fn desired(&self, g: GuestId) -> Result<Option<DesiredRecord>, StoreError> {
        self.get_u32(DESIRED, "read desired state", g.get())
    }

    fn all_desired(&self) -> Result<Vec<(GuestId, DesiredRecord)>, StoreError> {
        self.all_u32(DESIRED, "list desired states")
    }

    fn put_desired(&self, states: &[(GuestId, String, Vec<u8>)]) -> Result<u64, StoreError> {
        const A: &str = "save desired states";
        self.write(A, true, |tx| {
            let mut meta = tx.open_table(META).map_err(|e| io(A)(e.into()))?;
            let revision = meta
                .get("revision")
                .map_err(|e| io(A)(e.into()))?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            meta.insert("revision", revision)
                .map_err(|e| io(A)(e.into()))?;
            let mut t = tx.open_table(DESIRED).map_err(|e| io(A)(e.into()))?;
            for (g, digest, spec_json) in states {
                let rec = DesiredRecord {
                    revision,
                    digest: digest.clone(),
                    spec_json: spec_json.clone(),
                };
                let bytes = enc(&rec)?;
                t.insert(g.get(), bytes.as_slice())
                    .map_err(|e| io(A)(e.into()))?;
            }
            Ok(revision)
        })
    }

    fn declared(&self, g: GuestId) -> Result<Option<Vec<u8>>, StoreError> {
        const A: &str = "read declared facts";
        let tx = self.db.begin_read().map_err(|e| io(A)(e.into()))?;
        let t = tx.open_table(DECLARED).map_err(|e| io(A)(e.into()))?;
        Ok(t.get(g.get())
            .map_err(|e| io(A)(e.into()))?
            .map(|v| v.value().to_vec()))
    }

    fn put_declared(&self, g: GuestId, json: &[u8]) -> Result<(), StoreError> {
        const A: &str = "save declared facts";
        self.write(A, true, |tx| {
            let mut t = tx.open_table(DECLARED).map_err(|e| io(A)(e.into()))?;
            t.insert(g.get(), json).map_err(|e| io(A)(e.into()))?;
            Ok(())
        })
    }

    fn put_declared_many(&self, facts: &[(GuestId, Vec<u8>)]) -> Result<(), StoreError> {
        const A: &str = "save declared facts";
        // One durable commit for the whole batch: an fsync per guest made the first apply
        // of a 10,000-guest fleet take minutes.
        self.write(A, true, |tx| {
            let mut t = tx.open_table(DECLARED).map_err(|e| io(A)(e.into()))?;
            for (g, json) in facts {
                t.insert(g.get(), json.as_slice())
                    .map_err(|e| io(A)(e.into()))?;
            }
            Ok(())
        })
    }

    fn put_service_cert(&self, g: GuestId, rec: &ServiceCertRecord) -> Result<(), StoreError> {
        const A: &str = "save service certificate";
        let key = format!("{g}/{}", rec.name);
        let bytes = enc(rec)?;
        self.write(A, true, |tx| {
            let mut t = tx.open_table(SERVICE_CERTS).map_err(|e| io(A)(e.into()))?;
            t.insert(key.as_str(), bytes.as_slice())
                .map_err(|e| io(A)(e.into()))?;
            Ok(())
        })
    }

    fn service_certs(&self) -> Result<Vec<(GuestId, ServiceCertRecord)>, StoreError> {
        const A: &str = "list service certificates";
        let tx = self.db.begin_read().map_err(|e| io(A)(e.into()))?;
        let t = tx.open_table(SERVICE_CERTS).map_err(|e| io(A)(e.into()))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| io(A)(e.into()))? {
            let (k, v) = item.map_err(|e| io(A)(e.into()))?;
            let g = k
                .value()
                .split_once('/')
                .and_then(|(g, _)| g.parse().ok())
                .ok_or_else(|| StoreError::Io {
                    action: A,
                    reason: format!("bad key {:?}", k.value()),
                })?;
            out.push((g, dec(v.value())?));
        }
        Ok(out)
    }

    fn report(&self, g: GuestId) -> Result<Option<ReportRecord>, StoreError> {
        self.get_u32(REPORTS, "read report", g.get())
    }

    fn put_report(&self, g: GuestId, rec: &ReportRecord) -> Result<u64, StoreError> {
        // Soft state: a crash loses the report and its position together (one transaction).
        self.write(SAVE_REPORT, false, |tx| {
            ReportTables::open(tx)?.report(g, rec)
        })
    }

    fn put_reports(&self, batch: &[ReportWrite]) -> Vec<Result<u64, StoreError>> {
        // One commit for every report that arrived meanwhile: at 10,000 guests one
        // transaction per report (two with the agent record) was where the time of an apply
        // went. A guest's own failure (revoked, not enrolled) is its result alone; a failure
        // of the store fails the batch.
        // A report the agent numbered is acknowledged once stored, and the agent then
        // forgets it: such a batch must survive a crash (one fsync for the whole batch).
        let durable = batch.iter().any(|w| w.pass_seq.is_some());
        let written = self.write(SAVE_REPORT, durable, |tx| reports_in(tx, batch));
        match written {
            Ok(out) => out,
            Err(e) => {
                let reason = e.to_string();
                batch
                    .iter()
                    .map(|_| {
                        Err(StoreError::Io {
                            action: SAVE_REPORT,
                            reason: reason.clone(),
                        })
                    })
                    .collect()
            }
        }
    }

    /// One durable commit for the events and the reports: a report is stored with its
    /// event or not at all, and a fleet reporting at once costs one flush per batch
    /// instead of two in a row.
    fn record_reports(
        &self,
        events: &[Event],
        reports: &mut [ReportWrite],
        event_of: &[usize],
    ) -> Result<RecordedReports, StoreError> {
        self.write(SAVE_REPORT, true, |tx| {
            let indexes = events_in(tx, events)?;
            super::number_reports(reports, event_of, &indexes);
            Ok((indexes, reports_in(tx, reports)?))
        })
    }

    fn reports_since(&self, after: u64) -> Result<Vec<(GuestId, ReportRecord)>, StoreError> {
        const A: &str = "read reports since";
        let tx = self.db.begin_read().map_err(|e| io(A)(e.into()))?;
        let order = tx.open_table(REPORT_ORDER).map_err(|e| io(A)(e.into()))?;
        let reports = tx.open_table(REPORTS).map_err(|e| io(A)(e.into()))?;
        let mut out = Vec::new();
        for item in order.range(after + 1..).map_err(|e| io(A)(e.into()))? {
            let (_, g) = item.map_err(|e| io(A)(e.into()))?;
            let rec = reports
                .get(g.value())
                .map_err(|e| io(A)(e.into()))?
                .ok_or_else(|| StoreError::Io {
                    action: A,
                    reason: format!("report order names guest {} without a report", g.value()),
                })?;
            out.push((guest(g.value())?, dec(rec.value())?));
        }
        Ok(out)
    }

    /// One process owns the database file (redb's lock), so it always leads.
    fn try_lead(&self, _replica: &str) -> Result<Option<LeaderTerm>, StoreError> {
        Ok(Some(LeaderTerm { fence: 0 }))
    }

    fn resign(&self, _term: LeaderTerm) -> Result<(), StoreError> {
        Ok(())
    }

    fn prune_tokens(
        &self,
        _term: LeaderTerm,
        expired_before_unix: i64,
    ) -> Result<usize, StoreError> {
        const A: &str = "prune join tokens";
        self.write(A, true, |tx| {
            let mut t = tx.open_table(TOKENS).map_err(|e| io(A)(e.into()))?;
            let mut expired = Vec::new();
            for item in t.iter().map_err(|e| io(A)(e.into()))? {
                let (k, v) = item.map_err(|e| io(A)(e.into()))?;
                let tok: TokenRecord = dec(v.value())?;
                if tok.expires_unix < expired_before_unix {
                    expired.push(k.value().to_string());
                }
            }
            for k in &expired {
                t.remove(k.as_str()).map_err(|e| io(A)(e.into()))?;
            }
            Ok(expired.len())
        })
    }
}

impl EventLog for RedbStore {
    fn append_events(&self, evs: &[Event]) -> Result<Vec<u64>, StoreError> {
        const A: &str = "append events";
        if evs.is_empty() {
            return Ok(Vec::new());
        }
        self.write(A, true, |tx| events_in(tx, evs))
    }

    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        const A: &str = "read events";
        let tx = self.db.begin_read().map_err(|e| io(A)(e.into()))?;
        let t = tx.open_table(EVENTS).map_err(|e| io(A)(e.into()))?;
        let mut out = Vec::new();
        for item in t
            .range(after.saturating_add(1)..)
            .map_err(|e| io(A)(e.into()))?
            .take(limit)
        {
            let (_, v) = item.map_err(|e| io(A)(e.into()))?;
            out.push(dec(v.value())?);
        }
        Ok(out)
    }

    fn event_bounds(&self) -> Result<EventBounds, StoreError> {
        const A: &str = "read event bounds";
        let tx = self.db.begin_read().map_err(|e| io(A)(e.into()))?;
        let t = tx.open_table(EVENTS).map_err(|e| io(A)(e.into()))?;
        let meta = tx.open_table(META).map_err(|e| io(A)(e.into()))?;
        let first = t
            .first()
            .map_err(|e| io(A)(e.into()))?
            .map_or(0, |(k, _)| k.value());
        let last = meta
            .get("event_index")
            .map_err(|e| io(A)(e.into()))?
            .map_or(0, |v| v.value());
        let count = t.len().map_err(|e| io(A)(e.into()))?;
        Ok(EventBounds { first, last, count })
    }

    /// One process owns the file, so `term` always holds.
    fn prune_events(
        &self,
        _term: LeaderTerm,
        retention: &Retention,
        now_unix_ms: i64,
    ) -> Result<u64, StoreError> {
        const A: &str = "prune events";
        self.write(A, true, |tx| {
            let mut t = tx.open_table(EVENTS).map_err(|e| io(A)(e.into()))?;
            let total = t.len().map_err(|e| io(A)(e.into()))?;
            let drop = {
                let mut times = Vec::new();
                for item in t.iter().map_err(|e| io(A)(e.into()))? {
                    let (_, v) = item.map_err(|e| io(A)(e.into()))?;
                    let ev: Event = dec(v.value())?;
                    if ev.time_unix_ms >= retention.cutoff_unix_ms(now_unix_ms) {
                        break;
                    }
                    times.push(ev.time_unix_ms);
                }
                prune_count(times.into_iter(), total, retention, now_unix_ms)
            };
            let mut dropped = 0;
            while dropped < drop {
                if t.pop_first().map_err(|e| io(A)(e.into()))?.is_none() {
                    break;
                }
                dropped += 1;
            }
            Ok(dropped)
        })
    }
}

impl ForgetGuest for RedbStore {
    fn forget_guest(&self, g: GuestId) -> Result<Forgotten, StoreError> {
        const A: &str = "forget guest";
        self.write(A, true, |tx| {
            let mut out = Forgotten::default();
            let mut agents = tx.open_table(AGENTS).map_err(|e| io(A)(e.into()))?;
            if let Some(v) = agents.remove(g.get()).map_err(|e| io(A)(e.into()))? {
                out.serial = Some(dec::<AgentRecord>(v.value())?.serial);
            }
            let mut desired = tx.open_table(DESIRED).map_err(|e| io(A)(e.into()))?;
            if let Some(v) = desired.remove(g.get()).map_err(|e| io(A)(e.into()))? {
                out.desired_revision = Some(dec::<DesiredRecord>(v.value())?.revision);
            }
            let mut declared = tx.open_table(DECLARED).map_err(|e| io(A)(e.into()))?;
            out.had_declared = declared
                .remove(g.get())
                .map_err(|e| io(A)(e.into()))?
                .is_some();
            let mut reports = tx.open_table(REPORTS).map_err(|e| io(A)(e.into()))?;
            let seq = match reports.remove(g.get()).map_err(|e| io(A)(e.into()))? {
                Some(v) => Some(dec::<ReportRecord>(v.value())?.seq),
                None => None,
            };
            if let Some(seq) = seq {
                out.had_report = true;
                let mut order = tx.open_table(REPORT_ORDER).map_err(|e| io(A)(e.into()))?;
                order.remove(seq).map_err(|e| io(A)(e.into()))?;
            }
            let mut certs = tx.open_table(SERVICE_CERTS).map_err(|e| io(A)(e.into()))?;
            let start = format!("{g}/");
            // '/' + 1: every key of this guest sorts between the two.
            let end = format!("{g}0");
            let keys: Vec<String> = certs
                .range(start.as_str()..end.as_str())
                .map_err(|e| io(A)(e.into()))?
                .map(|item| item.map(|(k, _)| k.value().to_string()))
                .collect::<Result<_, _>>()
                .map_err(|e| io(A)(e.into()))?;
            for k in &keys {
                certs.remove(k.as_str()).map_err(|e| io(A)(e.into()))?;
            }
            out.service_certs = keys.len();
            let mut tokens = tx.open_table(TOKENS).map_err(|e| io(A)(e.into()))?;
            let mut theirs = Vec::new();
            for item in tokens.iter().map_err(|e| io(A)(e.into()))? {
                let (k, v) = item.map_err(|e| io(A)(e.into()))?;
                if dec::<TokenRecord>(v.value())?.guest == g {
                    theirs.push(k.value().to_string());
                }
            }
            for k in &theirs {
                tokens.remove(k.as_str()).map_err(|e| io(A)(e.into()))?;
            }
            out.tokens = theirs.len();
            Ok(out)
        })
    }
}

const SAVE_REPORT: &str = "save report";

/// Appends `evs` under the next event indexes, in `tx`; returns the indexes.
fn events_in(tx: &redb::WriteTransaction, evs: &[Event]) -> Result<Vec<u64>, StoreError> {
    const A: &str = "append events";
    let mut meta = tx.open_table(META).map_err(|e| io(A)(e.into()))?;
    let last = meta
        .get("event_index")
        .map_err(|e| io(A)(e.into()))?
        .map(|v| v.value())
        .unwrap_or(0);
    let mut t = tx.open_table(EVENTS).map_err(|e| io(A)(e.into()))?;
    let mut indexes = Vec::with_capacity(evs.len());
    for (ev, index) in evs.iter().zip(last + 1..) {
        let bytes = ev.encode_at(index).map_err(|e| StoreError::Io {
            action: "encode record",
            reason: e.to_string(),
        })?;
        t.insert(index, bytes.as_slice())
            .map_err(|e| io(A)(e.into()))?;
        indexes.push(index);
    }
    meta.insert("event_index", last + evs.len() as u64)
        .map_err(|e| io(A)(e.into()))?;
    Ok(indexes)
}

/// Stores `batch` in `tx`: the outer error is the store's, the inner ones each guest's.
fn reports_in(
    tx: &redb::WriteTransaction,
    batch: &[ReportWrite],
) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
    let mut tables = ReportTables::open(tx)?;
    let mut out = Vec::with_capacity(batch.len());
    for w in batch {
        let applied = if w.touches_agent() {
            tables.applied(w)?
        } else {
            Ok(())
        };
        out.push(applied.and_then(|()| tables.report(w.guest, &w.record)));
    }
    Ok(out)
}

/// The tables a report's write touches, opened once per batch: opening them per report
/// was a fixed cost paid 10,000 times per fleet apply.
struct ReportTables<'tx> {
    meta: redb::Table<'tx, &'static str, u64>,
    reports: redb::Table<'tx, u32, &'static [u8]>,
    order: redb::Table<'tx, u64, u32>,
    agents: redb::Table<'tx, u32, &'static [u8]>,
}

/// A report record with its position, by reference: stored records are written without
/// copying the report.
#[derive(Serialize)]
struct ReportAt<'a> {
    seq: u64,
    event: u64,
    received_unix: i64,
    report: &'a phoenix_proto::model::ApplyReport,
}

/// Only the position of a stored report record (the rest is skipped, not built).
#[derive(serde::Deserialize)]
struct StoredSeq {
    #[serde(default)]
    seq: u64,
}

impl<'tx> ReportTables<'tx> {
    fn open(tx: &'tx redb::WriteTransaction) -> Result<Self, StoreError> {
        const A: &str = SAVE_REPORT;
        Ok(ReportTables {
            meta: tx.open_table(META).map_err(|e| io(A)(e.into()))?,
            reports: tx.open_table(REPORTS).map_err(|e| io(A)(e.into()))?,
            order: tx.open_table(REPORT_ORDER).map_err(|e| io(A)(e.into()))?,
            agents: tx.open_table(AGENTS).map_err(|e| io(A)(e.into()))?,
        })
    }

    /// Stores `rec` as the last report of `g` under the next report position. A failure
    /// before the report is written leaves at most an unused position behind.
    fn report(&mut self, g: GuestId, rec: &ReportRecord) -> Result<u64, StoreError> {
        const A: &str = SAVE_REPORT;
        let seq = self
            .meta
            .get("report_seq")
            .map_err(|e| io(A)(e.into()))?
            .map(|v| v.value())
            .unwrap_or(0)
            + 1;
        self.meta
            .insert("report_seq", seq)
            .map_err(|e| io(A)(e.into()))?;
        let previous = match self.reports.get(g.get()).map_err(|e| io(A)(e.into()))? {
            Some(v) => Some(dec::<StoredSeq>(v.value())?.seq),
            None => None,
        };
        if let Some(old) = previous {
            self.order.remove(old).map_err(|e| io(A)(e.into()))?;
        }
        let bytes = enc(&ReportAt {
            seq,
            event: rec.event,
            received_unix: rec.received_unix,
            report: &rec.report,
        })?;
        self.reports
            .insert(g.get(), bytes.as_slice())
            .map_err(|e| io(A)(e.into()))?;
        self.order
            .insert(seq, g.get())
            .map_err(|e| io(A)(e.into()))?;
        Ok(seq)
    }

    /// Records a converged report's revision in the agent record of its guest. The outer
    /// error is the store's, the inner one the guest's (not enrolled, revoked).
    fn applied(&mut self, w: &ReportWrite) -> Result<Result<(), StoreError>, StoreError> {
        const A: &str = "update agent";
        let mut rec: AgentRecord = match self
            .agents
            .get(w.guest.get())
            .map_err(|e| io(A)(e.into()))?
        {
            Some(v) => match dec(v.value()) {
                Ok(rec) => rec,
                Err(e) => return Ok(Err(e)),
            },
            None => return Ok(Err(StoreError::NotEnrolled { guest: w.guest })),
        };
        if let Err(e) = check_current(w.guest, &rec, None) {
            return Ok(Err(e));
        }
        w.apply_to(&mut rec);
        let bytes = enc(&rec)?;
        self.agents
            .insert(w.guest.get(), bytes.as_slice())
            .map_err(|e| io(A)(e.into()))?;
        Ok(Ok(()))
    }
}
