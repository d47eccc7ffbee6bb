//! etcd only: what other replicas wrote reaches this replica's agents and watchers, and
//! a replica that lost etcd lets its agents go.
//!
//! The feed starts at the etcd revision read before the hub was filled from the store,
//! so no write falls between the two. Each desired state is pushed only if newer than
//! what the hub holds (this replica's own applies come back through the feed too);
//! reports go to the local report watchers with their event index, which they use
//! to drop the copies they already had; a revocation ends the guest's sessions here.
//!
//! Health: the store is probed every `probe_every`. After `lost_after` without an
//! answer this replica ends every agent session with UNAVAILABLE naming etcd, so the
//! agents reconnect to a replica that has a quorum (a new session here is refused
//! anyway: its Hello is a store write). Writes from the admin API fail with the same
//! reason on their own (`StoreError::Unavailable`).

use crate::server::{Coordinator, desired_message};
use crate::store::{Change, EtcdStore};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub async fn follow(
    c: Arc<Coordinator>,
    etcd: Arc<EtcdStore>,
    after: i64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = match etcd.watch_changes(after) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch etcd: other replicas' changes will not reach this one's agents");
            return;
        }
    };
    let mut broken_logged = false;
    loop {
        let change = tokio::select! {
            ch = rx.recv() => match ch { Some(ch) => ch, None => return },
            _ = stop.changed() => return,
        };
        match change {
            Change::Desired(g, rec) => c.hub.push_newer(g, desired_message(&rec)),
            Change::Report(g, rec) => c.hub.publish_report(g, rec.event, Arc::new(rec.report)),
            Change::Agent(g, rec) => {
                if let Some(at) = rec.revoked_unix
                    && c.hub.connected(g)
                {
                    c.hub.end_sessions(
                        g,
                        tonic::Status::permission_denied(format!(
                            "identity of guest {g} was revoked at unix time {at}; re-join with a new token"
                        )),
                    );
                }
            }
            Change::Resync => {
                tracing::warn!(
                    "etcd compacted past the change feed; re-reading every desired state"
                );
                let store = c.store.clone();
                match tokio::task::spawn_blocking(move || store.all_desired()).await {
                    Ok(Ok(all)) => {
                        for (g, rec) in all {
                            c.hub.push_newer(g, desired_message(&rec));
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "re-reading desired states failed"),
                    Err(e) => tracing::warn!(error = %e, "re-reading desired states failed"),
                }
            }
            Change::Caught(_) => {
                if broken_logged {
                    tracing::info!("etcd change feed resumed");
                    broken_logged = false;
                }
            }
            Change::Broken(reason) => {
                if !broken_logged {
                    tracing::warn!(%reason, "etcd change feed broke; resuming where it stopped");
                    broken_logged = true;
                }
            }
        }
    }
}

/// How often the store is probed, and how long it may stay silent before this replica
/// gives its agents up.
#[derive(Debug, Clone, Copy)]
pub struct Health {
    pub probe_every: Duration,
    pub lost_after: Duration,
}

pub async fn watch_health(
    c: Arc<Coordinator>,
    etcd: Arc<EtcdStore>,
    health: Health,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_ok = Instant::now();
    let mut lost = false;
    let mut tick = tokio::time::interval(health.probe_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let probe = etcd.clone();
        let r = tokio::task::spawn_blocking(move || probe.revision()).await;
        match r {
            Ok(Ok(_)) => {
                last_ok = Instant::now();
                if lost {
                    tracing::info!("etcd is reachable again; accepting agent sessions");
                    lost = false;
                }
            }
            Ok(Err(e)) if last_ok.elapsed() >= health.lost_after => {
                let status = tonic::Status::unavailable(format!(
                    "this coordinator replica lost etcd ({e}); reconnect to another replica"
                ));
                if !lost {
                    tracing::error!(error = %e, connected = c.hub.connected_count(), "lost etcd: ending agent sessions so they move to another replica; admin writes fail until it is back");
                    lost = true;
                }
                // Again on every probe: a session may have slipped in between.
                c.hub.end_all_sessions(status);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "etcd did not answer a probe"),
            Err(e) => tracing::error!(error = %e, "etcd probe task failed"),
        }
    }
}
