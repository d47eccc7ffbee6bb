//! What a replica asks of the replica holding a guest's session, through etcd
//! (docs/design/0010, phase 3). Replicas never call each other; every replica's change
//! feed sees these keys, and the one holding the session acts:
//!
//! - `converge/<guest>`: run a pass now (`phoenix converge`, `phoenix apply --force`).
//!   The value is the asking replica's name (for logs). Each put is one request; the
//!   key lives under a short lease shared by the requests of half a minute, so etcd
//!   forgets them on its own and a burst of requests (`apply --force` on a fleet) costs
//!   one write each, not a lease grant each. The pass's report comes back the usual
//!   way: stored in etcd and recorded in the event log, both cluster-wide.
//! - `plans/<guest>` (written in `sessions.rs`): its lease is granted from how long the
//!   asker waits ([`plan_lease_ttl`]), so a `phoenix plan --timeout` longer than the
//!   default does not lose its reports.
//!
//! Only replicas hold etcd credentials: a guest reaches none of these keys, and nothing
//! a guest sends on its session writes them.

use super::EtcdStore;
use crate::store::StoreError;
use etcd_client::PutOptions;
use phoenix_proto::model::GuestId;
use std::time::{Duration, Instant};

/// The shortest life of a forwarded plan and its report: what a plan asked without
/// saying how long it waits gets.
pub const PLAN_TTL: Duration = Duration::from_secs(300);
/// Added to the asker's wait: the plan is written before the wait starts, and the last
/// report must still be readable when the asker's deadline comes.
const PLAN_MARGIN: Duration = Duration::from_secs(60);
/// A plan never holds etcd keys longer than a day, whatever the asker says.
const MAX_PLAN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The lease of pass requests; one is reused for half of it, so each request's key
/// lives between `PASS_TTL / 2` and `PASS_TTL`: far longer than a watch takes to
/// deliver it, short enough that requests do not pile up.
const PASS_TTL: Duration = Duration::from_secs(60);

/// How long a forwarded plan (and its report) must stay in etcd for an asker that waits
/// `wait` for its reports: the wait and a margin, at least [`PLAN_TTL`], at most a day.
pub fn plan_lease_ttl(wait: Duration) -> Duration {
    wait.saturating_add(PLAN_MARGIN)
        .clamp(PLAN_TTL, MAX_PLAN_TTL)
}

/// The pass-request lease in use and when it was granted.
#[derive(Debug, Clone, Copy)]
pub(super) struct PassLease {
    id: i64,
    granted: Instant,
}

impl EtcdStore {
    /// A new lease of `ttl` (whole seconds, at least 1), not kept alive: it ends on its own.
    pub(super) fn grant(&self, action: &'static str, ttl: Duration) -> Result<i64, StoreError> {
        let client = self.client.clone();
        let secs = ttl.as_secs().max(1) as i64;
        Ok(self
            .call(action, move || {
                let mut client = client.clone();
                async move { client.lease_grant(secs, None).await }
            })?
            .id())
    }

    /// The lease for a pass request: the current one while it has at least half its
    /// life left, else a new one.
    fn pass_lease(&self, action: &'static str) -> Result<i64, StoreError> {
        let mut slot = self.pass_lease.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = slot.filter(|l| l.granted.elapsed() < PASS_TTL / 2) {
            return Ok(l.id);
        }
        let granted = Instant::now();
        let id = self.grant(action, PASS_TTL)?;
        *slot = Some(PassLease { id, granted });
        Ok(id)
    }

    /// Asks the replica holding the session of `g` to have its agent run a pass now:
    /// puts `converge/<g>` (value: `from`, the asking replica) under the pass lease.
    pub fn put_pass_request(&self, g: GuestId, from: &str) -> Result<(), StoreError> {
        const A: &str = "forward a pass request";
        let key = self.key(&format!("converge/{:010}", g.get()));
        let mut retried = false;
        loop {
            let lease = self.pass_lease(A)?;
            let (kv, k, v) = (self.kv.clone(), key.clone(), from.to_string());
            let r = self.call(A, move || {
                let (mut kv, k, v) = (kv.clone(), k.clone(), v.clone());
                async move {
                    kv.put(k, v, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            });
            match r {
                // Revoked or expired early (etcd restored from a snapshot): a new one.
                Err(StoreError::Io { reason, .. })
                    if reason.contains("lease not found") && !retried =>
                {
                    retried = true;
                    let mut slot = self.pass_lease.lock().unwrap_or_else(|p| p.into_inner());
                    if slot.is_some_and(|l| l.id == lease) {
                        *slot = None;
                    }
                }
                r => return r.map(|_| ()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_lives_longer_than_its_asker_waits() {
        let s = Duration::from_secs;
        // Short waits (and none said) get the default.
        assert_eq!(plan_lease_ttl(Duration::ZERO), PLAN_TTL);
        assert_eq!(plan_lease_ttl(s(60)), PLAN_TTL);
        // A wait past the default: the wait and the margin.
        assert_eq!(plan_lease_ttl(s(600)), s(660));
        assert!(plan_lease_ttl(s(3600)) > s(3600));
        // Capped, also for absurd waits.
        assert_eq!(plan_lease_ttl(s(7 * 24 * 3600)), MAX_PLAN_TTL);
        assert_eq!(plan_lease_ttl(Duration::MAX), MAX_PLAN_TTL);
    }
}
