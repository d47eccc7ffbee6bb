//! `phoenix events`: the event log, one readable line per event, or with `-o json` one
//! JSON object per line (index, time, topic, type, key, payload: the shape of Nomad's
//! event stream). `--since INDEX` resumes after the last index a reader saw, also across
//! coordinator restarts; `--follow` keeps printing new events.

use super::CliError;
use super::args::Output;
use super::render::escape_controls;
use crate::admin_client;
use crate::store::Topic;
use phoenix_proto::model::GuestId;
use phoenix_proto::v1;
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// What `phoenix events` asks for.
pub(super) struct Query {
    pub since: u64,
    pub follow: bool,
    pub guests: Vec<GuestId>,
    pub topics: Vec<Topic>,
}

impl Query {
    pub(super) fn request(&self) -> v1::EventsRequest {
        v1::EventsRequest {
            since: self.since,
            follow: self.follow,
            guest_ids: self.guests.iter().map(|g| g.get()).collect(),
            topics: self.topics.iter().map(|t| t.to_string()).collect(),
        }
    }
}

pub(super) async fn events(socket: &Path, q: Query, output: Output) -> Result<(), CliError> {
    let mut admin = admin_client::connect(socket).await?;
    let mut stream = admin.events(q.request()).await?.into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(m) = stream.message().await? {
        let line = match output {
            Output::Json => json(&m).to_string(),
            Output::Table | Output::Wide => line(&m),
        };
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Unix milliseconds as RFC 3339 in UTC, e.g. 2026-12-02T09:22:36.123Z.
pub(super) fn rfc3339(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_ms.to_string())
}

pub(super) fn payload(m: &v1::EventMessage) -> Value {
    serde_json::from_str(&m.payload_json).unwrap_or(Value::Null)
}

/// The NDJSON form.
pub(super) fn json(m: &v1::EventMessage) -> Value {
    serde_json::json!({
        "index": m.index,
        "time": rfc3339(m.time_unix_ms),
        "topic": m.topic,
        "type": m.r#type,
        "key": m.key,
        "payload": payload(m),
    })
}

fn s<'a>(p: &'a Value, k: &str) -> &'a str {
    p[k].as_str().unwrap_or("")
}

fn n(p: &Value, k: &str) -> u64 {
    p[k].as_u64().unwrap_or(0)
}

/// What a report event says in a few words: revision, trigger, counts, when the guest
/// did it and, for failures, which resources and why.
pub(super) fn report_summary(p: &Value) -> String {
    let mut counts = Vec::new();
    for k in ["changed", "failed", "skipped", "unchanged"] {
        if n(p, k) > 0 {
            counts.push(format!("{} {k}", n(p, k)));
        }
    }
    let mut out = format!(
        "r{} {}: {}",
        n(p, "revision"),
        s(p, "trigger"),
        if counts.is_empty() {
            "no resources".to_string()
        } else {
            counts.join(", ")
        }
    );
    let done = p["done_unix_ms"].as_i64().unwrap_or(0);
    let received = p["received_unix_ms"].as_i64().unwrap_or(0);
    if p["while_disconnected"].as_bool() == Some(true) {
        out.push_str(&format!(
            "; done {} while disconnected, reported {}s later",
            rfc3339(done),
            (received - done) / 1000
        ));
    }
    let failed: Vec<String> = p["results"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter(|r| r["status"] == "failed")
                .map(|r| format!("{}: {}", s(r, "resource"), s(r, "message")))
                .collect()
        })
        .unwrap_or_default();
    if !failed.is_empty() {
        out.push_str(&format!("; failed {}", failed.join("; ")));
    }
    out
}

/// The readable one-line form; everything from the payload is escaped (a guest's words).
pub(super) fn line(m: &v1::EventMessage) -> String {
    let p = payload(m);
    let what = match m.r#type.as_str() {
        "Applied" | "ApplyFailed" => report_summary(&p),
        "Enrolled" => format!(
            "identity {} from {}{}",
            s(&p, "serial"),
            s(&p, "peer"),
            if p["replaced"].as_bool() == Some(true) {
                " (replaced the previous one)"
            } else {
                ""
            }
        ),
        "EnrollRefused" | "SessionRefused" => {
            format!("from {}: {}", s(&p, "peer"), s(&p, "error"))
        }
        "SessionOpened" => format!(
            "from {}, agent {}, applied r{}",
            s(&p, "peer"),
            s(&p, "agent_version"),
            n(&p, "applied_revision")
        ),
        "SessionEnded" => format!("{} after {}s", s(&p, "why"), n(&p, "seconds")),
        "DesiredPushed" => {
            let diff: Vec<&str> = p["diff"]
                .as_array()
                .map(|d| d.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!(
                "r{} ({}){}",
                n(&p, "revision"),
                if p["connected"].as_bool() == Some(true) {
                    "connected"
                } else {
                    "not connected"
                },
                if diff.is_empty() {
                    String::new()
                } else {
                    format!(": {}", diff.join(", "))
                }
            )
        }
        "GuestForgotten" => {
            let removed: Vec<&str> = p["removed"]
                .as_array()
                .map(|d| d.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!("removed {}", removed.join(", "))
        }
        _ => p.to_string(),
    };
    let key = match m.key.parse::<u32>() {
        Ok(_) => format!("guest {}", m.key),
        Err(_) => m.key.clone(),
    };
    escape_controls(&format!(
        "{} #{} {}/{} {key}: {what}",
        rfc3339(m.time_unix_ms),
        m.index,
        m.topic,
        m.r#type
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, payload: Value) -> v1::EventMessage {
        v1::EventMessage {
            index: 42,
            time_unix_ms: 1_764_667_356_123,
            topic: "Report".into(),
            r#type: kind.into(),
            key: "101".into(),
            payload_json: payload.to_string(),
        }
    }

    #[test]
    fn a_failed_offline_pass_reads_as_one_line_with_its_time_and_reasons() {
        let m = ev(
            "ApplyFailed",
            serde_json::json!({
                "revision": 3, "trigger": "drift", "changed": 1, "failed": 1,
                "done_unix_ms": 1_764_667_000_000_i64, "received_unix_ms": 1_764_667_356_000_i64,
                "while_disconnected": true,
                "results": [
                    {"resource": "file:/a", "status": "changed"},
                    {"resource": "service:web", "status": "failed", "message": "unit failed\n\x1b[2J"}
                ]
            }),
        );
        let l = line(&m);
        assert!(l.starts_with("2025-12-02T09:22:36.123Z #42 Report/ApplyFailed guest 101: r3 drift: 1 changed, 1 failed"), "{l}");
        assert!(
            l.contains("done 2025-12-02T09:16:40Z while disconnected, reported 356s later"),
            "{l}"
        );
        assert!(
            l.contains("failed service:web: unit failed\\n\\u{1b}[2J"),
            "escaped: {l}"
        );
        assert!(!l.contains('\n'));
        let j = json(&m);
        assert_eq!(j["index"], 42);
        assert_eq!(j["time"], "2025-12-02T09:22:36.123Z");
        assert_eq!(j["payload"]["revision"], 3);
    }
}
