//! etcd only: what other replicas wrote reaches this replica's agents and watchers, and
//! a replica that lost etcd lets its agents go.
//!
//! The feed starts at the etcd revision read before the hub was filled from the store,
//! so no write falls between the two. Each desired state is pushed only if newer than
//! what the hub holds (this replica's own applies come back through the feed too);
//! reports go to the local report watchers with their event index, which they use
//! to drop the copies they already had; a revocation ends the guest's sessions here.
//! Other replicas' session registrations make "connected" cluster-wide; a plan
//! forwarded through etcd is pushed if its guest's session is here, and plan reports
//! from any replica reach the watchers here; so does a pass request (`phoenix
//! converge`); a replica registering its address updates the list every agent is told.
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
    // Read after the watch starts at `after`: replaying the changes since then onto
    // this listing ends at the present, whatever it already contains.
    if let Some(all) = refresh_sessions(&etcd).await {
        c.hub.reset_remote_sessions(all);
    }
    refresh_replicas(&c).await;
    let mut broken_logged = false;
    loop {
        let change = tokio::select! {
            ch = rx.recv() => match ch { Some(ch) => ch, None => return },
            _ = stop.changed() => return,
        };
        match change {
            Change::Desired(g, rec) => c.hub.push_newer(g, desired_message(&rec)),
            Change::Report(g, rec) => c.hub.publish_report(g, rec.event, Arc::new(rec.report)),
            Change::Session {
                guest,
                replica,
                open,
            } => c.hub.remote_session(guest, &replica, open),
            Change::Plan(g, lease, rec) => {
                let mut state = desired_message(&rec);
                state.dry_run = true;
                c.hub.forwarded_plan(g, lease, state);
            }
            Change::PlanReport(g, report) => {
                if report.dry_run {
                    c.hub.publish_local(g, 0, Arc::new(report));
                }
            }
            Change::Pass { guest, from } => {
                if c.hub.request_pass(guest) {
                    tracing::info!(%guest, %from, "pass requested through etcd by another replica");
                }
            }
            Change::Replicas => refresh_replicas(&c).await,
            Change::Agent(g, rec) => {
                if let Some(at) = rec.revoked_unix
                    && c.hub.connected_here(g)
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
                if let Some(all) = refresh_sessions(&etcd).await {
                    c.hub.reset_remote_sessions(all);
                }
                refresh_replicas(&c).await;
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

/// Every replica's session registrations, re-read (None, logged, when etcd fails).
pub(crate) async fn refresh_sessions(
    etcd: &Arc<EtcdStore>,
) -> Option<Vec<(phoenix_proto::model::GuestId, String)>> {
    let etcd = etcd.clone();
    match tokio::task::spawn_blocking(move || etcd.all_sessions()).await {
        Ok(Ok(all)) => Some(all),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "re-reading the cluster's sessions failed");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "re-reading the cluster's sessions failed");
            None
        }
    }
}

/// Re-reads the replica addresses agents are told.
pub(crate) async fn refresh_replicas(c: &Arc<Coordinator>) {
    let store = c.store.clone();
    match tokio::task::spawn_blocking(move || store.replica_addrs()).await {
        Ok(Ok(addrs)) if !addrs.is_empty() => c.hub.set_replicas(addrs),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "re-reading the replica addresses failed"),
        Err(e) => tracing::warn!(error = %e, "re-reading the replica addresses failed"),
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
