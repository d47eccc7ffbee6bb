//! The listings: `status`, `agents` and `certs`, as a table or `-o json`.

use super::CliError;
use super::args::Output;
use super::render::{
    ago, connection, escape_controls, print_listing, report_summary, status_json, until,
};
use crate::admin_client;
use phoenix_proto::model::ApplyReport;
use phoenix_proto::v1;
use std::path::Path;

/// Per guest: connected, revision wanted and applied, last report, cert expiry.
pub(super) async fn status(socket: &Path, output: Output) -> Result<(), CliError> {
    let mut admin = admin_client::connect(socket).await?;
    let guests = admin_client::status(&mut admin).await?;
    print_listing(
        output,
        || guests.iter().map(status_json).collect(),
        &[
            "GUEST",
            "CONNECTED",
            "WANTED",
            "APPLIED",
            "LAST REPORT",
            "CERT EXPIRES",
            "DECLARED VS OBSERVED",
        ],
        || {
            guests
                .iter()
                .map(|s| {
                    let report = s
                        .last_report
                        .clone()
                        .and_then(|r| ApplyReport::try_from(r).ok());
                    vec![
                        s.guest_id.to_string(),
                        connection(s).into(),
                        s.wanted_revision.to_string(),
                        s.applied_revision.to_string(),
                        report
                            .map(|r| {
                                format!(
                                    "rev {} {} ({}, {})",
                                    r.revision,
                                    report_summary(&r),
                                    escape_controls(&r.trigger),
                                    ago(s.last_report_unix)
                                )
                            })
                            .unwrap_or_else(|| "-".into()),
                        until(s.cert_not_after_unix),
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
    Ok(())
}

/// Enrolled agents with their facts.
pub(super) async fn agents(socket: &Path, output: Output) -> Result<(), CliError> {
    let mut admin = admin_client::connect(socket).await?;
    let guests = admin_client::status(&mut admin).await?;
    let agents: Vec<_> = guests.iter().filter(|s| s.enrolled).collect();
    print_listing(
        output,
        || agents.iter().map(|s| status_json(s)).collect(),
        &[
            "GUEST",
            "CONNECTED",
            "VERSION",
            "HOSTNAME",
            "OS",
            "RESOURCES",
            "LAST SEEN",
        ],
        || {
            agents
                .iter()
                .map(|s| {
                    let f = s.facts.clone().unwrap_or_default();
                    vec![
                        s.guest_id.to_string(),
                        connection(s).into(),
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
    let resp = admin.certs(v1::CertsRequest {}).await?.into_inner();
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
            "GUEST", "KIND", "SUBJECT", "SANS", "EXPIRES", "RENEWED", "RESULT",
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
