//! The leader loop: campaign every `lead_every`; while leading, run each scheduled job
//! when the store says it is due (`Store::claim_job`, fenced by the leader's term).
//! Stepping down on stop hands leadership over at once.

use super::ClusterConfig;
use crate::server::Coordinator;
use crate::store::{LeaderTerm, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Join tokens stay in the store this long after they expire, so a late `join` is told
/// "expired" (with the remedy) rather than "unknown".
const KEEP_EXPIRED_TOKENS: Duration = Duration::from_secs(24 * 3600);
pub const PRUNE_JOB: &str = "prune-tokens";

pub async fn run(c: Arc<Coordinator>, mut stop: watch::Receiver<bool>) {
    let cfg = c.cfg.cluster.clone();
    let mut term: Option<LeaderTerm> = None;
    // The process's own schedule; the store's record decides across replicas.
    let mut next_prune = Instant::now();
    let mut tick = tokio::time::interval(cfg.lead_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        term = campaign(&c.store, &cfg, term).await;
        let Some(t) = term else { continue };
        if Instant::now() < next_prune {
            continue;
        }
        match prune(&c.store, &cfg, t).await {
            Ok(Some(n)) => {
                tracing::info!(pruned = n, "pruned expired join tokens");
                next_prune = Instant::now() + cfg.prune_every;
            }
            Ok(None) => {} // another leader ran it recently; ask again next tick
            Err(StoreError::NotLeader { .. }) => {
                tracing::warn!("leadership lost before pruning; not pruning");
                term = None;
            }
            Err(e) => tracing::warn!(error = %e, "pruning join tokens failed; retrying"),
        }
    }
    if let Some(t) = term {
        let store = c.store.clone();
        let r = tokio::task::spawn_blocking(move || store.resign(t)).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "could not step down; the lease expires on its own");
        }
    }
}

/// One campaign; logs when leadership is gained or lost.
async fn campaign(
    store: &Arc<dyn Store>,
    cfg: &ClusterConfig,
    was: Option<LeaderTerm>,
) -> Option<LeaderTerm> {
    let (store, name) = (store.clone(), cfg.replica.clone());
    let r = tokio::task::spawn_blocking(move || store.try_lead(name.as_str())).await;
    let now = match r {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            if was.is_some() {
                tracing::warn!(error = %e, "cannot reach the store: no longer leading");
            }
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "campaign task failed");
            None
        }
    };
    match (was, now) {
        (None, Some(t)) => {
            tracing::info!(replica = %cfg.replica, term = t.fence, "leading the cluster")
        }
        (Some(a), Some(b)) if a != b => {
            tracing::info!(replica = %cfg.replica, term = b.fence, "leading the cluster (new term)")
        }
        (Some(_), None) => tracing::warn!(replica = %cfg.replica, "no longer leading the cluster"),
        _ => {}
    }
    now
}

/// Prunes if the store says the job is due: Some(pruned), or None when not due.
async fn prune(
    store: &Arc<dyn Store>,
    cfg: &ClusterConfig,
    term: LeaderTerm,
) -> Result<Option<usize>, StoreError> {
    let (store, cfg) = (store.clone(), cfg.clone());
    tokio::task::spawn_blocking(move || {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let now_ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
        if !store.claim_job(
            term,
            PRUNE_JOB,
            cfg.prune_every,
            now_ms,
            cfg.replica.as_str(),
        )? {
            return Ok(None);
        }
        let before = now.saturating_sub(KEEP_EXPIRED_TOKENS).as_secs() as i64;
        store.prune_tokens(term, before).map(Some)
    })
    .await
    .unwrap_or_else(|e| {
        Err(StoreError::Io {
            action: "prune join tokens",
            reason: e.to_string(),
        })
    })
}
