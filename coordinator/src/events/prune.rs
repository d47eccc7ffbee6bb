//! Retention: the oldest events beyond the configured age and count are dropped, by the
//! cluster's leader only (`cluster::leader` calls [`due`] with its term on every tick;
//! with etcd one replica prunes for all, redb always leads).

use super::{Recorder, now_unix_ms};
use crate::store::{LeaderTerm, Retention, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the log is trimmed; between two runs it may exceed its limits by what was
/// recorded meanwhile.
pub const EVERY: Duration = Duration::from_secs(60);

/// Trims the log if `next` has come, then schedules the next run. `NotLeader` is
/// returned so the leader loop can give up its term.
pub async fn due(
    rec: &Arc<Recorder>,
    retention: Retention,
    term: LeaderTerm,
    next: &mut Instant,
) -> Result<(), StoreError> {
    if Instant::now() < *next {
        return Ok(());
    }
    let store = rec.store().clone();
    let r =
        tokio::task::spawn_blocking(move || store.prune_events(term, &retention, now_unix_ms()))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Io {
                    action: "prune events",
                    reason: e.to_string(),
                })
            });
    match r {
        Ok(n) => {
            if n > 0 {
                tracing::info!(dropped = n, "event retention: dropped the oldest events");
            }
            *next = Instant::now() + EVERY;
            Ok(())
        }
        Err(e @ StoreError::NotLeader { .. }) => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "event retention: pruning failed; retrying");
            Ok(())
        }
    }
}
