//! `phoenix history --guest N`: the guest's applies, newest first, with what changed and
//! what failed and why. Read from the event log (so as far back as its retention goes),
//! including passes the agent made while the coordinator was away, at the time it made
//! them.

use super::CliError;
use super::args::Output;
use super::events::{payload, rfc3339};
use super::render::escape_controls;
use crate::admin_client;
use crate::store::Topic;
use phoenix_proto::model::GuestId;
use phoenix_proto::v1;
use serde_json::Value;
use std::path::Path;

pub(super) async fn history(
    socket: &Path,
    guest: GuestId,
    limit: usize,
    output: Output,
) -> Result<(), CliError> {
    let mut admin = admin_client::connect(socket).await?;
    let mut stream = admin
        .events(v1::EventsRequest {
            since: 0,
            follow: false,
            guest_ids: vec![guest.get()],
            topics: vec![Topic::Report.to_string()],
        })
        .await?
        .into_inner();
    let mut applies = Vec::new();
    while let Some(m) = stream.message().await? {
        if matches!(m.r#type.as_str(), "Applied" | "ApplyFailed") {
            applies.push(m);
        }
    }
    // Newest first by when the guest did the work (a pass reported late sorts where it ran).
    applies.sort_by_key(|m| std::cmp::Reverse((done(m), m.index)));
    applies.truncate(limit);
    match output {
        Output::Json => {
            let items: Vec<Value> = applies.iter().map(super::events::json).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&items).unwrap_or_default()
            );
        }
        Output::Table | Output::Wide => {
            if applies.is_empty() {
                println!("no applies recorded for guest {guest}");
            }
            for m in &applies {
                for line in describe(m) {
                    println!("{}", escape_controls(&line));
                }
            }
        }
    }
    Ok(())
}

fn done(m: &v1::EventMessage) -> i64 {
    payload(m)["done_unix_ms"]
        .as_i64()
        .unwrap_or(m.time_unix_ms)
}

/// A header line, then one indented line per resource that changed, failed or was skipped.
fn describe(m: &v1::EventMessage) -> Vec<String> {
    let p = payload(m);
    let converged = p["converged"].as_bool() == Some(true);
    let mut head = format!(
        "{}  r{}  {}  {}",
        rfc3339(done(m)),
        p["revision"].as_u64().unwrap_or(0),
        if converged { "ok    " } else { "FAILED" },
        super::events::report_summary(&p)
    );
    if p["while_disconnected"].as_bool() != Some(true) && !converged {
        head.push_str(&format!("  (event #{})", m.index));
    }
    let mut out = vec![head];
    for r in p["results"].as_array().into_iter().flatten() {
        let status = r["status"].as_str().unwrap_or("");
        let mark = match status {
            "changed" => "~",
            "failed" => "!",
            "skipped" => "-",
            _ => continue,
        };
        let resource = r["resource"].as_str().unwrap_or("");
        let message = r["message"].as_str().unwrap_or("");
        out.push(format!("    {mark} {resource}: {message}"));
        if let Some(diff) = r["diff"]
            .as_str()
            .filter(|d| !d.is_empty() && status == "changed")
        {
            for l in diff.lines().take(20) {
                out.push(format!("        {l}"));
            }
        }
    }
    out
}
