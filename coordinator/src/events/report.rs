//! The payload of a report event: per-resource results and when the guest did the work.
//! Bounded, because a report is the guest's own words and a log entry must stay small
//! (etcd caps a value at 1 MiB): long messages and diffs are cut, and unchanged resources
//! are listed by name only.

use phoenix_proto::model::{ApplyReport, ResourceResult, Status};
use serde_json::{Value, json};

/// Longest message or diff kept per resource.
const MAX_TEXT_CHARS: usize = 2048;
/// Most resources listed; a larger report keeps its counts and the first ones.
const MAX_RESULTS: usize = 500;

fn cut(s: &str) -> String {
    if s.chars().count() <= MAX_TEXT_CHARS {
        return s.to_string();
    }
    let mut out: String = s.chars().take(MAX_TEXT_CHARS - 1).collect();
    out.push('…');
    out
}

/// When and how a report reached the coordinator.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// The agent's outbox position (None: an agent that sends plain reports).
    pub seq: Option<u64>,
    /// When the pass finished, by the guest's clock (unix ms).
    pub finished_unix_ms: Option<i64>,
    pub received_unix_ms: i64,
    /// When the session that carried it opened: a pass finished before that was done
    /// while the guest was disconnected.
    pub session_opened_unix_ms: i64,
}

pub fn payload(report: &ApplyReport, d: Delivery) -> Value {
    let results: Vec<Value> = report
        .results
        .iter()
        .take(MAX_RESULTS)
        .map(|r| {
            if r.status == Status::Unchanged {
                json!({ "resource": r.resource, "status": r.status.to_string() })
            } else {
                json!({
                    "resource": r.resource,
                    "status": r.status.to_string(),
                    "message": cut(&r.message),
                    "diff": cut(&r.diff),
                })
            }
        })
        .collect();
    let done = d.finished_unix_ms.unwrap_or(d.received_unix_ms);
    json!({
        "revision": report.revision,
        "digest": report.digest,
        "trigger": report.trigger,
        "converged": report.converged(),
        "done_unix_ms": done,
        "received_unix_ms": d.received_unix_ms,
        "while_disconnected": d.finished_unix_ms.is_some_and(|f| f < d.session_opened_unix_ms),
        "seq": d.seq,
        "duration_micros": report.duration_micros,
        "changed": report.count(Status::Changed),
        "failed": report.count(Status::Failed),
        "skipped": report.count(Status::Skipped),
        "unchanged": report.count(Status::Unchanged),
        "results_omitted": report.results.len().saturating_sub(MAX_RESULTS),
        "results": results,
    })
}

/// The report a report event's `payload` describes, as far as the payload keeps it: texts
/// cut at [`MAX_TEXT_CHARS`], unchanged resources without message, at most
/// [`MAX_RESULTS`] results, no per-resource durations. A report watcher that fell behind
/// re-reads missed reports this way. None: not the payload of a report.
pub fn report_of(payload: &Value) -> Option<ApplyReport> {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let results = payload
        .get("results")?
        .as_array()?
        .iter()
        .map(|r| {
            Some(ResourceResult {
                resource: text(r, "resource")?,
                status: serde_json::from_value(r.get("status")?.clone()).ok()?,
                message: text(r, "message").unwrap_or_default(),
                duration_micros: 0,
                diff: text(r, "diff").unwrap_or_default(),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ApplyReport {
        revision: payload.get("revision")?.as_u64()?,
        digest: text(payload, "digest")?,
        dry_run: false,
        results,
        duration_micros: payload
            .get("duration_micros")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        trigger: text(payload, "trigger").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(resource: &str, status: Status, message: &str) -> ResourceResult {
        ResourceResult {
            resource: resource.into(),
            status,
            message: message.into(),
            duration_micros: 1,
            diff: String::new(),
        }
    }

    #[test]
    fn a_pass_done_offline_keeps_its_time_and_long_texts_are_cut() {
        let report = ApplyReport {
            revision: 4,
            digest: "d".into(),
            dry_run: false,
            results: vec![
                result("file:/a", Status::Unchanged, "same"),
                result("file:/b", Status::Changed, &"x".repeat(5000)),
                result("service:web", Status::Failed, "unit failed"),
            ],
            duration_micros: 9,
            trigger: "drift".into(),
        };
        let p = payload(
            &report,
            Delivery {
                seq: Some(3),
                finished_unix_ms: Some(1_000),
                received_unix_ms: 9_000,
                session_opened_unix_ms: 8_000,
            },
        );
        assert_eq!(p["done_unix_ms"], 1_000);
        assert_eq!(p["while_disconnected"], true);
        assert_eq!(
            (p["changed"].as_u64(), p["failed"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(p["converged"], false);
        assert!(
            p["results"][0].get("message").is_none(),
            "unchanged: name only"
        );
        let msg = p["results"][1]["message"].as_str().expect("message");
        assert_eq!(msg.chars().count(), MAX_TEXT_CHARS);
        assert_eq!(p["results"][2]["message"], "unit failed");
    }

    #[test]
    fn a_report_is_read_back_from_its_payload() {
        let report = ApplyReport {
            revision: 7,
            digest: "d7".into(),
            dry_run: false,
            results: vec![
                result("file:/a", Status::Unchanged, "same"),
                result("service:web", Status::Failed, "unit failed"),
            ],
            duration_micros: 42,
            trigger: "push".into(),
        };
        let p = payload(
            &report,
            Delivery {
                seq: None,
                finished_unix_ms: None,
                received_unix_ms: 1,
                session_opened_unix_ms: 0,
            },
        );
        let back = report_of(&p).expect("a report payload");
        assert_eq!(
            (back.revision, back.digest.as_str(), back.trigger.as_str()),
            (7, "d7", "push")
        );
        assert_eq!(back.duration_micros, 42);
        assert_eq!(back.results[0].status, Status::Unchanged);
        assert_eq!(back.results[0].message, "", "unchanged: name only");
        assert_eq!(back.results[1].status, Status::Failed);
        assert_eq!(back.results[1].message, "unit failed");
        assert!(!back.converged());
        assert_eq!(report_of(&serde_json::json!({ "peer": "x" })), None);
    }
}
