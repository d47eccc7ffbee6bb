//! The event log and `forget_guest` on etcd. Layout under the prefix: `events/<index>`
//! (20 digits, so key order is index order) and `meta/event_index`, the last index given
//! (decimal text). An append compares the counter's mod_revision in the transaction that
//! writes the event, so two replicas never give out one index; the counter survives
//! pruning, so indexes are never reused.

use super::{
    EtcdStore, MAX_ATTEMPTS, MAX_TXN_BYTES, MAX_TXN_KEYS, MAX_VALUE_BYTES, check_size, prefix_end,
};
use crate::store::events::{Event, EventBounds, EventLog, Retention};
use crate::store::forget::{ForgetGuest, Forgotten};
use crate::store::{AgentRecord, DesiredRecord, LeaderTerm, StoreError, TokenRecord};
use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, GetResponse, Txn, TxnOp};
use phoenix_proto::model::GuestId;

/// Events read per request while pruning.
const PRUNE_PAGE: i64 = 256;

fn decode_event(key: &[u8], value: &[u8]) -> Result<Event, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Io {
        action: "decode event",
        reason: format!("{}: {e}", String::from_utf8_lossy(key)),
    })
}

fn parse_counter(action: &'static str, v: Option<&Vec<u8>>) -> Result<u64, StoreError> {
    match v {
        None => Ok(0),
        Some(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Io {
                action,
                reason: format!(
                    "meta/event_index holds {:?}, not a number",
                    String::from_utf8_lossy(b)
                ),
            }),
    }
}

impl EtcdStore {
    /// As `records` spells a guest's key (zero-padded id).
    fn forget_key(&self, dir: &str, g: GuestId) -> String {
        self.key(&format!("{dir}/{:010}", g.get()))
    }

    fn event_key(&self, index: u64) -> String {
        self.key(&format!("events/{index:020}"))
    }

    fn get_range(
        &self,
        action: &'static str,
        from: String,
        opts: GetOptions,
    ) -> Result<GetResponse, StoreError> {
        let kv = self.kv.clone();
        self.call(action, move || {
            let (mut kv, from, opts) = (kv.clone(), from.clone(), opts.clone());
            async move { kv.get(from, Some(opts)).await }
        })
    }
}

impl EtcdStore {
    /// Appends as many of `evs` as fit one transaction; returns how many and their indexes.
    fn append_batch(
        &self,
        action: &'static str,
        evs: &[Event],
    ) -> Result<(usize, Vec<u64>), StoreError> {
        let counter = self.key("meta/event_index");
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.read_many(action, std::slice::from_ref(&counter))?;
            let last = parse_counter(action, snap.values[0].as_ref())?;
            let mut puts = Vec::new();
            let mut indexes = Vec::new();
            let mut bytes = 0;
            for (ev, index) in evs.iter().zip(last + 1..) {
                let key = self.event_key(index);
                let value = ev.encode_at(index).map_err(|e| StoreError::Io {
                    action,
                    reason: e.to_string(),
                })?;
                check_size(action, &key, value.len(), MAX_VALUE_BYTES)?;
                if !puts.is_empty()
                    && (puts.len() + 1 >= MAX_TXN_KEYS || bytes + value.len() > MAX_TXN_BYTES)
                {
                    break;
                }
                bytes += value.len();
                puts.push(TxnOp::put(key.as_str(), value, None));
                indexes.push(index);
            }
            let n = indexes.len();
            puts.push(TxnOp::put(
                counter.as_str(),
                (last + n as u64).to_string(),
                None,
            ));
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    counter.as_str(),
                    CompareOp::Equal,
                    snap.mod_revs[0],
                )])
                .and_then(puts);
            if self.txn(action, txn)?.succeeded() {
                return Ok((n, indexes));
            }
        }
        Err(StoreError::Io {
            action,
            reason: format!(
                "the event counter kept changing under concurrent writers; gave up after {MAX_ATTEMPTS} attempts"
            ),
        })
    }
}

impl EventLog for EtcdStore {
    /// In transactions of at most `MAX_TXN_KEYS - 1` events (plus the counter) and 1 MiB;
    /// a batch that needs several is not all-or-nothing across them.
    fn append_events(&self, evs: &[Event]) -> Result<Vec<u64>, StoreError> {
        const A: &str = "append events";
        let mut indexes = Vec::with_capacity(evs.len());
        let mut rest = evs;
        while !rest.is_empty() {
            let (n, mut got) = self.append_batch(A, rest)?;
            indexes.append(&mut got);
            rest = &rest[n..];
        }
        Ok(indexes)
    }

    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        const A: &str = "read events";
        let end = prefix_end(&self.key("events/"));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let opts = GetOptions::new().with_range(end).with_limit(limit);
        let resp = self.get_range(A, self.event_key(after.saturating_add(1)), opts)?;
        resp.kvs()
            .iter()
            .map(|kv| decode_event(kv.key(), kv.value()))
            .collect()
    }

    fn event_bounds(&self) -> Result<EventBounds, StoreError> {
        const A: &str = "read event bounds";
        let start = self.key("events/");
        let end = prefix_end(&start);
        let first = self.get_range(
            A,
            start.clone(),
            GetOptions::new()
                .with_range(end.clone())
                .with_limit(1)
                .with_keys_only(),
        )?;
        let count = self.get_range(
            A,
            start.clone(),
            GetOptions::new().with_range(end).with_count_only(),
        )?;
        let snap = self.read_many(A, &[self.key("meta/event_index")])?;
        let first = match first.kvs().first() {
            Some(kv) => String::from_utf8_lossy(&kv.key()[start.len()..])
                .parse()
                .unwrap_or(0),
            None => 0,
        };
        Ok(EventBounds {
            first,
            last: parse_counter(A, snap.values[0].as_ref())?,
            count: u64::try_from(count.count()).unwrap_or(0),
        })
    }

    fn prune_events(
        &self,
        term: LeaderTerm,
        retention: &Retention,
        now_unix_ms: i64,
    ) -> Result<u64, StoreError> {
        const A: &str = "prune events";
        let start = self.key("events/");
        let end = prefix_end(&start);
        let total = u64::try_from(
            self.get_range(
                A,
                start.clone(),
                GetOptions::new().with_range(end.clone()).with_count_only(),
            )?
            .count(),
        )
        .unwrap_or(0);
        let by_count = total.saturating_sub(retention.max_count);
        let cutoff = retention.cutoff_unix_ms(now_unix_ms);
        // Walk the oldest events until one is kept; what came before goes.
        let mut dropped = 0u64;
        let mut last_dropped: Option<u64> = None;
        let mut from = start.clone();
        'walk: loop {
            let page = self.get_range(
                A,
                from.clone(),
                GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(PRUNE_PAGE),
            )?;
            for kv in page.kvs() {
                let ev = decode_event(kv.key(), kv.value())?;
                if dropped >= by_count && ev.time_unix_ms >= cutoff {
                    break 'walk;
                }
                dropped += 1;
                last_dropped = Some(ev.index);
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    from = format!("{}\0", String::from_utf8_lossy(last.key()));
                }
                _ => break,
            }
        }
        let Some(last) = last_dropped else {
            return Ok(0);
        };
        // One range delete, fenced like every leader-only write.
        let fence = Compare::create_revision(self.key("leader"), CompareOp::Equal, term.fence);
        let del = TxnOp::delete(
            start.as_str(),
            Some(DeleteOptions::new().with_range(self.event_key(last.saturating_add(1)))),
        );
        if self
            .txn(A, Txn::new().when([fence]).and_then([del]))?
            .succeeded()
        {
            Ok(dropped)
        } else {
            Err(StoreError::NotLeader { action: A })
        }
    }
}

impl ForgetGuest for EtcdStore {
    /// The guest's records go in one transaction; its join tokens (found by listing)
    /// in further ones, after it.
    fn forget_guest(&self, g: GuestId) -> Result<Forgotten, StoreError> {
        const A: &str = "forget guest";
        let keys = [
            self.forget_key("agents", g),
            self.forget_key("desired", g),
            self.forget_key("declared", g),
            self.forget_key("reports", g),
        ];
        let snap = self.read_many(A, &keys)?;
        let certs_dir = self.key(&format!("service_certs/{:010}/", g.get()));
        let certs = self
            .get_range(
                A,
                certs_dir.clone(),
                GetOptions::new()
                    .with_range(prefix_end(&certs_dir))
                    .with_count_only(),
            )?
            .count();
        let dec_err = |key: &str, e: serde_json::Error| StoreError::Io {
            action: A,
            reason: format!("{key}: {e}"),
        };
        let mut out = Forgotten {
            had_declared: snap.values[2].is_some(),
            had_report: snap.values[3].is_some(),
            service_certs: usize::try_from(certs).unwrap_or(0),
            ..Forgotten::default()
        };
        if let Some(v) = &snap.values[0] {
            let rec: AgentRecord = serde_json::from_slice(v).map_err(|e| dec_err(&keys[0], e))?;
            out.serial = Some(rec.serial);
        }
        if let Some(v) = &snap.values[1] {
            let rec: DesiredRecord = serde_json::from_slice(v).map_err(|e| dec_err(&keys[1], e))?;
            out.desired_revision = Some(rec.revision);
        }
        let mut ops: Vec<TxnOp> = keys
            .iter()
            .map(|k| TxnOp::delete(k.as_str(), None))
            .collect();
        ops.push(TxnOp::delete(
            certs_dir.as_str(),
            Some(DeleteOptions::new().with_range(prefix_end(&certs_dir))),
        ));
        self.txn(A, Txn::new().and_then(ops))?;
        let mut theirs = Vec::new();
        for (hash, v) in self.list(A, "tokens")? {
            let tok: TokenRecord = serde_json::from_slice(&v).map_err(|e| dec_err(&hash, e))?;
            if tok.guest == g {
                theirs.push(self.key(&format!("tokens/{hash}")));
            }
        }
        for chunk in theirs.chunks(MAX_TXN_KEYS) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::delete(k.as_str(), None))
                .collect();
            self.txn(A, Txn::new().and_then(ops))?;
        }
        out.tokens = theirs.len();
        Ok(out)
    }
}
