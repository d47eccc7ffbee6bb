//! Per-guest channels between admin pushes and agent sessions. Each guest has one
//! `watch` for its desired state (and its dry runs, pass requests and the end of its
//! sessions), so the latest revision always wins and a session
//! opened later still gets it; reports fan out on a broadcast for CLI watchers (a watcher
//! that falls behind it catches up from the store: `report_watch`).
//!
//! In a cluster (docs/design/0010) the hub also holds what this replica knows of the
//! others, fed by `cluster::feed` from etcd: which guests have a session on another
//! replica (so "connected" is cluster-wide), the replica addresses agents are told, and
//! the plans forwarded here whose reports go back through etcd.

use phoenix_proto::model::{ApplyReport, GuestId};
use phoenix_proto::v1;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
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
    /// Everything a session of this guest follows, in one `watch`: a watch channel costs
    /// about 350 bytes whatever it carries, and a coordinator keeps one per guest.
    signals: watch::Sender<Signals>,
    session: Option<u64>,
}

/// What the sessions of one guest follow. Each field keeps its own rule: the latest
/// desired state wins and is sent to a session that opens later; a dry run or a pass
/// request is only sent to sessions open when it was made; `ended` ends the sessions
/// opened before its threshold.
#[derive(Default)]
struct Signals {
    desired: Pushed,
    /// Bumped whenever `desired` is replaced (a push, `forget`), so a session sends each
    /// state once without holding on to the last one it sent.
    desired_seq: u64,
    dry_run: Pushed,
    /// Like `desired_seq`, for `dry_run`.
    dry_run_seq: u64,
    /// Bumped by `phoenix converge`: the session asks its agent for a pass.
    run_pass: u64,
    /// Every session of this guest opened before `Ended::before` must end with its status.
    ended: Ended,
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
            signals: watch::channel(Signals::default()).0,
            session: None,
        }
    }
}

/// What a session is to do next, from [`Attachment::next`].
pub enum Signal {
    /// The coordinator ended the session (the guest was revoked, its identity replaced,
    /// or the coordinator is stopping): end the stream with this status.
    Ended(Status),
    /// Send this desired state (a dry run when its `dry_run` is set).
    Desired(Arc<v1::DesiredState>),
    /// Ask the agent for a pass now (`phoenix converge`), with this nonce.
    RunPass(u64),
}

/// A session's view of its guest's channels; detaches itself when dropped.
pub struct Attachment {
    pub signals: SessionSignals,
    /// The cluster's replica addresses, marked changed at attach when known: the session
    /// tells its agent, which keeps them for failover.
    pub replicas: watch::Receiver<Arc<Vec<String>>>,
    hub: Arc<Hub>,
    guest: GuestId,
}

/// What one session has taken from its guest's [`Signals`].
pub struct SessionSignals {
    rx: watch::Receiver<Signals>,
    session: u64,
    /// `desired_seq` of the last desired state handled; None until the first, so a
    /// session is sent the state pushed before it opened.
    desired_seen: Option<u64>,
    dry_run_seen: u64,
    run_pass_seen: u64,
}

impl SessionSignals {
    /// Waits for what the session is to do next. The end of the session comes first;
    /// a desired state pushed twice before the session took it is sent once, the latest.
    /// Cancel-safe: nothing is marked handled until it is returned.
    pub async fn next(&mut self) -> Signal {
        loop {
            if let Some(s) = self.pending() {
                return s;
            }
            if self.rx.changed().await.is_err() {
                // The hub outlives every session; if it is gone the server is stopping.
                return Signal::Ended(Status::unavailable("coordinator is shutting down"));
            }
        }
    }

    fn pending(&mut self) -> Option<Signal> {
        let s = self.rx.borrow_and_update();
        if s.ended.before > self.session {
            return Some(Signal::Ended(s.ended.status.clone().unwrap_or_else(|| {
                Status::permission_denied("session ended by the coordinator")
            })));
        }
        if self.desired_seen != Some(s.desired_seq) {
            self.desired_seen = Some(s.desired_seq);
            if let Some(d) = &s.desired {
                return Some(Signal::Desired(d.clone()));
            }
        }
        if self.dry_run_seen != s.dry_run_seq {
            self.dry_run_seen = s.dry_run_seq;
            if let Some(d) = &s.dry_run {
                return Some(Signal::Desired(d.clone()));
            }
        }
        if self.run_pass_seen != s.run_pass {
            self.run_pass_seen = s.run_pass;
            return Some(Signal::RunPass(s.run_pass));
        }
        None
    }
}

/// `attach` refused: the guest already has a live session, here or (`holder`) on
/// another replica of the cluster.
#[derive(Debug, thiserror::Error)]
#[error(
    "guest {guest} already has a live session{}; a second session with its identity is refused (a cloned guest or a copied key? re-join the other machine with its own token)",
    .holder.as_deref().map(|r| format!(" on coordinator replica {r}")).unwrap_or_default()
)]
pub struct SessionInUse {
    pub guest: GuestId,
    pub holder: Option<String>,
}

/// What etcd said when this replica claimed a guest's session (one live session per
/// identity across the cluster, docs/design/0012).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The guest's holder key is this replica's, under its lease: the session may open.
    Held,
    /// Another replica holds a session of the guest, under its live lease.
    HeldBy(String),
    /// etcd could not be asked (or this replica is stopping).
    Failed(String),
}

/// A claim on a guest's session, answered by the cluster's session registration.
pub type Claim = (GuestId, oneshot::Sender<Claimed>);

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut guests = self.hub.lock();
        if let Some(ch) = guests.get_mut(&self.guest)
            && ch.session == Some(self.signals.session)
        {
            ch.session = None;
            drop(guests);
            self.hub
                .sessions_changed
                .send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// A plan report to send back through etcd: the guest, the etcd lease its plan came
/// under (the report lives no longer than the plan), the report.
pub type PlanReport = (GuestId, i64, Arc<ApplyReport>);

/// What this replica knows of the cluster (all empty for a single coordinator).
#[derive(Default)]
struct ClusterView {
    /// This replica's name, once it runs as one.
    me: Option<String>,
    /// Guests with a session on another replica, and which (two during a move, or for a
    /// guest whose identity is held twice).
    remote: HashMap<GuestId, BTreeSet<String>>,
    /// Plans forwarded to this replica through etcd, not answered yet: the lease each
    /// came under. One report per plan goes back, so a guest cannot fill etcd.
    plans: HashMap<GuestId, i64>,
    /// Where plan reports of forwarded plans go (the cluster's plan writer).
    plan_reports: Option<mpsc::UnboundedSender<PlanReport>>,
    /// Where session claims go (the cluster's session registration); None: a single
    /// coordinator, where `attach` alone decides.
    claims: Option<mpsc::UnboundedSender<Claim>>,
}

pub struct Hub {
    guests: Mutex<HashMap<GuestId, GuestChannels>>,
    reports: broadcast::Sender<Published>,
    next_session: std::sync::atomic::AtomicU64,
    /// Bumped when a session attaches or detaches here (the cluster registers them).
    sessions_changed: watch::Sender<u64>,
    /// Every replica's agent address, sent to agents so they learn replicas added
    /// after they joined; empty for a single coordinator.
    replicas: watch::Sender<Arc<Vec<String>>>,
    cluster: Mutex<ClusterView>,
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
            sessions_changed: watch::channel(0).0,
            replicas: watch::channel(Arc::new(Vec::new())).0,
            cluster: Mutex::new(ClusterView::default()),
            pending: Mutex::new(BTreeMap::new()),
        })
    }

    fn view(&self) -> std::sync::MutexGuard<'_, ClusterView> {
        self.cluster.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GuestId, GuestChannels>> {
        self.guests.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, guest: GuestId, state: v1::DesiredState) {
        let mut guests = self.lock();
        let ch = guests.entry(guest).or_insert_with(GuestChannels::new);
        ch.signals.send_modify(|s| {
            if state.dry_run {
                s.dry_run = Some(Arc::new(state));
                s.dry_run_seq += 1;
            } else {
                s.desired = Some(Arc::new(state));
                s.desired_seq += 1;
            }
        });
    }

    /// Pushes `state` unless the guest already has this revision or a later one: a
    /// replica hears of its own applies again through the cluster's change feed, and an
    /// older write may arrive after a newer one was pushed.
    pub fn push_newer(&self, guest: GuestId, state: v1::DesiredState) {
        let mut guests = self.lock();
        let ch = guests.entry(guest).or_insert_with(GuestChannels::new);
        ch.signals.send_if_modified(|s| {
            if s.desired
                .as_ref()
                .is_some_and(|c| c.revision >= state.revision)
            {
                return false;
            }
            s.desired = Some(Arc::new(state));
            s.desired_seq += 1;
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
            return Err(SessionInUse {
                guest,
                holder: None,
            });
        }
        ch.session = Some(session);
        self.sessions_changed
            .send_modify(|n| *n = n.wrapping_add(1));
        let signals = ch.signals.subscribe();
        let (dry_run_seen, run_pass_seen) = {
            let s = signals.borrow();
            // A dry run pushed before the agent connected is stale; only later ones
            // count. Like a dry run, a pass request made before this session is not
            // replayed. The desired state is (`desired_seen` starts empty).
            (s.dry_run_seq, s.run_pass)
        };
        let mut replicas = self.replicas.subscribe();
        if !replicas.borrow().is_empty() {
            replicas.mark_changed();
        }
        Ok(Attachment {
            signals: SessionSignals {
                rx: signals,
                session,
                desired_seen: None,
                dry_run_seen,
                run_pass_seen,
            },
            replicas,
            hub: self.clone(),
            guest,
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
        ch.signals.send_modify(|s| {
            s.ended = Ended {
                before,
                status: Some(status),
            };
        });
    }

    /// Asks the session of `guest` to have its agent run a pass now; false when it has
    /// no session.
    pub fn request_pass(&self, guest: GuestId) -> bool {
        let guests = self.lock();
        match guests.get(&guest) {
            Some(ch) if ch.session.is_some() => {
                ch.signals
                    .send_modify(|s| s.run_pass = s.run_pass.wrapping_add(1));
                true
            }
            _ => false,
        }
    }

    /// Drops the desired state held for `guest` (`phoenix forget`), so a guest enrolled
    /// later under the same id is not sent the forgotten one.
    pub fn forget(&self, guest: GuestId) {
        if let Some(ch) = self.lock().get(&guest) {
            ch.signals.send_modify(|s| {
                s.desired = None;
                s.desired_seq += 1;
                s.dry_run = None;
                s.dry_run_seq += 1;
            });
        }
    }

    /// Whether `guest` has a session on this replica or, in a cluster, on another one.
    pub fn connected(&self, guest: GuestId) -> bool {
        self.connected_here(guest) || self.view().remote.contains_key(&guest)
    }

    /// Whether `guest` has a session on this replica.
    pub fn connected_here(&self, guest: GuestId) -> bool {
        self.lock().get(&guest).is_some_and(|c| c.session.is_some())
    }

    /// The replica holding the session of `guest`: this one first; None when it has no
    /// session anywhere, or when this coordinator is not a cluster replica.
    pub fn holder(&self, guest: GuestId) -> Option<String> {
        let here = self.connected_here(guest);
        let view = self.view();
        match (&view.me, here) {
            (Some(me), true) => Some(me.clone()),
            _ => view.remote.get(&guest)?.first().cloned(),
        }
    }

    /// Sessions on this replica.
    pub fn connected_count(&self) -> usize {
        self.lock().values().filter(|c| c.session.is_some()).count()
    }

    /// The guests with a session on this replica.
    pub fn sessions_here(&self) -> Vec<GuestId> {
        self.lock()
            .iter()
            .filter(|(_, c)| c.session.is_some())
            .map(|(g, _)| *g)
            .collect()
    }

    /// Changes whenever a session attaches or detaches here.
    pub fn watch_sessions(&self) -> watch::Receiver<u64> {
        self.sessions_changed.subscribe()
    }

    /// `event`: the index of the report's event (`ReportRecord::event`), 0 for a plan. A plan
    /// that reached this replica through etcd is answered through etcd (every replica's
    /// watchers get it from there), once.
    pub fn publish_report(&self, guest: GuestId, event: u64, report: Arc<ApplyReport>) {
        if event == 0 && report.dry_run {
            let mut view = self.view();
            if let Some(tx) = view.plan_reports.clone()
                && let Some(lease) = view.plans.remove(&guest)
            {
                drop(view);
                if tx.send((guest, lease, report.clone())).is_ok() {
                    return;
                }
            }
        }
        self.publish_local(guest, event, report);
    }

    /// To this replica's report watchers only (what the cluster feed delivers).
    pub fn publish_local(&self, guest: GuestId, event: u64, report: Arc<ApplyReport>) {
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

    /// Runs this hub as replica `me` of a cluster: plan reports of forwarded plans go to
    /// `plan_reports`, session claims to `claims`.
    pub fn join_cluster(
        &self,
        me: &str,
        plan_reports: mpsc::UnboundedSender<PlanReport>,
        claims: mpsc::UnboundedSender<Claim>,
    ) {
        let mut view = self.view();
        view.me = Some(me.to_string());
        view.plan_reports = Some(plan_reports);
        view.claims = Some(claims);
    }

    /// Claims the session of `guest`, attached here, for this replica across the
    /// cluster. Claims from many sessions opening at once go to etcd together (a few
    /// transactions, not one round trip each). A single coordinator holds every session
    /// it attached.
    pub async fn claim(&self, guest: GuestId) -> Claimed {
        let Some(tx) = self.view().claims.clone() else {
            return Claimed::Held;
        };
        let stopping = || Claimed::Failed("this coordinator replica is stopping".into());
        let (reply, answer) = oneshot::channel();
        if tx.send((guest, reply)).is_err() {
            return stopping();
        }
        answer.await.unwrap_or_else(|_| stopping())
    }

    /// Whether `replica` (another one) is known here to hold a session of `guest`.
    pub fn held_by(&self, guest: GuestId, replica: &str) -> bool {
        self.view()
            .remote
            .get(&guest)
            .is_some_and(|set| set.contains(replica))
    }

    /// Records that `replica` (another one) opened or closed a session of `guest`.
    pub fn remote_session(&self, guest: GuestId, replica: &str, open: bool) {
        let mut view = self.view();
        if view.me.as_deref() == Some(replica) {
            return;
        }
        if open {
            view.remote
                .entry(guest)
                .or_default()
                .insert(replica.to_string());
        } else if let Some(set) = view.remote.get_mut(&guest) {
            set.remove(replica);
            if set.is_empty() {
                view.remote.remove(&guest);
            }
        }
    }

    /// Replaces what is known of other replicas' sessions (after re-reading etcd).
    pub fn reset_remote_sessions(&self, all: Vec<(GuestId, String)>) {
        let mut view = self.view();
        let me = view.me.clone();
        view.remote.clear();
        for (g, r) in all {
            if me.as_deref() != Some(r.as_str()) {
                view.remote.entry(g).or_default().insert(r);
            }
        }
    }

    /// A plan forwarded through etcd under `lease`: pushed to the guest's session if it
    /// is here (its report then goes back through etcd); ignored otherwise.
    pub fn forwarded_plan(&self, guest: GuestId, lease: i64, state: v1::DesiredState) {
        if !self.connected_here(guest) {
            return;
        }
        self.view().plans.insert(guest, lease);
        self.push(guest, state);
    }

    /// Sets the replica addresses agents are told (unchanged lists are not re-sent).
    pub fn set_replicas(&self, addrs: Vec<String>) {
        self.replicas.send_if_modified(|cur| {
            if **cur == addrs {
                return false;
            }
            *cur = Arc::new(addrs);
            true
        });
    }

    pub fn subscribe_reports(&self) -> broadcast::Receiver<Published> {
        self.reports.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(n: u32) -> GuestId {
        GuestId::try_from(n).expect("guest id")
    }

    fn plan_report() -> Arc<ApplyReport> {
        Arc::new(ApplyReport {
            revision: 0,
            digest: "d".into(),
            dry_run: true,
            results: Vec::new(),
            duration_micros: 1,
            trigger: "push".into(),
        })
    }

    fn state(revision: u64, dry_run: bool) -> v1::DesiredState {
        v1::DesiredState {
            revision,
            dry_run,
            ..Default::default()
        }
    }

    /// What the session would send now: (kind, revision or nonce).
    fn next_now(a: &mut Attachment) -> Option<(&'static str, u64)> {
        a.signals.pending().map(|s| match s {
            Signal::Ended(_) => ("ended", 0),
            Signal::Desired(d) if d.dry_run => ("dry_run", d.revision),
            Signal::Desired(d) => ("desired", d.revision),
            Signal::RunPass(n) => ("run_pass", n),
        })
    }

    #[test]
    fn a_session_gets_the_latest_desired_state_and_only_later_dry_runs_and_pass_requests() {
        let hub = Hub::new();
        hub.push(g(1), state(1, false));
        hub.push(g(1), state(2, false));
        hub.push(g(1), state(2, true));
        let mut a = hub.attach(g(1)).expect("attach");
        // Pushed before the session: the latest desired state only, no stale dry run.
        assert_eq!(next_now(&mut a), Some(("desired", 2)));
        assert_eq!(next_now(&mut a), None);
        assert!(hub.request_pass(g(1)));
        hub.push(g(1), state(3, true));
        hub.push(g(1), state(3, false));
        hub.push(g(1), state(4, false));
        // Latest desired wins; each kind once, the end of the session before the rest.
        hub.end_sessions(g(1), Status::permission_denied("revoked"));
        assert_eq!(next_now(&mut a), Some(("ended", 0)));
        drop(a);
        let mut b = hub.attach(g(1)).expect("attach after the end");
        assert_eq!(next_now(&mut b), Some(("desired", 4)));
        assert_eq!(
            next_now(&mut b),
            None,
            "an older end does not end a later session"
        );
        hub.push(g(1), state(5, true));
        assert!(hub.request_pass(g(1)));
        hub.push(g(1), state(5, false));
        assert_eq!(next_now(&mut b), Some(("desired", 5)));
        assert_eq!(next_now(&mut b), Some(("dry_run", 5)));
        assert_eq!(next_now(&mut b), Some(("run_pass", 2)));
        assert_eq!(next_now(&mut b), None);
        // An older revision heard again through the change feed is not pushed.
        hub.push_newer(g(1), state(4, false));
        assert_eq!(next_now(&mut b), None);
        hub.push_newer(g(1), state(6, false));
        assert_eq!(next_now(&mut b), Some(("desired", 6)));
        // Forgotten: nothing to send, to this session or a later one.
        hub.forget(g(1));
        assert_eq!(next_now(&mut b), None);
        drop(b);
        let mut c = hub.attach(g(1)).expect("attach after forget");
        assert_eq!(next_now(&mut c), None);
    }

    #[tokio::test]
    async fn next_waits_for_a_signal() {
        let hub = Hub::new();
        let mut a = hub.attach(g(1)).expect("attach");
        let h = hub.clone();
        let waiting = tokio::spawn(async move {
            match a.signals.next().await {
                Signal::Desired(d) => d.revision,
                _ => 0,
            }
        });
        tokio::task::yield_now().await;
        h.push(g(1), state(7, false));
        assert_eq!(waiting.await.expect("session task"), 7);
    }

    #[test]
    fn connected_is_cluster_wide_and_names_the_replica() {
        let hub = Hub::new();
        let (tx, _rx) = mpsc::unbounded_channel();
        hub.join_cluster("r0", tx, mpsc::unbounded_channel().0);
        let _here = hub.attach(g(1)).expect("attach");
        hub.remote_session(g(2), "r1", true);
        // This replica's own registrations come back through the feed: the hub knows.
        hub.remote_session(g(1), "r0", true);
        hub.remote_session(g(3), "r2", true);
        hub.remote_session(g(3), "r2", false);
        assert_eq!(hub.holder(g(1)).as_deref(), Some("r0"));
        assert_eq!(hub.holder(g(2)).as_deref(), Some("r1"));
        assert!(hub.connected(g(2)) && !hub.connected_here(g(2)));
        assert!(!hub.connected(g(3)) && hub.holder(g(3)).is_none());
        hub.reset_remote_sessions(vec![(g(3), "r2".into()), (g(1), "r0".into())]);
        assert!(!hub.connected(g(2)) && hub.connected(g(3)));
        assert_eq!(hub.holder(g(1)).as_deref(), Some("r0"));
    }

    #[tokio::test]
    async fn a_claim_is_decided_by_the_cluster_and_a_single_coordinator_holds_every_session() {
        let hub = Hub::new();
        assert_eq!(hub.claim(g(1)).await, Claimed::Held);
        let (claims, mut asked) = mpsc::unbounded_channel();
        hub.join_cluster("r0", mpsc::unbounded_channel().0, claims);
        let h = hub.clone();
        let waiting = tokio::spawn(async move { h.claim(g(2)).await });
        let (guest, reply) = asked.recv().await.expect("the claim reaches the cluster");
        assert_eq!(guest, g(2));
        reply
            .send(Claimed::HeldBy("r1".into()))
            .expect("claim waiting");
        assert_eq!(
            waiting.await.expect("claim task"),
            Claimed::HeldBy("r1".into())
        );
        // The registration loop gone (stopping): refused, not held.
        drop(asked);
        assert!(matches!(hub.claim(g(3)).await, Claimed::Failed(_)));
        let refused = SessionInUse {
            guest: g(2),
            holder: Some("r1".into()),
        };
        assert!(
            refused
                .to_string()
                .starts_with("guest 2 already has a live session on coordinator replica r1;"),
            "{refused}"
        );
    }

    #[test]
    fn a_forwarded_plan_is_answered_through_etcd_once() {
        let hub = Hub::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        hub.join_cluster("r0", tx, mpsc::unbounded_channel().0);
        let mut local = hub.subscribe_reports();
        // Not connected here: nothing pushed, nothing owed.
        hub.forwarded_plan(g(5), 7, v1::DesiredState::default());
        let _s = hub.attach(g(5)).expect("attach");
        hub.forwarded_plan(g(5), 9, v1::DesiredState::default());
        for _ in 0..3 {
            hub.publish_report(g(5), 0, plan_report());
        }
        let (guest, lease, _) = rx.try_recv().expect("one plan report returned");
        assert_eq!((guest, lease), (g(5), 9));
        assert!(rx.try_recv().is_err(), "only one per plan goes to etcd");
        // The others stay local, as on a single coordinator.
        assert!(local.try_recv().is_ok() && local.try_recv().is_ok());
        assert!(local.try_recv().is_err());
    }
}
