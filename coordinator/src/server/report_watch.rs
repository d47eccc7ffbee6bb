//! The admin `WatchReports` stream, level-triggered: a watcher gets every report recorded
//! after it opened, however slowly it reads, and first the last report of every guest.
//!
//! What "seen" means: for each guest, the watcher receives its last stored report at open
//! and then every report whose event the log records afterwards (`Applied`,
//! `ApplyFailed`: one per report, superseded or not), each once, in the guest's order.
//!
//! Live reports come from the hub's broadcast, which holds a bounded number for a busy
//! watcher. One that falls behind it (the broadcast dropped reports for it) re-reads the
//! event log after the last index it read there, and goes on live. Event indexes number
//! reports across guests; per guest they increase, so a watcher drops what it already had
//! by the guest's last index sent. A report re-read from the log carries what its event
//! keeps (`events::report::report_of`: long texts cut, unchanged resources by name).
//!
//! Limits: plans (dry-run reports) are not recorded, so a plan dropped while a watcher
//! lagged is not re-read (`phoenix plan` then times out for that guest). Reports whose
//! events were pruned before a lagging watcher read them are replaced by each guest's
//! last stored report (logged). With replicas sharing etcd, a report another replica has
//! in flight when a watcher opens is only seen live.

use super::hub::{Hub, Published};
use super::{RpcError, blocking};
use crate::events::Kind;
use crate::events::report::report_of;
use crate::store::{Event, Store, StoreError, Topic};
use phoenix_proto::model::{ApplyReport, GuestId};
use phoenix_proto::v1;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

type Events = mpsc::Sender<Result<v1::ReportEvent, Status>>;

/// Events read from the log at once.
const PAGE: usize = 1024;

/// What one watcher has been given so far.
struct Watcher {
    store: Arc<dyn Store>,
    /// Empty: every guest.
    wanted: HashSet<GuestId>,
    /// Per guest, the event index of the last report sent.
    sent: HashMap<GuestId, u64>,
    /// Every report whose event index is at most this was sent, superseded at open, or
    /// re-read from the log. Only reads of the log move it: live reports arrive in
    /// publish order, which is not index order across guests.
    read_up_to: u64,
}

/// Sends the stored and then every later report of `wanted` (empty: all guests) to `tx`
/// until the receiver goes away. `live` must be subscribed before this is called, so
/// nothing published after the first read is missed.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    mut live: broadcast::Receiver<Published>,
    wanted: HashSet<GuestId>,
    tx: Events,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut w = Watcher {
        store,
        wanted,
        sent: HashMap::new(),
        read_up_to: 0,
    };
    if !w.start(&hub, &tx).await {
        return;
    }
    loop {
        let open = match live.recv().await {
            Ok(p) => w.offer(p.guest, p.event, &p.report, &tx).await,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                metrics.watch_lagged(missed);
                tracing::info!(
                    missed,
                    "report watcher fell behind; re-reading the event log"
                );
                w.catch_up(&tx).await
            }
            Err(broadcast::error::RecvError::Closed) => false,
        };
        if !open {
            return;
        }
    }
}

/// The guest and report of a report event; None for every other event.
fn report_event(ev: &Event) -> Option<(GuestId, ApplyReport)> {
    let kind = ev.kind.as_str();
    if ev.topic != Topic::Report
        || (kind != Kind::Applied.to_string() && kind != Kind::ApplyFailed.to_string())
    {
        return None;
    }
    let guest = GuestId::try_from(ev.key.parse::<u32>().ok()?).ok()?;
    Some((guest, report_of(&ev.payload)?))
}

impl Watcher {
    /// Sends each guest's last stored report and sets where the log is read from. False
    /// when the stream is gone.
    async fn start(&mut self, hub: &Hub, tx: &Events) -> bool {
        // The log's end before the in-flight check, and both before the stored reports:
        // every report at or below `settled` is published, so stored, so in the snapshot
        // or superseded there; every later one comes live or from the log.
        let store = self.store.clone();
        let read = blocking("read event bounds", move || store.event_bounds()).await;
        let last = match read {
            Ok(b) => b.last,
            Err(e) => return fail(tx, e).await,
        };
        self.read_up_to = hub.settled(last);
        let store = self.store.clone();
        let stored = match blocking("read reports", move || store.reports_since(0)).await {
            Ok(r) => r,
            Err(e) => return fail(tx, e).await,
        };
        for (g, rec) in stored {
            if !self.offer(g, rec.event, &rec.report, tx).await {
                return false;
            }
        }
        true
    }

    /// Sends what the log holds after `read_up_to` and this watcher has not had yet.
    /// False when the stream is gone (the receiver hung up, or the store failed and the
    /// error was sent).
    async fn catch_up(&mut self, tx: &Events) -> bool {
        loop {
            let (store, after) = (self.store.clone(), self.read_up_to);
            let page = match blocking("read events", move || store.events_since(after, PAGE)).await
            {
                Ok(p) => p,
                Err(e) => return fail(tx, e).await,
            };
            if let Some(first) = page.first()
                && first.index > after + 1
                && !self.pruned_before(first.index, tx).await
            {
                return false;
            }
            for ev in &page {
                self.read_up_to = ev.index;
                if let Some((g, report)) = report_event(ev)
                    && !self.offer(g, ev.index, &report, tx).await
                {
                    return false;
                }
            }
            if page.len() < PAGE {
                return true;
            }
        }
    }

    /// The log was pruned past `read_up_to` (or its indexes have gaps, etcd): sends the
    /// last stored report of each guest whose event is gone (below `first`), so the
    /// watcher still ends with every guest's state. False when the stream is gone.
    async fn pruned_before(&mut self, first: u64, tx: &Events) -> bool {
        let store = self.store.clone();
        let bounds = match blocking("read event bounds", move || store.event_bounds()).await {
            Ok(b) => b,
            Err(e) => return fail(tx, e).await,
        };
        if bounds.first <= self.read_up_to + 1 {
            // Gaps in the indexes, nothing pruned.
            return true;
        }
        tracing::warn!(
            read_up_to = self.read_up_to,
            first = bounds.first,
            "a report watcher fell behind the event log's retention; it gets each guest's last report for what was pruned"
        );
        let store = self.store.clone();
        let stored = match blocking("read reports", move || store.reports_since(0)).await {
            Ok(r) => r,
            Err(e) => return fail(tx, e).await,
        };
        for (g, rec) in stored {
            if rec.event < first && !self.offer(g, rec.event, &rec.report, tx).await {
                return false;
            }
        }
        true
    }

    /// Sends `report` unless the guest is not watched or this watcher already had it or a
    /// later one. False when the receiver hung up.
    async fn offer(&mut self, g: GuestId, event: u64, report: &ApplyReport, tx: &Events) -> bool {
        if !self.wanted.is_empty() && !self.wanted.contains(&g) {
            return true;
        }
        // A plan, or a report without an event, is in no log to re-read: each is news.
        if event != 0 {
            let last = self.sent.entry(g).or_insert(0);
            if event <= *last {
                return true;
            }
            *last = event;
        }
        let ev = v1::ReportEvent {
            guest_id: g.get(),
            report: Some(v1::ApplyReport::from(report)),
        };
        tx.send(Ok(ev)).await.is_ok()
    }
}

/// Sends the store's error as the stream's last item; false (the stream is done).
async fn fail(tx: &Events, e: StoreError) -> bool {
    let _ = tx.send(Err(Status::from(RpcError::from(e)))).await;
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::report::{Delivery, payload};
    use crate::server::hub::Hub;
    use crate::store::{RedbStore, ReportRecord};
    use std::collections::BTreeSet;

    fn report(revision: u64) -> ApplyReport {
        ApplyReport {
            revision,
            digest: "0".repeat(64),
            dry_run: false,
            results: Vec::new(),
            duration_micros: 1,
            trigger: "push".into(),
        }
    }

    /// What `handle_report` does: the event, then the report under its index, then the
    /// broadcast.
    fn report_in(store: &Arc<dyn Store>, hub: &Hub, g: GuestId, revision: u64) {
        let r = report(revision);
        let ev = Event {
            index: 0,
            time_unix_ms: 1,
            topic: Topic::Report,
            kind: Kind::Applied.to_string(),
            key: g.to_string(),
            payload: payload(
                &r,
                Delivery {
                    seq: None,
                    finished_unix_ms: None,
                    received_unix_ms: 1,
                    session_opened_unix_ms: 0,
                },
            ),
        };
        let event = store.append_events(&[ev]).expect("append event")[0];
        let rec = ReportRecord {
            seq: 0,
            event,
            received_unix: 1,
            report: r,
        };
        store.put_report(g, &rec).expect("store report");
        hub.publish_report(g, event, Arc::new(rec.report));
    }

    /// 300 guests each have a stored report; once the watcher has started, they report
    /// three times each through a hub that holds 16 reports, while the watcher reads
    /// nothing (its stream holds 8) and then reads slowly: it gets every guest's stored
    /// report and then every one of the three, superseded or not, each once and in the
    /// guest's order.
    #[tokio::test]
    async fn a_watcher_that_falls_behind_gets_every_report() {
        const GUESTS: u32 = 300;
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.path().join("db")).expect("open store"));
        let hub = Hub::with_report_buffer(16);
        let guests: Vec<GuestId> = (1..=GUESTS)
            .map(|n| GuestId::try_from(n).expect("id"))
            .collect();
        for g in &guests {
            report_in(&store, &hub, *g, 1);
        }
        let (tx, mut rx) = mpsc::channel(8);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        tokio::spawn(run(
            store.clone(),
            hub.clone(),
            hub.subscribe_reports(),
            HashSet::new(),
            tx,
            metrics.clone(),
        ));
        let want = GUESTS as usize * 4;
        let mut seen: BTreeSet<(u32, u64)> = BTreeSet::new();
        let mut last: HashMap<u32, u64> = HashMap::new();
        // The first stored report arrives once the watcher has read where it starts; from
        // then on it holds 8 of the others and reads no more until the loop below.
        let first = next(&mut rx).await;
        assert_eq!(first.1, 1);
        seen.insert(first);
        last.insert(first.0, first.1);
        for revision in 2..=4 {
            for (n, g) in guests.iter().enumerate() {
                report_in(&store, &hub, *g, revision);
                // Let the watcher run now and then, so it lags part-way, not only once.
                if n % 97 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
        while seen.len() < want {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
                .await
                .unwrap_or_else(|_| {
                    let missed: Vec<(u32, u64)> = (1..=GUESTS)
                        .flat_map(|g| (1..=4).map(move |r| (g, r)))
                        .filter(|k| !seen.contains(k))
                        .take(20)
                        .collect();
                    panic!(
                        "watcher missed reports: {}/{want}, first missed {missed:?}",
                        seen.len()
                    )
                })
                .expect("stream open")
                .expect("no error");
            let revision = ev.report.expect("report").revision;
            let before = last.insert(ev.guest_id, revision).unwrap_or(0);
            assert!(
                revision > before,
                "guest {}: revision {revision} after {before}",
                ev.guest_id
            );
            assert!(seen.insert((ev.guest_id, revision)), "sent twice");
            tokio::task::yield_now().await;
        }
        assert!(
            metrics.watch_lagged_total() > 0,
            "the watcher never fell behind: the test proved nothing"
        );
    }

    async fn next(rx: &mut mpsc::Receiver<Result<v1::ReportEvent, Status>>) -> (u32, u64) {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("a report within 10 s")
            .expect("stream open")
            .expect("no error");
        (ev.guest_id, ev.report.expect("report").revision)
    }

    /// A watcher opened while a report is between its event and its publication starts
    /// reading the log below that report, so it has it even if the broadcast drops it.
    #[tokio::test]
    async fn a_report_in_flight_when_a_watcher_opens_is_not_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.path().join("db")).expect("open store"));
        let hub = Hub::with_report_buffer(1);
        let g = GuestId::try_from(5).expect("id");
        let stored = GuestId::try_from(7).expect("id");
        report_in(&store, &hub, stored, 1);
        let pending = hub.report_pending(store.event_bounds().expect("bounds").last);
        // The event is recorded, the report not yet stored nor published.
        let ev = Event {
            index: 0,
            time_unix_ms: 1,
            topic: Topic::Report,
            kind: Kind::Applied.to_string(),
            key: g.to_string(),
            payload: payload(
                &report(9),
                Delivery {
                    seq: None,
                    finished_unix_ms: None,
                    received_unix_ms: 1,
                    session_opened_unix_ms: 0,
                },
            ),
        };
        store.append_events(&[ev]).expect("append");
        let (tx, mut rx) = mpsc::channel(8);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        tokio::spawn(run(
            store.clone(),
            hub.clone(),
            hub.subscribe_reports(),
            HashSet::new(),
            tx,
            metrics,
        ));
        // The stored report comes first, once the watcher has settled where it reads from.
        assert_eq!(next(&mut rx).await, (7, 1));
        drop(pending);
        // Two later reports of another guest overflow the one-slot broadcast before the
        // in-flight one would have been read live: the watcher lags and re-reads the log.
        let other = GuestId::try_from(6).expect("id");
        report_in(&store, &hub, other, 1);
        report_in(&store, &hub, other, 2);
        let mut got = Vec::new();
        while got.len() < 3 {
            got.push(next(&mut rx).await);
        }
        got.sort();
        assert_eq!(got, vec![(5, 9), (6, 1), (6, 2)]);
    }
}
