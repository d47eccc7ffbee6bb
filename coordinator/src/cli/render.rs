//! How the CLI shows things: aligned tables, relative times, report summaries, the
//! `-o json` shape of a guest's status, and the escaping of everything a guest sent.

use super::args::Output;
use phoenix_proto::model::{ApplyReport, Status};
use phoenix_proto::v1;
use std::time::{SystemTime, UNIX_EPOCH};

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(super) fn ago(unix: i64) -> String {
    if unix <= 0 {
        return "-".into();
    }
    let now = now_unix();
    human(now - unix, "ago")
}

pub(super) fn until(unix: i64) -> String {
    if unix <= 0 {
        return "-".into();
    }
    let now = now_unix();
    if unix < now {
        return format!("EXPIRED {}", human(now - unix, "ago"));
    }
    format!("in {}", human(unix - now, ""))
}

fn human(secs: i64, suffix: &str) -> String {
    let s = match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    };
    if suffix.is_empty() {
        s
    } else {
        format!("{s} {suffix}")
    }
}

/// A table column: in the default table, `wide_only` columns are left out and cells cut
/// to `max` characters (0: never cut), so a listing fits an 80-column terminal; `-o wide`
/// shows every column in full.
pub(super) struct Col {
    pub name: &'static str,
    pub wide_only: bool,
    pub max: usize,
}

/// A column in both forms, cut to `max` in the narrow one.
pub(super) const fn col(name: &'static str, max: usize) -> Col {
    Col {
        name,
        wide_only: false,
        max,
    }
}

/// A column only `-o wide` shows.
pub(super) const fn wide(name: &'static str) -> Col {
    Col {
        name,
        wide_only: true,
        max: 0,
    }
}

/// A listing as `-o json` (an array) or as a table; only the chosen one is built.
pub(super) fn print_listing(
    output: Output,
    json: impl FnOnce() -> Vec<serde_json::Value>,
    cols: &[Col],
    rows: impl FnOnce() -> Vec<Vec<String>>,
) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json()).unwrap_or_default()
        ),
        Output::Table | Output::Wide => println!("{}", table(output, cols, &rows())),
    }
}

/// `s` cut to `max` characters, the last one an ellipsis.
fn cut(s: String, max: usize) -> String {
    if max == 0 || s.chars().count() <= max {
        return s;
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A plain aligned table; no external crate needed for this. Cells are escaped here,
/// once for every table, before they are cut.
fn table(output: Output, cols: &[Col], rows: &[Vec<String>]) -> String {
    let shown: Vec<usize> = (0..cols.len())
        .filter(|i| output == Output::Wide || !cols[*i].wide_only)
        .collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            shown
                .iter()
                .map(|&i| {
                    let cell = escape_controls(r.get(i).map(String::as_str).unwrap_or(""));
                    if output == Output::Wide {
                        cell
                    } else {
                        cut(cell, cols[i].max)
                    }
                })
                .collect()
        })
        .collect();
    let header: Vec<String> = shown.iter().map(|&i| cols[i].name.to_string()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(&header);
    for r in &rows {
        out.push('\n');
        out.push_str(&line(r));
    }
    out
}

/// The CONNECTED column; a revoked guest says so whatever else is true.
pub(super) fn connection(s: &v1::GuestStatus) -> &'static str {
    if s.revoked_unix != 0 {
        "revoked"
    } else if s.connected {
        "yes"
    } else if s.enrolled {
        "no"
    } else {
        "not enrolled"
    }
}

/// `s` with every control character (and the backslash) written as an escape, so text
/// a guest sent (hostname, agent version, error messages) cannot move the cursor, clear
/// the screen or forge table rows in the operator's terminal.
pub(super) fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Unicode directional overrides can make a cell read backwards (Trojan Source).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

pub(super) fn report_summary(r: &ApplyReport) -> String {
    let mut parts = Vec::new();
    for (s, n) in [
        (Status::Changed, r.count(Status::Changed)),
        (Status::Unchanged, r.count(Status::Unchanged)),
        (Status::Failed, r.count(Status::Failed)),
        (Status::Skipped, r.count(Status::Skipped)),
    ] {
        if n > 0 {
            parts.push(format!("{n} {s}"));
        }
    }
    if parts.is_empty() {
        "no resources".into()
    } else {
        parts.join(", ")
    }
}

pub(super) fn status_json(s: &v1::GuestStatus) -> serde_json::Value {
    let report = s
        .last_report
        .clone()
        .and_then(|r| ApplyReport::try_from(r).ok());
    serde_json::json!({
        "guest": s.guest_id,
        "enrolled": s.enrolled,
        "revoked": s.revoked_unix != 0,
        "revoked_unix": (s.revoked_unix != 0).then_some(s.revoked_unix),
        "connected": s.connected,
        "replica": (!s.replica.is_empty()).then_some(&s.replica),
        "wanted_revision": s.wanted_revision,
        "applied_revision": s.applied_revision,
        "converged": report.as_ref().map(|r| r.converged() && !r.dry_run && r.revision == s.wanted_revision),
        "last_report": report,
        "last_report_unix": s.last_report_unix,
        "cert_not_after_unix": s.cert_not_after_unix,
        "agent_version": s.agent_version,
        "last_seen_unix": s.last_seen_unix,
        "mismatches": s.mismatches,
        "facts": s.facts.as_ref().map(|f| serde_json::json!({
            "hostname": f.hostname, "os": f.os, "kernel": f.kernel, "cpus": f.cpus,
            "memory_bytes": f.memory_bytes, "uptime_seconds": f.uptime_seconds,
            "packages": f.packages,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bidi_overrides_are_escaped() {
        assert_eq!(
            escape_controls("a\x1b[2J\nb\t\\\u{202e}c"),
            "a\\u{1b}[2J\\nb\\t\\\\\\u{202e}c"
        );
        assert_eq!(escape_controls("plain host-1 ✓"), "plain host-1 ✓");
        let t = table(Output::Table, &[col("A", 0)], &[vec!["x\ry".into()]]);
        assert_eq!(t, "A\nx\\ry");
    }

    #[test]
    fn narrow_tables_cut_and_drop_wide_columns_wide_shows_all() {
        let cols = [col("NAME", 6), wide("EXTRA"), col("N", 0)];
        let rows = vec![vec!["abcdefghij".into(), "x".into(), "1".into()]];
        assert_eq!(table(Output::Table, &cols, &rows), "NAME    N\nabcde…  1");
        assert_eq!(
            table(Output::Wide, &cols, &rows),
            "NAME        EXTRA  N\nabcdefghij  x      1"
        );
    }
}
