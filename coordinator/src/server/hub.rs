//! Per-guest channels between admin pushes and agent sessions. Each guest has a
//! `watch` for its desired state, so the latest revision always wins and a session
//! opened later still gets it; reports fan out on a broadcast for CLI watchers (a watcher
//! that falls behind it catches up from the store: `report_watch`).

use phoenix_proto::model::{ApplyReport, GuestId};
use phoenix_proto::v1;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};
use tonic::Status;

pub type Pushed = Option<Arc<v1::DesiredState>>;

/// Reports the broadcast holds for watchers that are busy; beyond that a watcher catches
/// up from the store.
const REPORT_BUFFER: usize = 4096;

/// A report as the watchers receive it.
#[derive(Clone, Debug)]
pub struct Published {
    pub guest: GuestId,
    /// The index of its event in the event log (`ReportRecord::event`); 0 for a plan,
    /// which is not recorded, or a report whose event the log refused.
    pub event: u64,
    pub report: Arc<ApplyReport>,
}

struct GuestChannels {
    desired: watch::Sender<Pushed>,
    dry_run: watch::Sender<Pushed>,
    session: Option<u64>,
    /// Bumped by `phoenix converge`: the session asks its agent for a pass.
    run_pass: watch::Sender<u64>,
    /// Every session of this guest opened before `Ended::before` must end with its status.
    ended: watch::Sender<Ended>,
}

/// Why the sessions of a guest opened up to some point were ended (revoke, replaced
/// identity): a threshold rather than a flag, so a session opened after a re-join is
/// not ended by an older revoke.
#[derive(Clone, Default)]
struct Ended {
    before: u64,
    status: Option<Status>,
}

impl GuestChannels {
    fn new() -> Self {
        GuestChannels {
            desired: watch::channel(None).0,
            dry_run: watch::channel(None).0,
            session: None,
            run_pass: watch::channel(0).0,
            ended: watch::channel(Ended::default()).0,
        }
    }
}

/// A session's view of its guest's channels; detaches itself when dropped.
pub struct Attachment {
    pub desired: watch::Receiver<Pushed>,
    pub dry_run: watch::Receiver<Pushed>,
    /// Changes when the operator asks for a pass now (`phoenix converge`).
    pub run_pass: watch::Receiver<u64>,
    pub ended: EndSignal,
    hub: Arc<Hub>,
    guest: GuestId,
    session: u64,
}

/// `attach` refused: the guest already has a live session.
#[derive(Debug, thiserror::Error)]
#[error(
    "guest {guest} already has a live session; a second session with its identity is refused (a cloned guest or a copied key? re-join the other machine with its own token)"
)]
pub struct SessionInUse {
    pub guest: GuestId,
}

/// Tells one session when the coordinator has ended it.
pub struct EndSignal {
    rx: watch::Receiver<Ended>,
    session: u64,
}

impl EndSignal {
    /// Resolves with the status to end this session with once the coordinator has ended
    /// it (the guest was revoked or its identity replaced).
    pub async fn wait(&mut self) -> Status {
        let session = self.session;
        match self.rx.wait_for(|e| e.before > session).await {
            Ok(e) => e
                .status
                .clone()
                .unwrap_or_else(|| Status::permission_denied("session ended by the coordinator")),
            // The hub outlives every session; if it is gone the server is stopping.
            Err(_) => Status::unavailable("coordinator is shutting down"),
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut guests = self.hub.lock();
        if let Some(ch) = guests.get_mut(&self.guest)
            && ch.session == Some(self.session)
        {
            ch.session = None;
        }
    }
}

pub struct Hub {
    guests: Mutex<HashMap<GuestId, GuestChannels>>,
    reports: broadcast::Sender<Published>,
    next_session: std::sync::atomic::AtomicU64,
    /// Reports of this replica between their event and their publication, each under a
    /// floor below its event index (how many per floor): a new watcher starts reading the
    /// event log below every one of them ([`Hub::settled`]).
    pending: Mutex<BTreeMap<u64, usize>>,
}

/// A report in flight, from before its event is recorded until it is published (or
/// failed); dropping it ends that.
pub struct PendingReport {
    hub: Arc<Hub>,
    floor: u64,
}

impl Drop for PendingReport {
    fn drop(&mut self) {
        let mut pending = self.hub.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = pending.get_mut(&self.floor) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&self.floor);
            }
        }
    }
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Self::with_report_buffer(REPORT_BUFFER)
    }

    /// A hub whose report broadcast holds `reports` reports (tests make watchers lag).
    pub fn with_report_buffer(reports: usize) -> Arc<Self> {
        Arc::new(Hub {
            guests: Mutex::new(HashMap::new()),
            reports: broadcast::channel(reports).0,
            next_session: std::sync::atomic::AtomicU64::new(1),
            pending: Mutex::new(BTreeMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GuestId, GuestChannels>> {
        self.guests.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, guest: GuestId, state: v1::DesiredState) {
        let mut guests = self.lock();
        let ch = guests.entry(guest).or_insert_with(GuestChannels::new);
        let target = if state.dry_run {
            &ch.dry_run
        } else {
            &ch.desired
        };
        target.send_replace(Some(Arc::new(state)));
    }

    /// Pushes `state` unless the guest already has this revision or a later one: a
    /// replica hears of its own applies again through the cluster's change feed, and an
    /// older write may arrive after a newer one was pushed.
    pub fn push_newer(&self, guest: GuestId, state: v1::DesiredState) {
        let mut guests = self.lock();
        let ch = guests.entry(guest).or_insert_with(GuestChannels::new);
        ch.desired.send_if_modified(|cur| {
            if cur.as_ref().is_some_and(|c| c.revision >= state.revision) {
                return false;
            }
            *cur = Some(Arc::new(state));
            true
        });
    }

    /// Ends every session attached so far with `status` (this replica lost its store:
    /// the agents should move to a replica that has it).
    pub fn end_all_sessions(&self, status: Status) {
        let connected: Vec<GuestId> = self
            .lock()
            .iter()
            .filter(|(_, c)| c.session.is_some())
            .map(|(g, _)| *g)
            .collect();
        for g in connected {
            self.end_sessions(g, status.clone());
        }
    }

    /// Registers the session of `guest`, or refuses while another session of it is
    /// attached: one identity, one live session. A second holder of the same key (a
    /// cloned guest, a stolen key) must not silently take the guest's desired state and
    /// report stream over; the live one keeps it (docs/design/0012).
    pub fn attach(self: &Arc<Self>, guest: GuestId) -> Result<Attachment, SessionInUse> {
        let session = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut guests = self.lock();
        let ch = guests.entry(guest).or_insert_with(GuestChannels::new);
        if ch.session.is_some() {
            return Err(SessionInUse { guest });
        }
        ch.session = Some(session);
        let mut desired = ch.desired.subscribe();
        desired.mark_changed();
        // A dry run pushed before the agent connected is stale; only later ones count.
        let dry_run = ch.dry_run.subscribe();
        // Like a dry run, a request made before this session is not replayed.
        let run_pass = ch.run_pass.subscribe();
        Ok(Attachment {
            desired,
            dry_run,
            run_pass,
            ended: EndSignal {
                rx: ch.ended.subscribe(),
                session,
            },
            hub: self.clone(),
            guest,
            session,
        })
    }

    /// Ends every session of `guest` attached so far with `status`; sessions attached
    /// later are not affected.
    pub fn end_sessions(&self, guest: GuestId, status: Status) {
        let before = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut guests = self.lock();
        let ch = guests.entry(guest).or_insert_with(GuestChannels::new);
        ch.ended.send_replace(Ended {
            before,
            status: Some(status),
        });
    }

    /// Asks the session of `guest` to have its agent run a pass now; false when it has
    /// no session.
    pub fn request_pass(&self, guest: GuestId) -> bool {
        let guests = self.lock();
        match guests.get(&guest) {
            Some(ch) if ch.session.is_some() => {
                ch.run_pass.send_modify(|n| *n = n.wrapping_add(1));
                true
            }
            _ => false,
        }
    }

    /// Drops the desired state held for `guest` (`phoenix forget`), so a guest enrolled
    /// later under the same id is not sent the forgotten one.
    pub fn forget(&self, guest: GuestId) {
        if let Some(ch) = self.lock().get(&guest) {
            ch.desired.send_replace(None);
            ch.dry_run.send_replace(None);
        }
    }

    pub fn connected(&self, guest: GuestId) -> bool {
        self.lock().get(&guest).is_some_and(|c| c.session.is_some())
    }

    pub fn connected_count(&self) -> usize {
        self.lock().values().filter(|c| c.session.is_some()).count()
    }

    /// `event`: the index of the report's event (`ReportRecord::event`), 0 for a plan.
    pub fn publish_report(&self, guest: GuestId, event: u64, report: Arc<ApplyReport>) {
        let _ = self.reports.send(Published {
            guest,
            event,
            report,
        });
    }

    /// Marks a report of this replica in flight until the guard is dropped (after it is
    /// published). `floor`: the last event index this replica had appended before the
    /// report's event was queued, so below the index the event will get.
    pub fn report_pending(self: &Arc<Self>, floor: u64) -> PendingReport {
        *self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(floor)
            .or_insert(0) += 1;
        PendingReport {
            hub: self.clone(),
            floor,
        }
    }

    /// An event index up to which every report of this replica is published: `last` (the
    /// log's last index, read before calling) or below the first report still in flight.
    /// A report that is published later has a higher index.
    pub fn settled(&self, last: u64) -> u64 {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.keys().next().map_or(last, |&floor| floor.min(last))
    }

    pub fn subscribe_reports(&self) -> broadcast::Receiver<Published> {
        self.reports.subscribe()
    }
}
