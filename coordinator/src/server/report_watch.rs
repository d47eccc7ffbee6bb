//! The admin `WatchReports` stream, level-triggered: a watcher ends up with the last report
//! of every guest it watches, however slowly it reads.
//!
//! Live reports come from the hub's broadcast, which holds a bounded number for a busy
//! watcher. One that falls behind it (the broadcast dropped reports for it) re-reads from
//! the store what was stored after the last store snapshot it read, and goes on live.
//! Each guest's reports reach the watcher in store order, each once; when a guest reported
//! twice while the watcher lagged, it gets the later report only (the guest's state).
//!
//! Limit: plans (dry-run reports) are not stored, so a plan dropped while a watcher lagged
//! is not re-read; `phoenix plan` then times out for that guest.

use super::RpcError;
use super::hub::Published;
use crate::store::{ReportRecord, Store, StoreError};
use phoenix_proto::model::GuestId;
use phoenix_proto::v1;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

type Events = mpsc::Sender<Result<v1::ReportEvent, Status>>;

/// What one watcher has been given so far.
struct Watcher {
    /// Empty: every guest.
    wanted: HashSet<GuestId>,
    /// Per guest, the store position of the last report sent.
    sent: HashMap<GuestId, u64>,
    /// Every report stored up to this position was in a snapshot this watcher read.
    /// Only snapshots move it: live reports arrive in publish order, which is not
    /// store order across guests.
    read_up_to: u64,
}

/// Sends the stored and then the live reports of `wanted` (empty: all guests) to `tx` until
/// the receiver goes away. `live` must be subscribed before this is called, so nothing
/// stored after the first snapshot is missed.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    mut live: broadcast::Receiver<Published>,
    wanted: HashSet<GuestId>,
    tx: Events,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut w = Watcher {
        wanted,
        sent: HashMap::new(),
        read_up_to: 0,
    };
    if !w.catch_up(&store, &tx).await {
        return;
    }
    loop {
        let open = match live.recv().await {
            Ok(p) => w.offer(p.guest, p.seq, &p.report, &tx).await,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                metrics.watch_lagged(missed);
                tracing::info!(
                    missed,
                    "report watcher fell behind; re-reading from the store"
                );
                w.catch_up(&store, &tx).await
            }
            Err(broadcast::error::RecvError::Closed) => false,
        };
        if !open {
            return;
        }
    }
}

impl Watcher {
    /// Sends what the store holds after `read_up_to` and this watcher has not had yet.
    /// False when the stream is gone (the receiver hung up, or the store failed and
    /// the error was sent).
    async fn catch_up(&mut self, store: &Arc<dyn Store>, tx: &Events) -> bool {
        let store = store.clone();
        let after = self.read_up_to;
        let read = tokio::task::spawn_blocking(move || store.reports_since(after))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Io {
                    action: "read reports since",
                    reason: e.to_string(),
                })
            });
        let stored: Vec<(GuestId, ReportRecord)> = match read {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(Status::from(RpcError::from(e)))).await;
                return false;
            }
        };
        for (g, rec) in stored {
            self.read_up_to = self.read_up_to.max(rec.seq);
            if !self.offer(g, rec.seq, &rec.report, tx).await {
                return false;
            }
        }
        true
    }

    /// Sends `report` unless the guest is not watched or this watcher already had it or a
    /// later one. False when the receiver hung up.
    async fn offer(
        &mut self,
        g: GuestId,
        seq: u64,
        report: &phoenix_proto::model::ApplyReport,
        tx: &Events,
    ) -> bool {
        if !self.wanted.is_empty() && !self.wanted.contains(&g) {
            return true;
        }
        // Plans (seq 0) are not stored; each is news.
        if seq != 0 {
            let last = self.sent.entry(g).or_insert(0);
            if seq <= *last {
                return true;
            }
            *last = seq;
        }
        let ev = v1::ReportEvent {
            guest_id: g.get(),
            report: Some(v1::ApplyReport::from(report)),
        };
        tx.send(Ok(ev)).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::hub::Hub;
    use crate::store::RedbStore;
    use phoenix_proto::model::ApplyReport;

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

    /// 1,000 guests report three times each through a hub that holds 16 reports, while
    /// the watcher reads nothing (its stream holds 8) and then reads slowly: it still gets
    /// every guest's last report, and never an older report of a guest after a newer one.
    #[tokio::test]
    async fn a_watcher_that_falls_behind_gets_every_guests_last_report() {
        const GUESTS: u32 = 1000;
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.path().join("db")).expect("open store"));
        let hub = Hub::with_report_buffer(16);
        let (tx, mut rx) = mpsc::channel(8);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        tokio::spawn(run(
            store.clone(),
            hub.subscribe_reports(),
            HashSet::new(),
            tx,
            metrics.clone(),
        ));
        for revision in 1..=3 {
            for n in 1..=GUESTS {
                let g = GuestId::try_from(n).expect("id");
                let rec = ReportRecord {
                    seq: 0,
                    received_unix: 1,
                    report: report(revision),
                };
                let seq = store.put_report(g, &rec).expect("store report");
                hub.publish_report(g, seq, Arc::new(rec.report));
                // Let the watcher run now and then, so it lags part-way, not only once.
                if n % 97 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
        let mut last: HashMap<u32, u64> = HashMap::new();
        while last.values().filter(|r| **r == 3).count() < GUESTS as usize {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
                .await
                .unwrap_or_else(|_| {
                    let done = last.values().filter(|r| **r == 3).count();
                    panic!("watcher missed reports: {done}/{GUESTS} guests have their last")
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
            tokio::task::yield_now().await;
        }
        assert!(
            metrics.watch_lagged_total() > 0,
            "the watcher never fell behind: the test proved nothing"
        );
    }
}
