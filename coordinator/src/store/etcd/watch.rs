//! The change feed of a replica: one etcd watch over the prefix, from a known revision,
//! turned into [`Change`]s (docs/design/0010, "Pushing from every replica").
//!
//! An apply on replica A writes `desired/<guest>`; replica B, which holds that guest's
//! session, sees the write here and pushes it. A report stored by A reaches the report
//! watchers on B the same way. The watch resumes from the last revision it delivered
//! when its stream breaks (a member died), so nothing is skipped; when that revision was
//! compacted away it says [`Change::Resync`] and the consumer re-reads the store, which
//! is what level-triggered code does anyway.

use super::EtcdStore;
use crate::store::{AgentRecord, DesiredRecord, ReportRecord, StoreError};
use etcd_client::{Client, EventType, WatchOptions};
use phoenix_proto::model::{ApplyReport, GuestId};
use std::time::Duration;
use tokio::sync::mpsc;

/// What another replica (or this one) wrote, as the feed delivers it.
#[derive(Debug, Clone)]
pub enum Change {
    /// A guest's desired state was stored.
    Desired(GuestId, DesiredRecord),
    /// A guest's report was stored; `seq` is its position (the etcd revision).
    Report(GuestId, ReportRecord),
    /// A guest's agent record was written (enrolled, renewed, revoked, seen).
    Agent(GuestId, AgentRecord),
    /// A replica opened (`open`) or closed a session of a guest; closed also when the
    /// replica's lease expired.
    Session {
        guest: GuestId,
        replica: String,
        open: bool,
    },
    /// A dry run for a guest (revision 0), forwarded under an etcd lease.
    Plan(GuestId, i64, DesiredRecord),
    /// A guest's answer to a forwarded dry run.
    PlanReport(GuestId, ApplyReport),
    /// Replica `from` asks for a pass of the guest now (`phoenix converge`).
    Pass { guest: GuestId, from: String },
    /// A replica registered (or changed) its address.
    Replicas,
    /// The feed could not resume where it stopped (compacted): re-read everything.
    Resync,
    /// The watch is (re)established up to this revision; nothing is pending before it.
    Caught(i64),
    /// The watch broke and is being re-opened; the reason, for logs and health.
    Broken(String),
}

/// Events buffered for a slow consumer before the watch waits for it.
const FEED_BUFFER: usize = 4096;

impl EtcdStore {
    /// The store's current etcd revision: start a feed from here after reading the state.
    pub fn revision(&self) -> Result<i64, StoreError> {
        let kv = self.kv.clone();
        let key = self.key("meta/revision");
        let resp = self.call("read the etcd revision", move || {
            let (mut kv, key) = (kv.clone(), key.clone());
            async move { kv.get(key, None).await }
        })?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Every change under the prefix written after etcd revision `after`, in revision
    /// order, until the receiver is dropped.
    pub fn watch_changes(&self, after: i64) -> Result<mpsc::Receiver<Change>, StoreError> {
        let rt = self.rt.as_ref().ok_or(StoreError::Io {
            action: "watch changes",
            reason: "the etcd client is shut down".into(),
        })?;
        let (tx, rx) = mpsc::channel(FEED_BUFFER);
        rt.spawn(feed(self.client.clone(), self.prefix.clone(), after, tx));
        Ok(rx)
    }
}

async fn feed(client: Client, prefix: String, mut after: i64, tx: mpsc::Sender<Change>) {
    const PAUSE: Duration = Duration::from_millis(250);
    loop {
        let reason = match watch_once(&client, &prefix, &mut after, &tx).await {
            Ok(()) => return, // the consumer went away
            Err(Ended::Compacted(at)) => {
                // History before `at` is gone: continue from the present and re-read.
                after = at.saturating_sub(1);
                if tx.send(Change::Resync).await.is_err() {
                    return;
                }
                continue;
            }
            Err(Ended::Broken(reason)) => reason,
        };
        if tx.send(Change::Broken(reason)).await.is_err() {
            return;
        }
        tokio::time::sleep(PAUSE).await;
    }
}

enum Ended {
    Compacted(i64),
    Broken(String),
}

/// One watch stream. Ok when the consumer is gone; otherwise why it ended.
async fn watch_once(
    client: &Client,
    prefix: &str,
    after: &mut i64,
    tx: &mpsc::Sender<Change>,
) -> Result<(), Ended> {
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*after + 1)
        .with_progress_notify();
    let mut c = client.clone();
    let mut stream = c
        .watch(prefix, Some(opts))
        .await
        .map_err(|e| Ended::Broken(e.to_string()))?;
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Ended::Broken("etcd closed the watch".into())),
            Err(e) => return Err(Ended::Broken(e.to_string())),
        };
        if resp.compact_revision() > 0 {
            return Err(Ended::Compacted(resp.compact_revision()));
        }
        if resp.canceled() {
            return Err(Ended::Broken(format!(
                "etcd cancelled the watch: {}",
                resp.cancel_reason()
            )));
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            *after = (*after).max(kv.mod_revision());
            let key = String::from_utf8_lossy(kv.key());
            let Some(rest) = key.strip_prefix(prefix) else {
                continue;
            };
            let change = if ev.event_type() == EventType::Put {
                decode(rest, kv.value(), kv.mod_revision(), kv.lease())
            } else {
                // Only a session's end matters (closed, or its replica's lease expired).
                session(rest, false)
            };
            if let Some(change) = change
                && tx.send(change).await.is_err()
            {
                return Ok(());
            }
        }
        // A progress notification (or an event batch) means everything up to the
        // header's revision was delivered.
        if let Some(h) = resp.header() {
            *after = (*after).max(h.revision());
            if tx.send(Change::Caught(*after)).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// `sessions/<replica>/<guest>` as a session change.
fn session(rest: &str, open: bool) -> Option<Change> {
    let (replica, guest) = rest.strip_prefix("sessions/")?.rsplit_once('/')?;
    let guest = GuestId::try_from(guest.parse::<u32>().ok()?).ok()?;
    Some(Change::Session {
        guest,
        replica: replica.to_string(),
        open,
    })
}

/// The change a put of `<dir>/<guest>` means; None for keys the feed does not carry or
/// values it cannot read (logged: another version's record, or damage).
fn decode(rest: &str, value: &[u8], mod_revision: i64, lease: i64) -> Option<Change> {
    let (dir, id) = rest.split_once('/')?;
    match dir {
        "sessions" => return session(rest, true),
        "replicas" => return Some(Change::Replicas),
        "desired" | "reports" | "agents" | "plans" | "plan_reports" | "converge" => {}
        _ => return None,
    }
    let guest = id
        .parse::<u32>()
        .ok()
        .and_then(|n| GuestId::try_from(n).ok())?;
    if dir == "converge" {
        return Some(Change::Pass {
            guest,
            from: String::from_utf8_lossy(value).into_owned(),
        });
    }
    let bad = |e: serde_json::Error| {
        tracing::warn!(key = rest, error = %e, "change feed: unreadable record skipped");
    };
    match dir {
        "desired" => serde_json::from_slice(value)
            .map_err(bad)
            .ok()
            .map(|r| Change::Desired(guest, r)),
        "plans" => serde_json::from_slice(value)
            .map_err(bad)
            .ok()
            .map(|r| Change::Plan(guest, lease, r)),
        "plan_reports" => serde_json::from_slice(value)
            .map_err(bad)
            .ok()
            .map(|r| Change::PlanReport(guest, r)),
        "reports" => serde_json::from_slice::<ReportRecord>(value)
            .map_err(bad)
            .ok()
            .map(|r| {
                Change::Report(
                    guest,
                    ReportRecord {
                        seq: mod_revision as u64,
                        ..r
                    },
                )
            }),
        _ => serde_json::from_slice(value)
            .map_err(bad)
            .ok()
            .map(|r| Change::Agent(guest, r)),
    }
}
