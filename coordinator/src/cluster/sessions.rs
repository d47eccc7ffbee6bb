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
//!
//! One live session per identity across the cluster (docs/design/0012): a session
//! opening here claims its guest before it is served; the claims of sessions opening
//! together go to etcd in the same transactions as the registrations, and a guest
//! another replica holds under its live lease is refused here.

use crate::server::Coordinator;
use crate::server::hub::{Claim, Claimed, PlanReport, SessionInUse};
use crate::store::EtcdStore;
use phoenix_proto::model::GuestId;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::Status;

/// Registration writes wait this long for more attaches to batch with.
const BATCH_WAIT: Duration = Duration::from_millis(100);
/// A claim waits this long for others to go to etcd with: a session opening waits for
/// its answer, so shorter than `BATCH_WAIT`.
const CLAIM_WAIT: Duration = Duration::from_millis(20);

/// Registers this replica's sessions and answers the claims of sessions opening here
/// (one live session per identity across the cluster): a claim is granted once the
/// guest's holder key in etcd is this replica's.
pub async fn register(
    c: Arc<Coordinator>,
    etcd: Arc<EtcdStore>,
    resync: Duration,
    mut claims: mpsc::UnboundedReceiver<Claim>,
    mut stop: watch::Receiver<bool>,
) {
    let replica = c.cfg.cluster.replica.as_str().to_string();
    let mut changed = c.hub.watch_sessions();
    let mut written: HashSet<GuestId> = HashSet::new();
    // None: not known to match etcd (start, after an error, or time to re-read).
    let mut lease: Option<i64> = None;
    let mut verify = tokio::time::interval(resync);
    verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting: Vec<Claim> = Vec::new();
    loop {
        tokio::select! {
            r = changed.changed() => {
                if r.is_err() { return; }
                tokio::time::sleep(BATCH_WAIT).await;
            }
            claim = claims.recv() => {
                let Some(claim) = claim else { return };
                waiting.push(claim);
                tokio::time::sleep(CLAIM_WAIT).await;
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
        while let Ok(claim) = claims.try_recv() {
            waiting.push(claim);
        }
        // Every claim's session is attached before it claims, so `here` includes it.
        changed.borrow_and_update();
        let here: HashSet<GuestId> = c.hub.sessions_here().into_iter().collect();
        let held_before = written.clone();
        if lease.is_none() {
            // Unknown state in etcd: put every session again, remove nothing known.
            written.clear();
        }
        let open: Vec<GuestId> = here.difference(&written).copied().collect();
        let closed: Vec<GuestId> = written.difference(&here).copied().collect();
        if open.is_empty() && closed.is_empty() && lease.is_some() {
            answer(&mut waiting, &written, &Default::default());
            continue;
        }
        let (e, r) = (etcd.clone(), replica.clone());
        let (o, cl) = (open.clone(), closed.clone());
        match tokio::task::spawn_blocking(move || e.sync_sessions(&r, &o, &cl)).await {
            Ok(Ok((l, lost))) => {
                written = here
                    .iter()
                    .filter(|g| !lost.contains_key(g))
                    .copied()
                    .collect();
                answer(&mut waiting, &written, &lost);
                for (g, other) in &lost {
                    // Held here before and now another replica's: this replica's lease
                    // lapsed and the guest opened a session there meanwhile. That one
                    // stands; this one ends (the agent retries, and is refused while the
                    // other lives).
                    if held_before.contains(g) {
                        let e = SessionInUse {
                            guest: *g,
                            holder: Some(other.clone()),
                        };
                        tracing::warn!(guest = %g, holder = %other, "a session of this replica is held by another replica; ending it here");
                        c.hub
                            .end_sessions(*g, Status::already_exists(e.to_string()));
                    }
                }
                if lease.is_some_and(|old| old != l) {
                    // A new lease: the registrations of the old one are gone with it.
                    tracing::info!(
                        lease = l,
                        "etcd lease renewed; registering every session again"
                    );
                    lease = None;
                    changed.mark_changed();
                } else {
                    lease = Some(l);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "registering agent sessions in etcd failed; retrying");
                for (_, reply) in waiting.drain(..) {
                    let _ = reply.send(Claimed::Failed(e.to_string()));
                }
                lease = None;
                tokio::time::sleep(resync / 4).await;
                changed.mark_changed();
            }
            Err(e) => {
                tracing::error!(error = %e, "session registration task failed");
                for (_, reply) in waiting.drain(..) {
                    let _ = reply.send(Claimed::Failed(e.to_string()));
                }
            }
        }
    }
}

/// Answers the claims waiting: granted when the guest's registration is this replica's.
fn answer(waiting: &mut Vec<Claim>, written: &HashSet<GuestId>, lost: &HashMap<GuestId, String>) {
    for (g, reply) in waiting.drain(..) {
        let claimed = match lost.get(&g) {
            Some(other) => Claimed::HeldBy(other.clone()),
            None if written.contains(&g) => Claimed::Held,
            // Its session detached before the claim was written: nothing to hold.
            None => Claimed::Failed(format!("the session of guest {g} closed while it opened")),
        };
        let _ = reply.send(claimed);
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
