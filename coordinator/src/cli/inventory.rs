//! The listings: `status`, `agents` and `certs`, as a table that fits an 80-column
//! terminal, `-o wide` with every column, or `-o json`. Guests in id order.

use super::CliError;
use super::args::Output;
use super::render::{
    Col, ago, col, connection, print_listing, report_summary, status_json, until, wide,
};
use crate::admin_client;
use phoenix_proto::model::{ApplyReport, Status};
use phoenix_proto::v1;
use std::path::Path;

/// Narrow widths: 5+12+4+9+26+14 plus 5 gaps of 2 is 80 columns.
const STATUS_COLS: [Col; 11] = [
    col("GUEST", 0),
    col("STATE", 0),
    col("CONN", 0),
    col("REVISION", 9),
    col("LAST REPORT", 26),
    col("CERT EXPIRES", 14),
    wide("WANTED"),
    wide("APPLIED"),
    wide("TRIGGER"),
    wide("AGENT"),
    wide("DECLARED VS OBSERVED"),
];

/// "1 failed, 2 skipped (5m)" or "5 ok (2h)": what the last report found, and its age.
fn compact_report(r: &ApplyReport, at: i64) -> String {
    let (failed, skipped) = (r.count(Status::Failed), r.count(Status::Skipped));
    let what = match (failed, skipped) {
        (0, 0) => format!("{} ok", r.results.len()),
        (f, 0) => format!("{f} failed"),
        (0, s) => format!("{s} skipped"),
        (f, s) => format!("{f} failed, {s} skipped"),
    };
    let age = ago(at);
    format!("{what} ({})", age.strip_suffix(" ago").unwrap_or(&age))
}

/// Per guest: state, revision applied/wanted, last report, cert expiry (and with `-o
/// wide`: trigger, agent, declared vs observed).
pub(super) async fn status(socket: &Path, output: Output) -> Result<(), CliError> {
    let mut admin = admin_client::connect(socket).await?;
    let mut guests = admin_client::status(&mut admin).await?;
    guests.sort_by_key(|s| s.guest_id);
    let differing: Vec<String> = guests
        .iter()
        .filter(|s| !s.mismatches.is_empty())
        .map(|s| s.guest_id.to_string())
        .collect();
    print_listing(
        output,
        || guests.iter().map(status_json).collect(),
        &STATUS_COLS,
        || {
            guests
                .iter()
                .map(|s| {
                    let report = s
                        .last_report
                        .clone()
                        .and_then(|r| ApplyReport::try_from(r).ok());
                    let state = crate::web::health(s, report.as_ref());
                    let wide_report = report.as_ref().map(|r| {
                        format!(
                            "rev {} {} ({})",
                            r.revision,
                            report_summary(r),
                            ago(s.last_report_unix)
                        )
                    });
                    vec![
                        s.guest_id.to_string(),
                        state.label().into(),
                        // STATE already says revoked or not enrolled.
                        connected_cell(s),
                        format!("{}/{}", s.applied_revision, s.wanted_revision),
                        match (output, &report, wide_report) {
                            (Output::Wide, _, Some(w)) => w,
                            (_, Some(r), _) => compact_report(r, s.last_report_unix),
                            _ => "-".into(),
                        },
                        until(s.cert_not_after_unix),
                        s.wanted_revision.to_string(),
                        s.applied_revision.to_string(),
                        report
                            .as_ref()
                            .map(|r| r.trigger.clone())
                            .unwrap_or_else(|| "-".into()),
                        if s.agent_version.is_empty() {
                            "-".into()
                        } else {
                            s.agent_version.clone()
                        },
                        if s.mismatches.is_empty() {
                            "-".into()
                        } else {
                            s.mismatches.join("; ")
                        },
                    ]
                })
                .collect()
        },
    );
    if output == Output::Table && !differing.is_empty() {
        println!(
            "declared vs observed differ on guest {} (phoenix status -o wide)",
            differing.join(", ")
        );
    }
    Ok(())
}

/// Enrolled agents with their facts.
pub(super) async fn agents(socket: &Path, output: Output) -> Result<(), CliError> {
    let mut admin = admin_client::connect(socket).await?;
    let mut guests = admin_client::status(&mut admin).await?;
    guests.sort_by_key(|s| s.guest_id);
    let agents: Vec<_> = guests.iter().filter(|s| s.enrolled).collect();
    print_listing(
        output,
        || agents.iter().map(|s| status_json(s)).collect(),
        &[
            col("GUEST", 0),
            col("CONNECTED", 0),
            col("VERSION", 10),
            col("HOSTNAME", 16),
            col("OS", 16),
            wide("RESOURCES"),
            col("LAST SEEN", 0),
        ],
        || {
            agents
                .iter()
                .map(|s| {
                    let f = s.facts.clone().unwrap_or_default();
                    vec![
                        s.guest_id.to_string(),
                        match connection(s) {
                            "yes" => connected_cell(s),
                            other => other.into(),
                        },
                        s.agent_version.clone(),
                        f.hostname,
                        f.os,
                        format!("{} cpu / {} MiB", f.cpus, f.memory_bytes / (1024 * 1024)),
                        ago(s.last_seen_unix),
                    ]
                })
                .collect()
        },
    );
    Ok(())
}

/// Identity and service certificates.
pub(super) async fn certs(socket: &Path, output: Output) -> Result<(), CliError> {
    let mut admin = admin_client::connect(socket).await?;
    let mut resp = admin.certs(v1::CertsRequest {}).await?.into_inner();
    resp.certs
        .sort_by(|a, b| (a.guest_id, &a.kind).cmp(&(b.guest_id, &b.kind)));
    print_listing(
        output,
        || {
            resp.certs
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "guest": c.guest_id, "kind": c.kind, "subject": c.subject, "sans": c.sans,
                        "not_after_unix": c.not_after_unix, "last_renewal_unix": c.last_renewal_unix,
                        "last_result": c.last_result, "serial": c.serial,
                    })
                })
                .collect()
        },
        &[
            col("GUEST", 0),
            col("KIND", 14),
            col("SUBJECT", 20),
            wide("SANS"),
            col("EXPIRES", 12),
            wide("RENEWED"),
            col("RESULT", 16),
        ],
        || {
            resp.certs
                .iter()
                .map(|c| {
                    vec![
                        if c.guest_id == 0 {
                            "-".into()
                        } else {
                            c.guest_id.to_string()
                        },
                        c.kind.clone(),
                        c.subject.clone(),
                        c.sans.join(","),
                        until(c.not_after_unix),
                        ago(c.last_renewal_unix),
                        c.last_result.clone(),
                    ]
                })
                .collect()
        },
    );
    Ok(())
}

/// "yes", or in a cluster "yes (<replica holding the session>)".
fn connected_cell(s: &v1::GuestStatus) -> String {
    match (s.connected, s.replica.as_str()) {
        (false, _) => "no".into(),
        (true, "") => "yes".into(),
        (true, r) => format!("yes ({})", super::render::escape_controls(r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_reports_put_failures_first() {
        let r = |statuses: &[Status]| ApplyReport {
            revision: 1,
            digest: String::new(),
            dry_run: false,
            results: statuses
                .iter()
                .map(|s| phoenix_proto::model::ResourceResult {
                    resource: "file:/a".into(),
                    status: *s,
                    message: String::new(),
                    duration_micros: 0,
                    diff: String::new(),
                })
                .collect(),
            duration_micros: 0,
            trigger: String::new(),
        };
        assert_eq!(
            compact_report(&r(&[Status::Changed, Status::Unchanged]), 0),
            "2 ok (-)"
        );
        assert_eq!(
            compact_report(&r(&[Status::Failed, Status::Skipped, Status::Skipped]), 0),
            "1 failed, 2 skipped (-)"
        );
    }
}
