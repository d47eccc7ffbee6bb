//! Stores agents' reports in batches. Each session hands its report here and waits for
//! its store position; one task takes every report that arrived meanwhile and commits them
//! together (`Store::put_reports`) off the async workers. At 10,000 guests an apply brings
//! 10,000 reports within a second: one transaction each (two with the agent record), made
//! on the runtime's two workers, was where the time of an apply went (issue 14).

use crate::store::{ReportWrite, Store, StoreError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most reports in one commit: bounds the transaction, and how long the first of them
/// waits. As large as the event writer's batch: an apply to 10,000 agents that send
/// numbered reports (each batch fsync'd) costs 3 commits, not 10.
const MAX_BATCH: usize = 4096;

struct Job {
    write: ReportWrite,
    done: oneshot::Sender<Result<u64, StoreError>>,
}

#[derive(Clone)]
pub(crate) struct ReportWriter {
    jobs: mpsc::Sender<Job>,
}

impl ReportWriter {
    /// Starts the writer task on the current runtime; it ends when every handle is dropped.
    pub(crate) fn start(store: Arc<dyn Store>) -> Self {
        let (jobs, rx) = mpsc::channel(MAX_BATCH);
        tokio::spawn(run(store, rx));
        ReportWriter { jobs }
    }

    /// Stores one report (in the next batch) and returns its store position.
    pub(crate) async fn put(&self, write: ReportWrite) -> Result<u64, StoreError> {
        let (done, answer) = oneshot::channel();
        let stopped = || StoreError::Io {
            action: "save report",
            reason: "the report writer has stopped".into(),
        };
        self.jobs
            .send(Job { write, done })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let (writes, dones): (Vec<ReportWrite>, Vec<_>) =
            jobs.drain(..).map(|j| (j.write, j.done)).unzip();
        let n = writes.len();
        let store = store.clone();
        let results = tokio::task::spawn_blocking(move || store.put_reports(&writes))
            .await
            .unwrap_or_else(|e| {
                (0..n)
                    .map(|_| {
                        Err(StoreError::Io {
                            action: "save report",
                            reason: e.to_string(),
                        })
                    })
                    .collect()
            });
        for (done, result) in dones.into_iter().zip(results) {
            // A session that went away meanwhile no longer waits for its position.
            let _ = done.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AgentRecord, RedbStore, ReportRecord};
    use phoenix_proto::model::{ApplyReport, GuestId};

    fn write(guest: u32, revision: u64) -> ReportWrite {
        ReportWrite {
            guest: GuestId::try_from(guest).expect("id"),
            record: ReportRecord {
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
            pass_seq: None,
        }
    }

    /// 500 guests report at once: every report gets its own increasing position, the
    /// enrolled guests' records take the revision, and the one guest that is not enrolled
    /// gets its error without failing the others of its batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reports_are_stored_in_batches_with_their_own_results() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.path().join("db")).expect("open store"));
        for n in 1..=499u32 {
            let g = GuestId::try_from(n).expect("id");
            let hash = format!("t{n}");
            store
                .put_token(
                    &hash,
                    &crate::store::TokenRecord {
                        guest: g,
                        expires_unix: i64::MAX,
                        used_unix: None,
                        issued_serial: None,
                        replace: false,
                    },
                )
                .expect("token");
            store
                .enroll(&hash, g, 1, None, &AgentRecord::default())
                .expect("enroll");
        }
        let writer = ReportWriter::start(store.clone());
        let tasks: Vec<_> = (1..=500u32)
            .map(|n| {
                let w = writer.clone();
                tokio::spawn(async move { (n, w.put(write(n, 7)).await) })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            let (n, r) = t.await.expect("task");
            match (n, r) {
                (500, Err(StoreError::NotEnrolled { .. })) => {}
                (500, other) => panic!("guest 500 is not enrolled, got {other:?}"),
                (_, r) => seqs.push(r.expect("stored")),
            }
        }
        seqs.sort();
        seqs.dedup();
        assert_eq!(seqs.len(), 499, "every report its own position");
        assert_eq!(store.reports_since(0).expect("read").len(), 499);
        assert_eq!(
            store
                .report(GuestId::try_from(500).expect("id"))
                .expect("read"),
            None
        );
        let rec = store
            .agent(GuestId::try_from(42).expect("id"))
            .expect("read")
            .expect("enrolled");
        assert_eq!(
            (rec.applied_revision, rec.applied_digest.as_str()),
            (7, "d7")
        );
    }
}
