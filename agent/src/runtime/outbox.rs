//! The outbox: reports of passes the coordinator has not acknowledged yet, kept in the
//! state directory (`outbox.json`, 0600, written atomically) so a repair the agent made
//! while the coordinator was away, or before a restart, still reaches it, with the time
//! it happened.
//!
//! Bounded by count and size: when full, the oldest reports go, and the next report
//! carries how many were dropped so the coordinator can say so. Each report gets a
//! sequence number that only grows (persisted; a missing file starts from the clock in
//! microseconds, so a wiped outbox does not reuse numbers the coordinator has seen): the
//! session sends everything not yet acknowledged after every reconnect, and the
//! coordinator records a number once.

use crate::state::StateDir;
use phoenix_proto::model::ApplyReport;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Reports kept at most.
pub const MAX_REPORTS: usize = 256;
/// Bytes of JSON kept at most (a report lists every resource with its diff).
pub const MAX_BYTES: usize = 8 << 20;
const FILE: &str = "outbox.json";

/// One report waiting for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// When the pass finished (this guest's clock), unix milliseconds.
    pub finished_unix_ms: i64,
    /// Reports dropped from the full outbox just before this one was added.
    pub dropped_before: u64,
    pub report: ApplyReport,
    /// Size of the entry's JSON, for the byte bound.
    #[serde(skip)]
    bytes: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    next_seq: u64,
    entries: VecDeque<Entry>,
}

pub struct Outbox {
    path: PathBuf,
    inner: Mutex<Saved>,
    /// The seq of the newest entry, so the session wakes up for it.
    newest: watch::Sender<u64>,
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn now_unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(1)
}

fn entry_bytes(e: &Entry) -> usize {
    serde_json::to_vec(e).map_or(0, |v| v.len())
}

impl Outbox {
    /// Reads the outbox of `state`. A file that cannot be read or parsed is set aside
    /// with a logged error (the agent must keep enforcing its state, not stop over a
    /// lost history) and the outbox starts empty.
    pub fn open(state: &StateDir) -> Self {
        let path = state.path(FILE);
        let mut saved = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "outbox unreadable; starting a new one (the reports in it are lost)");
                    Saved::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "outbox unreadable; starting a new one (the reports in it are lost)");
                Saved::default()
            }
        };
        if saved.next_seq == 0 {
            saved.next_seq = now_unix_micros();
        }
        for e in &mut saved.entries {
            e.bytes = entry_bytes(e);
        }
        let newest = saved.entries.back().map_or(0, |e| e.seq);
        Outbox {
            path,
            inner: Mutex::new(saved),
            newest: watch::channel(newest).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Saved> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the report of a pass that just finished; returns its seq.
    pub fn push(&self, report: ApplyReport) -> u64 {
        self.push_at(report, now_unix_ms())
    }

    pub fn push_at(&self, report: ApplyReport, finished_unix_ms: i64) -> u64 {
        let seq = {
            let mut s = self.lock();
            let seq = s.next_seq;
            s.next_seq += 1;
            let mut entry = Entry {
                seq,
                finished_unix_ms,
                dropped_before: 0,
                report,
                bytes: 0,
            };
            entry.bytes = entry_bytes(&entry);
            let mut dropped = 0;
            let mut total: usize = s.entries.iter().map(|e| e.bytes).sum();
            while !s.entries.is_empty()
                && (s.entries.len() >= MAX_REPORTS || total + entry.bytes > MAX_BYTES)
            {
                if let Some(old) = s.entries.pop_front() {
                    total -= old.bytes;
                    // What the dropped one carried is lost with it; count it on.
                    dropped += 1 + old.dropped_before;
                }
            }
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "outbox full while the coordinator is away: dropped the oldest reports"
                );
            }
            entry.dropped_before = dropped;
            s.entries.push_back(entry);
            self.save(&s);
            seq
        };
        self.newest.send_replace(seq);
        seq
    }

    /// Entries with a seq above `after`, oldest first.
    pub fn after(&self, after: u64) -> Vec<Entry> {
        self.lock()
            .entries
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect()
    }

    /// The coordinator has recorded everything up to `seq`: forget it.
    pub fn ack(&self, seq: u64) {
        let mut s = self.lock();
        let before = s.entries.len();
        s.entries.retain(|e| e.seq > seq);
        if s.entries.len() != before {
            self.save(&s);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes whenever a report is added.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }

    /// A failed write keeps the outbox in memory (sent all the same while the agent
    /// runs); only a restart before the next good write loses it.
    fn save(&self, s: &Saved) {
        let r = serde_json::to_vec(s)
            .map_err(std::io::Error::other)
            .and_then(|bytes| phoenix_pki::statedir::write_private(&self.path, &bytes));
        if let Err(e) = r {
            tracing::error!(path = %self.path.display(), error = %e, "cannot save the outbox");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(revision: u64, msg_len: usize) -> ApplyReport {
        ApplyReport {
            revision,
            digest: "d".into(),
            dry_run: false,
            results: vec![phoenix_proto::model::ResourceResult {
                resource: "file:/a".into(),
                status: phoenix_proto::model::Status::Changed,
                message: "x".repeat(msg_len),
                duration_micros: 1,
                diff: String::new(),
            }],
            duration_micros: 1,
            trigger: "drift".into(),
        }
    }

    #[test]
    fn entries_survive_a_restart_until_acknowledged_and_seqs_only_grow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(dir.path()).expect("state");
        let (a, b) = {
            let o = Outbox::open(&state);
            let a = o.push_at(report(1, 1), 1_000);
            let b = o.push_at(report(2, 1), 2_000);
            (a, b)
        };
        assert!(b > a);
        let o = Outbox::open(&state);
        let kept = o.after(0);
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [a, b]);
        assert_eq!(kept[0].finished_unix_ms, 1_000, "the time the pass ran");
        assert_eq!(o.after(a).len(), 1);
        o.ack(a);
        let o = Outbox::open(&state);
        assert_eq!(o.after(0).len(), 1, "the acknowledged one is gone for good");
        assert!(o.push(report(3, 1)) > b, "numbers go on after a restart");
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_says_how_many() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(dir.path()).expect("state");
        let o = Outbox::open(&state);
        for r in 0..(MAX_REPORTS as u64 + 5) {
            o.push_at(report(r, 1), 0);
        }
        let kept = o.after(0);
        assert_eq!(kept.len(), MAX_REPORTS);
        assert_eq!(kept[0].report.revision, 5);
        let told: u64 = kept.iter().map(|e| e.dropped_before).sum();
        assert_eq!(told, 5, "every dropped report is counted once");
        // The byte bound: a few large reports push out the older ones.
        let big = MAX_BYTES / 3;
        for r in 0..3 {
            o.push_at(report(1000 + r, big), 0);
        }
        let kept = o.after(0);
        let bytes: usize = kept.iter().map(entry_bytes).sum();
        assert!(bytes <= MAX_BYTES, "{bytes}");
        assert_eq!(kept.last().map(|e| e.report.revision), Some(1002));
    }

    #[test]
    fn an_unreadable_outbox_starts_empty_instead_of_stopping_the_agent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(dir.path()).expect("state");
        std::fs::write(state.path(FILE), b"{not json").expect("write");
        let o = Outbox::open(&state);
        assert!(o.is_empty());
        o.push(report(1, 1));
        assert_eq!(Outbox::open(&state).len(), 1);
    }
}
