//! What the coordinator records in its event log (`phoenix events`, `phoenix history`):
//! enrollments and refusals, sessions, desired states pushed, every apply report (with
//! the time the guest did the work, also for passes done while it was disconnected),
//! certificates, revocations, the CA's health, guests forgotten.
//!
//! Recording never fails the action it records: an event the store refuses is logged and
//! counted (`phoenix_events_dropped_total`), and the action goes on. The log itself lives
//! in the store (`store::EventLog`) with its retention ([`prune`]); [`stream`] serves it
//! to the CLI, resumable from an index.

pub mod kind;
pub mod prune;
pub mod report;
pub mod stream;

pub use kind::Kind;

use crate::metrics::{EventDrop, Metrics};
use crate::store::{Event, ReportWrite, Store, StoreError};
use phoenix_proto::model::{ApplyReport, GuestId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};

/// A refusal that repeats (an agent retrying with a revoked identity) is recorded at most
/// once per this long per guest and type, so it cannot flood the log.
const REPEAT_EVERY: Duration = Duration::from_secs(600);
/// Sources of repeated refusals tracked at once.
const MAX_SOURCES: usize = 4096;

pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Events waiting for the writer. At 10,000 agents a rotation with an apply brings about
/// 20,000 events within seconds (a renewal and a report per agent; 21,073 were dropped
/// with a queue of 8,192). Beyond this bound the agents' paths wait for room
/// ([`Recorder::record_paced`]) and the others drop (counted).
const QUEUE: usize = 16_384;
/// Events written in one store transaction at most: one durable commit for a fleet's
/// burst, where 256 per commit made 10,000 reports wait for 40 fsyncs in a row.
const BATCH: usize = 4096;
/// Longest an agent-path event waits for room in the queue before it is dropped
/// (counted): only a store that stopped answering makes it wait that long.
const PACE_WAIT: Duration = Duration::from_secs(10);

enum Job {
    Event(Event, Option<oneshot::Sender<Option<u64>>>),
    /// An agent's report and its event, stored in the same commit.
    Report(
        Event,
        Box<ReportWrite>,
        oneshot::Sender<Result<Stored, StoreError>>,
    ),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// What a queued job is answered with once its batch is written.
enum Reply {
    Event(Option<oneshot::Sender<Option<u64>>>),
    Report(oneshot::Sender<Result<Stored, StoreError>>),
    Flush(oneshot::Sender<()>),
}

/// Where a report was stored: its position in the report order and its event's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub event: u64,
}

/// Told of every report the writer stored, in log order, right after the commit (the hub
/// publishes it to report watchers): from the writer itself, not from the session that
/// sent it, so a stored report does not wait for its session's task to run again.
pub type OnStored = Box<dyn Fn(GuestId, u64, ApplyReport) + Send + Sync>;

/// The coordinator's handle on the event log. Events go through one writer thread that
/// appends whatever has queued up in one durable transaction, so a fleet reporting at
/// once costs a few disk flushes, not one per report.
pub struct Recorder {
    queue: mpsc::Sender<Job>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// The last index this replica appended, so followers wake up at once.
    last: Arc<watch::Sender<u64>>,
    repeats: Mutex<HashMap<(String, Kind), Instant>>,
    /// 0: unknown, 1: the CA answered last time, 2: it failed last time.
    ca: AtomicU8,
}

/// The task that writes queued events; run it (`Writer::run`) for as long as the
/// recorder is used.
pub struct Writer {
    queue: mpsc::Receiver<Job>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    last: Arc<watch::Sender<u64>>,
    on_stored: OnStored,
}

fn event(kind: Kind, key: String, payload: serde_json::Value) -> Event {
    Event {
        index: 0,
        time_unix_ms: now_unix_ms(),
        topic: kind.topic(),
        kind: kind.to_string(),
        key,
        payload,
    }
}

impl Recorder {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> (Arc<Self>, Writer) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let last = Arc::new(watch::channel(0).0);
        let writer = Writer {
            queue: rx,
            store: store.clone(),
            metrics: metrics.clone(),
            last: last.clone(),
            on_stored: Box::new(|_, _, _| {}),
        };
        let rec = Arc::new(Recorder {
            queue: tx,
            store,
            metrics,
            last,
            repeats: Mutex::new(HashMap::new()),
            ca: AtomicU8::new(0),
        });
        (rec, writer)
    }

    /// Queues an event about `key` (a guest id, "coordinator" or "ca"). One that cannot
    /// be queued or written is logged and counted; the caller goes on either way.
    pub fn record(&self, kind: Kind, key: impl ToString, payload: serde_json::Value) {
        let ev = event(kind, key.to_string(), payload);
        if let Err(e) = self.queue.try_send(Job::Event(ev, None)) {
            tracing::warn!(kind = %kind, "event dropped: the event writer is {}", match e {
                mpsc::error::TrySendError::Full(_) => "behind",
                mpsc::error::TrySendError::Closed(_) => "stopped",
            });
            self.metrics.events_dropped(EventDrop::Store, 1);
        }
    }

    /// Queues an event, waiting (at most [`PACE_WAIT`]) for room in the writer's queue
    /// rather than dropping it: for events of the agents' paths (renewals, sessions),
    /// which arrive in bursts of a fleet's size. The wait is the backpressure on those
    /// RPCs; an event still without room after it is dropped and counted.
    pub async fn record_paced(&self, kind: Kind, key: impl ToString, payload: serde_json::Value) {
        let ev = event(kind, key.to_string(), payload);
        let queued =
            match tokio::time::timeout(PACE_WAIT, self.queue.send(Job::Event(ev, None))).await {
                Ok(Ok(())) => return,
                Ok(Err(_)) => "stopped",
                Err(_) => "behind",
            };
        tracing::warn!(kind = %kind, "event dropped: the event writer is {queued}");
        self.metrics.events_dropped(EventDrop::Store, 1);
    }

    /// The highest index this replica has appended (0: none yet).
    pub fn last_index(&self) -> u64 {
        *self.last.borrow()
    }

    /// Records and waits until the event is durable; its index, or None when it was
    /// not written (logged and counted).
    pub async fn record_wait(
        &self,
        kind: Kind,
        key: impl ToString,
        payload: serde_json::Value,
    ) -> Option<u64> {
        let (tx, rx) = oneshot::channel();
        let ev = event(kind, key.to_string(), payload);
        if self.queue.send(Job::Event(ev, Some(tx))).await.is_err() {
            self.metrics.events_dropped(EventDrop::Store, 1);
            return None;
        }
        rx.await.ok().flatten()
    }

    /// Stores an agent's report and records its event in one commit (where the store can;
    /// else the event first), after everything queued before it; the report is handed to
    /// the writer's [`OnStored`] before this returns. Waits for room in the queue: reports
    /// come in bursts of a fleet's size.
    pub async fn record_report(
        &self,
        kind: Kind,
        write: ReportWrite,
        payload: serde_json::Value,
    ) -> Result<Stored, StoreError> {
        let stopped = || StoreError::Io {
            action: "save report",
            reason: "the event writer has stopped".into(),
        };
        let (tx, rx) = oneshot::channel();
        let ev = event(kind, write.guest.to_string(), payload);
        self.queue
            .send(Job::Report(ev, Box::new(write), tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Waits until every event queued so far is written (or dropped).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Job::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Like `record`, but at most once per [`REPEAT_EVERY`] for the same `kind` and
    /// `source` (a guest, or a peer address): refusals are provoked by whoever connects,
    /// and a stranger retrying must not push the operator's history out of the log. At
    /// most [`MAX_SOURCES`] sources are tracked; past that, such events are dropped
    /// (counted) until the window passes.
    pub fn record_limited(
        &self,
        kind: Kind,
        key: impl ToString,
        source: &str,
        payload: serde_json::Value,
    ) {
        {
            let mut seen = self.repeats.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            seen.retain(|_, at| now.duration_since(*at) < REPEAT_EVERY);
            let id = (source.to_string(), kind);
            if seen.contains_key(&id) {
                return;
            }
            if seen.len() >= MAX_SOURCES {
                self.metrics.events_dropped(EventDrop::RateLimited, 1);
                return;
            }
            seen.insert(id, now);
        }
        self.record(kind, key, payload);
    }

    /// The outcome of a call to the CA (`ca` is its name): recorded when it differs from
    /// the previous outcome, so the log shows when the CA went away and came back.
    pub fn ca_result(&self, ca: &str, action: &str, result: Result<(), String>) {
        let state = if result.is_ok() { 1 } else { 2 };
        if self.ca.swap(state, Ordering::Relaxed) == state {
            return;
        }
        match result {
            Ok(()) => self.record(
                Kind::CaHealthy,
                "ca",
                serde_json::json!({ "ca": ca, "action": action }),
            ),
            Err(error) => self.record(
                Kind::CaFailing,
                "ca",
                serde_json::json!({ "ca": ca, "action": action, "error": error }),
            ),
        };
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Changes whenever this replica appends an event (followers re-read the store).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl Writer {
    /// Hands every stored report to `f` (see [`OnStored`]).
    pub fn on_stored(mut self, f: OnStored) -> Self {
        self.on_stored = f;
        self
    }

    /// Starts the writer on a thread of its own, where it writes queued events until every
    /// `Recorder` handle is gone: whatever queued up meanwhile (up to [`BATCH`]) in one
    /// transaction. A thread, not a task: with 10,000 agents reporting, the runtime's
    /// workers have thousands of session tasks queued, and a writer task waited behind all
    /// of them at each step (taking a batch, its commit, its replies): a report's event
    /// took 400 ms (p50; p99 800 ms) to be written, of which the commit was a fraction
    /// (issue 14).
    pub fn start(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("phoenix-events".into())
            .spawn(move || self.run())
            .map(drop)
    }

    fn run(mut self) {
        let mut jobs = Vec::new();
        while self.queue.blocking_recv_many(&mut jobs, BATCH) > 0 {
            self.write(std::mem::take(&mut jobs));
        }
    }

    fn write(&self, jobs: Vec<Job>) {
        // The replies are answered in order once the batch is written.
        let mut events = Vec::with_capacity(jobs.len());
        let mut reports = Vec::new();
        let mut event_of = Vec::new();
        let replies: Vec<Reply> = jobs
            .into_iter()
            .map(|j| match j {
                Job::Event(ev, reply) => {
                    events.push(ev);
                    Reply::Event(reply)
                }
                Job::Report(ev, write, reply) => {
                    event_of.push(events.len());
                    events.push(ev);
                    reports.push(*write);
                    Reply::Report(reply)
                }
                Job::Flush(reply) => Reply::Flush(reply),
            })
            .collect();
        let n = events.len();
        let written = if n == 0 {
            Ok((Vec::new(), Vec::new()))
        } else if reports.is_empty() {
            self.store.append_events(&events).map(|i| (i, Vec::new()))
        } else {
            self.store.record_reports(&events, &mut reports, &event_of)
        };
        let (indexes, stored): (Vec<Option<u64>>, Vec<Result<u64, StoreError>>) = match written {
            Ok((indexes, stored)) => {
                if let Some(&max) = indexes.last() {
                    self.last.send_if_modified(|l| {
                        let newer = max > *l;
                        if newer {
                            *l = max;
                        }
                        newer
                    });
                }
                (indexes.into_iter().map(Some).collect(), stored)
            }
            Err(e) => {
                tracing::warn!(error = %e, events = n, "events not recorded");
                self.metrics.events_dropped(EventDrop::Store, n as u64);
                let reason = e.to_string();
                let failed = reports.iter().map(|_| {
                    Err(StoreError::Io {
                        action: "save report",
                        reason: reason.clone(),
                    })
                });
                (vec![None; n], failed.collect())
            }
        };
        let mut indexes = indexes.into_iter();
        let mut stored = stored.into_iter().zip(reports);
        for reply in replies {
            match reply {
                Reply::Event(reply) => {
                    let index = indexes.next().flatten();
                    if let Some(reply) = reply {
                        let _ = reply.send(index);
                    }
                }
                Reply::Report(reply) => {
                    let event = indexes.next().flatten().unwrap_or(0);
                    let Some((result, write)) = stored.next() else {
                        continue;
                    };
                    let result = result.map(|seq| {
                        (self.on_stored)(write.guest, event, write.record.report);
                        Stored { seq, event }
                    });
                    let _ = reply.send(result);
                }
                Reply::Flush(reply) => {
                    let _ = reply.send(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;

    fn report(guest: u32, revision: u64) -> ReportWrite {
        ReportWrite {
            guest: GuestId::try_from(guest).expect("id"),
            record: crate::store::ReportRecord {
                seq: 0,
                event: 0,
                received_unix: 9,
                report: ApplyReport {
                    revision,
                    digest: format!("d{revision}"),
                    dry_run: false,
                    results: Vec::new(),
                    duration_micros: 1,
                    trigger: "push".into(),
                },
            },
            converged: true,
            pass_seq: Some(u64::from(guest)),
        }
    }

    /// 500 guests report at once: each report is stored with its own increasing position
    /// and the index of its own event, handed to `on_stored` once, and the enrolled
    /// guests' records take the revision and pass number; the one guest that is not
    /// enrolled gets its error without failing the others of its batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reports_are_stored_with_their_events_in_batches() {
        use crate::store::{AgentRecord, TokenRecord};
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.path().join("db")).expect("open store"));
        for n in 1..=499u32 {
            let g = GuestId::try_from(n).expect("id");
            let hash = format!("t{n}");
            let token = TokenRecord {
                guest: g,
                expires_unix: i64::MAX,
                used_unix: None,
                issued_serial: None,
                replace: false,
            };
            store.put_token(&hash, &token).expect("token");
            store
                .enroll(&hash, g, 1, None, &AgentRecord::default())
                .expect("enroll");
        }
        let handed = Arc::new(Mutex::new(Vec::new()));
        let (rec, writer) = Recorder::new(store.clone(), Arc::new(Metrics::default()));
        let seen = handed.clone();
        writer
            .on_stored(Box::new(move |g, event, r| {
                seen.lock()
                    .expect("lock")
                    .push((g.get(), event, r.revision));
            }))
            .start()
            .expect("start the writer");
        let tasks: Vec<_> = (1..=500u32)
            .map(|n| {
                let rec = rec.clone();
                tokio::spawn(async move {
                    let got = rec
                        .record_report(Kind::Applied, report(n, 7), serde_json::json!({}))
                        .await;
                    (n, got)
                })
            })
            .collect();
        let mut stored = Vec::new();
        for t in tasks {
            match t.await.expect("task") {
                (500, Err(crate::store::StoreError::NotEnrolled { .. })) => {}
                (500, other) => panic!("guest 500 is not enrolled, got {other:?}"),
                (n, r) => stored.push((n, r.expect("stored"))),
            }
        }
        let mut seqs: Vec<u64> = stored.iter().map(|(_, s)| s.seq).collect();
        seqs.sort();
        seqs.dedup();
        assert_eq!(seqs.len(), 499, "every report its own position");
        for (n, s) in &stored {
            let g = GuestId::try_from(*n).expect("id");
            let kept = store.report(g).expect("read").expect("stored");
            assert_eq!((kept.seq, kept.event), (s.seq, s.event), "guest {n}");
            let ev = store.events_since(s.event - 1, 1).expect("read");
            assert_eq!(ev[0].key, n.to_string(), "its own event");
            let agent = store.agent(g).expect("read").expect("enrolled");
            assert_eq!(
                (agent.applied_revision, agent.last_pass_seq),
                (7, u64::from(*n))
            );
        }
        let mut handed = handed.lock().expect("lock").clone();
        handed.sort();
        let mut want: Vec<(u32, u64, u64)> = stored.iter().map(|(n, s)| (*n, s.event, 7)).collect();
        want.sort();
        assert_eq!(
            handed, want,
            "each stored report handed on once, with its event"
        );
        assert_eq!(
            store
                .report(GuestId::try_from(500).expect("id"))
                .expect("read"),
            None
        );
    }

    /// A fleet-sized burst on the agents' paths (more events at once than the queue
    /// holds) all reach the log: the callers wait for room instead of dropping.
    #[tokio::test]
    async fn a_burst_larger_than_the_queue_is_recorded_whole() {
        const BURST: usize = QUEUE + QUEUE / 2;
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.path().join("db")).expect("open store"));
        let (rec, writer) = Recorder::new(store.clone(), Arc::new(Metrics::default()));
        writer.start().expect("start the writer");
        // All queued before the writer first runs (one thread): the queue overflows.
        let tasks: Vec<_> = (0..BURST)
            .map(|n| {
                let rec = rec.clone();
                tokio::spawn(async move {
                    rec.record_paced(Kind::IdentityRenewed, n, serde_json::json!({ "serial": n }))
                        .await;
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        rec.flush().await;
        let bounds = store.event_bounds().expect("bounds");
        assert_eq!(
            bounds.count, BURST as u64,
            "every event of the burst is in the log"
        );
        assert_eq!(rec.last_index(), BURST as u64);
    }
}
