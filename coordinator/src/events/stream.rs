//! The admin `Events` stream: stored events after an index, oldest first, filtered by
//! guest and topic; with `follow`, then every new event as it is recorded.
//!
//! Level-triggered on the store: a follower re-reads the log after the last index it
//! sent whenever this replica records an event, and at least every second (events
//! recorded by another replica sharing an etcd store wake no one here). So a slow reader
//! never loses an event that is still retained, and a client that reconnects with
//! `since` = the last index it printed gets exactly what followed.

use super::Recorder;
use crate::store::{Event, Topic};
use phoenix_proto::model::GuestId;
use phoenix_proto::v1;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

/// Events read from the store at once.
const PAGE: usize = 512;
/// A follower looks at the store at least this often.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("events filter: {0}")]
    Topic(String),
    #[error("events filter: guest {raw}: {reason}")]
    Guest { raw: u32, reason: String },
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since: u64,
    pub follow: bool,
    /// Keys (guest ids as text); empty: every key.
    pub keys: HashSet<String>,
    /// Empty: every topic.
    pub topics: HashSet<Topic>,
}

impl TryFrom<v1::EventsRequest> for Filter {
    type Error = FilterError;
    fn try_from(r: v1::EventsRequest) -> Result<Self, FilterError> {
        let keys = r
            .guest_ids
            .into_iter()
            .map(|raw| {
                GuestId::try_from(raw)
                    .map(|g| g.to_string())
                    .map_err(|e| FilterError::Guest {
                        raw,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        let topics = r
            .topics
            .iter()
            .map(|t| t.parse::<Topic>().map_err(FilterError::Topic))
            .collect::<Result<_, _>>()?;
        Ok(Filter {
            since: r.since,
            follow: r.follow,
            keys,
            topics,
        })
    }
}

impl Filter {
    pub fn matches(&self, ev: &Event) -> bool {
        (self.keys.is_empty() || self.keys.contains(&ev.key))
            && (self.topics.is_empty() || self.topics.contains(&ev.topic))
    }
}

pub fn message(ev: &Event) -> v1::EventMessage {
    v1::EventMessage {
        index: ev.index,
        time_unix_ms: ev.time_unix_ms,
        topic: ev.topic.to_string(),
        r#type: ev.kind.clone(),
        key: ev.key.clone(),
        payload_json: ev.payload.to_string(),
    }
}

/// Sends what `filter` selects to `tx` until the log is read (or, following, until the
/// receiver goes away). A store error is sent as the stream's last item.
pub async fn run(
    rec: Arc<Recorder>,
    filter: Filter,
    tx: mpsc::Sender<Result<v1::EventMessage, Status>>,
) {
    // Subscribed before the first read, so an event recorded in between wakes us.
    let mut wake = rec.subscribe();
    let mut after = filter.since;
    loop {
        loop {
            let page = match rec.store().events_since(after, PAGE) {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(crate::server::RpcError::from(e).into())).await;
                    return;
                }
            };
            for ev in &page {
                after = ev.index;
                if filter.matches(ev) && tx.send(Ok(message(ev))).await.is_err() {
                    return;
                }
            }
            if page.len() < PAGE {
                break;
            }
        }
        if !filter.follow {
            return;
        }
        tokio::select! {
            r = wake.changed() => if r.is_err() { return },
            () = tokio::time::sleep(POLL) => {}
            () = tx.closed() => return,
        }
    }
}
