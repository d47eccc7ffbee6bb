//! Retention: the oldest events beyond the configured age and count are dropped, by the
//! leader only (with etcd, one replica prunes for all; redb always leads).

use super::{Recorder, now_unix_ms};
use crate::store::Retention;
use std::sync::Arc;
use std::time::Duration;

/// How often the log is trimmed; between two runs it may exceed its limits by what was
/// recorded meanwhile.
pub const EVERY: Duration = Duration::from_secs(60);

/// Trims the log now and then every `every`, for as long as the task runs.
pub async fn run(rec: Arc<Recorder>, retention: Retention, replica: String, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = rec.store().clone();
        let term = match store.try_lead(&replica) {
            Ok(Some(term)) => term,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "event retention: cannot campaign for leadership");
                continue;
            }
        };
        match store.prune_events(term, &retention, now_unix_ms()) {
            Ok(0) => {}
            Ok(n) => tracing::info!(dropped = n, "event retention: dropped the oldest events"),
            Err(e) => tracing::warn!(error = %e, "event retention: pruning failed"),
        }
    }
}
