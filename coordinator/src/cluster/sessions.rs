//! etcd only: this replica's sessions, registered in etcd under its lease so every
//! replica shows an agent connected to any of them (and which), and the reports of
//! plans forwarded here, returned through etcd (docs/design/0010, phase 3).
//!
//! Level-triggered: whenever sessions attach or detach here (and at least every
//! `resync`), the set of guests attached is compared with what was registered and the
//! difference written in a few batched transactions, so 10,000 agents connecting cost a
//! few hundred writes, not 10,000. Every `resync` the registrations are re-read from
//! etcd, so a lost write or an expired lease (a new one registers everything again) is
//! repaired.

use crate::server::Coordinator;
use crate::server::hub::PlanReport;
use crate::store::EtcdStore;
use phoenix_proto::model::GuestId;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Registration writes wait this long for more attaches to batch with.
const BATCH_WAIT: Duration = Duration::from_millis(100);

pub async fn register(
    c: Arc<Coordinator>,
    etcd: Arc<EtcdStore>,
    resync: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let replica = c.cfg.cluster.replica.as_str().to_string();
    let mut changed = c.hub.watch_sessions();
    let mut written: HashSet<GuestId> = HashSet::new();
    // None: not known to match etcd (start, after an error, or time to re-read).
    let mut lease: Option<i64> = None;
    let mut verify = tokio::time::interval(resync);
    verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = changed.changed() => {
                if r.is_err() { return; }
                tokio::time::sleep(BATCH_WAIT).await;
                changed.borrow_and_update();
            }
            _ = verify.tick() => {
                if let Some(l) = lease {
                    let (e, r) = (etcd.clone(), replica.clone());
                    match tokio::task::spawn_blocking(move || e.registered_sessions(&r, l)).await {
                        Ok(Ok(there)) => written = there,
                        _ => lease = None,
                    }
                }
            }
            _ = stop.changed() => return,
        }
        let here: HashSet<GuestId> = c.hub.sessions_here().into_iter().collect();
        if lease.is_none() {
            // Unknown state in etcd: put every session again, remove nothing known.
            written.clear();
        }
        let open: Vec<GuestId> = here.difference(&written).copied().collect();
        let closed: Vec<GuestId> = written.difference(&here).copied().collect();
        if open.is_empty() && closed.is_empty() && lease.is_some() {
            continue;
        }
        let (e, r) = (etcd.clone(), replica.clone());
        let (o, cl) = (open.clone(), closed.clone());
        match tokio::task::spawn_blocking(move || e.sync_sessions(&r, &o, &cl)).await {
            Ok(Ok(l)) if lease.is_none_or(|old| old == l) => {
                lease = Some(l);
                written = here;
            }
            Ok(Ok(l)) => {
                // A new lease: the registrations of the old one are gone with it.
                tracing::info!(
                    lease = l,
                    "etcd lease renewed; registering every session again"
                );
                lease = None;
                changed.mark_changed();
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "registering agent sessions in etcd failed; retrying");
                lease = None;
                tokio::time::sleep(resync / 4).await;
                changed.mark_changed();
            }
            Err(e) => tracing::error!(error = %e, "session registration task failed"),
        }
    }
}

/// Writes the reports of plans forwarded to this replica back to etcd.
pub async fn return_plans(
    etcd: Arc<EtcdStore>,
    mut rx: mpsc::UnboundedReceiver<PlanReport>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (guest, lease, report) = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => return },
            _ = stop.changed() => return,
        };
        let e = etcd.clone();
        let r = tokio::task::spawn_blocking(move || e.put_plan_report(guest, lease, &report)).await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%guest, error = %e, "plan report not returned"),
            Err(e) => tracing::warn!(%guest, error = %e, "plan report not returned"),
        }
    }
}
