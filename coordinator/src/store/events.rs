//! The event log: what happened, in order, kept for a bounded time. Each event has the
//! shape of Nomad's event stream (index, time, topic, type, key, payload) so the same
//! tools read both; `index` increases strictly in commit order and is never reused, so a
//! reader resumes after the last index it saw, across coordinator restarts.

use super::{LeaderTerm, StoreError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What an event is about; `phoenix events --topic` filters on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Topic {
    /// Join tokens used or refused.
    Enrollment,
    /// Agent sessions opened and ended.
    Session,
    /// Desired states stored and pushed.
    Desired,
    /// Apply reports from agents (per resource), live or sent after an outage.
    Report,
    /// Identity and service certificates issued, renewed, refused; revocations.
    Cert,
    /// The certificate authority's health as the coordinator sees it.
    Ca,
    /// Guests forgotten, passes requested by the operator.
    Guest,
}

impl Topic {
    pub const ALL: [Topic; 7] = [
        Topic::Enrollment,
        Topic::Session,
        Topic::Desired,
        Topic::Report,
        Topic::Cert,
        Topic::Ca,
        Topic::Guest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Enrollment => "Enrollment",
            Topic::Session => "Session",
            Topic::Desired => "Desired",
            Topic::Report => "Report",
            Topic::Cert => "Cert",
            Topic::Ca => "Ca",
            Topic::Guest => "Guest",
        }
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Topic {
    type Err = String;
    /// Case-insensitive, so `--topic report` works.
    fn from_str(s: &str) -> Result<Self, String> {
        Topic::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Topic::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown topic {s:?} (one of {})", names.join(", "))
            })
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log, set by `EventLog::append_event`: strictly increasing, never
    /// reused (not necessarily contiguous).
    pub index: u64,
    /// When the coordinator recorded it, unix milliseconds. A report's payload also
    /// carries when the guest did the work, which may be much earlier.
    pub time_unix_ms: i64,
    pub topic: Topic,
    /// What happened within the topic, e.g. `Enrolled`, `EnrollRefused`, `Applied`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What it concerns: the guest id, or "coordinator"/"ca" for events of the
    /// coordinator itself.
    pub key: String,
    /// The details, a JSON object whose fields depend on topic and type.
    pub payload: serde_json::Value,
}

impl Event {
    /// The event as stored at `index`, encoded without copying it: a fleet's burst is
    /// thousands of events per batch, each with a payload tree.
    pub fn encode_at(&self, index: u64) -> serde_json::Result<Vec<u8>> {
        /// `Event`'s fields by reference, in its order and with its names.
        #[derive(Serialize)]
        struct At<'a> {
            index: u64,
            time_unix_ms: i64,
            topic: Topic,
            #[serde(rename = "type")]
            kind: &'a str,
            key: &'a str,
            payload: &'a serde_json::Value,
        }
        serde_json::to_vec(&At {
            index,
            time_unix_ms: self.time_unix_ms,
            topic: self.topic,
            kind: &self.kind,
            key: &self.key,
            payload: &self.payload,
        })
    }
}

/// How long events are kept: whichever limit is reached first drops the oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Duration,
    pub max_count: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_count: 100_000,
        }
    }
}

impl Retention {
    /// Events older than this (unix ms) are dropped at `now_unix_ms`.
    pub fn cutoff_unix_ms(&self, now_unix_ms: i64) -> i64 {
        let age = i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX);
        now_unix_ms.saturating_sub(age)
    }
}

/// The ends of the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventBounds {
    /// Index of the oldest event still stored (0: none stored).
    pub first: u64,
    /// Highest index ever given (0: none yet); survives pruning.
    pub last: u64,
    /// Events stored now.
    pub count: u64,
}

/// The event log of a store. Separate from `Store` (whose supertrait it is) so each
/// backend keeps its event code in one file.
pub trait EventLog {
    /// Appends `evs` in order under the next indexes (their own `index` is ignored) and
    /// returns those indexes. All or nothing, and durable when it returns: it is the
    /// record of what happened. Batches are what keeps a fleet reporting at once from
    /// costing one disk flush per report.
    fn append_events(&self, evs: &[Event]) -> Result<Vec<u64>, StoreError>;
    /// Up to `limit` events with an index above `after`, oldest first.
    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError>;
    fn event_bounds(&self) -> Result<EventBounds, StoreError>;
    /// Leader-only: drops the oldest events beyond `retention` (age before `now_unix_ms`,
    /// and count); returns how many were dropped. Refused with `NotLeader` once `term`
    /// is over.
    fn prune_events(
        &self,
        term: LeaderTerm,
        retention: &Retention,
        now_unix_ms: i64,
    ) -> Result<u64, StoreError>;
}

/// How many of the oldest events (given in index order by their times) `retention`
/// drops: those older than the cutoff, and then as many more as exceed the count.
pub(super) fn prune_count(
    times: impl Iterator<Item = i64>,
    total: u64,
    retention: &Retention,
    now_unix_ms: i64,
) -> u64 {
    let cutoff = retention.cutoff_unix_ms(now_unix_ms);
    let by_count = total.saturating_sub(retention.max_count);
    // Times are commit times of one clock per replica, so nearly ordered; the age limit
    // stops at the first event young enough rather than scanning the whole log.
    let mut by_age = 0;
    for t in times {
        if t >= cutoff {
            break;
        }
        by_age += 1;
    }
    by_age.max(by_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_case_insensitively_and_unknown_ones_name_the_choices() {
        assert_eq!("report".parse::<Topic>(), Ok(Topic::Report));
        assert_eq!("CA".parse::<Topic>(), Ok(Topic::Ca));
        let err = "reports".parse::<Topic>().expect_err("unknown");
        assert!(err.contains("Enrollment, Session"), "{err}");
    }

    #[test]
    fn prune_drops_by_age_then_by_count() {
        let r = Retention {
            max_age: Duration::from_secs(10),
            max_count: 3,
        };
        let now = 100_000;
        // Two too old, five in all: age drops 2, count would drop 2.
        let times = [80_000, 85_000, 95_000, 96_000, 97_000];
        assert_eq!(prune_count(times.into_iter(), 5, &r, now), 2);
        // Nothing old, but six events: count drops 3.
        let times = [99_000; 6];
        assert_eq!(prune_count(times.into_iter(), 6, &r, now), 3);
        assert_eq!(prune_count(std::iter::empty(), 0, &r, now), 0);
    }

    #[test]
    fn events_serialize_in_the_nomad_shape() {
        let ev = Event {
            index: 7,
            time_unix_ms: 1,
            topic: Topic::Session,
            kind: "SessionOpened".into(),
            key: "101".into(),
            payload: serde_json::json!({"peer": "10.0.0.5:4000"}),
        };
        let json = serde_json::to_value(&ev).expect("encode");
        assert_eq!(json["type"], "SessionOpened");
        assert_eq!(json["topic"], "Session");
        let back: Event = serde_json::from_value(json).expect("decode");
        assert_eq!(back, ev);
    }

    /// What the stores write: the event as if its index were the given one, byte for byte.
    #[test]
    fn an_event_encoded_at_an_index_is_the_event_with_that_index() {
        let ev = Event {
            index: 0,
            time_unix_ms: 5,
            topic: Topic::Report,
            kind: "Applied".into(),
            key: "7".into(),
            payload: serde_json::json!({"revision": 3, "results": [{"resource": "file:/a"}]}),
        };
        let at = ev.encode_at(42).expect("encode");
        let whole = serde_json::to_vec(&Event { index: 42, ..ev }).expect("encode");
        assert_eq!(at, whole);
    }
}
