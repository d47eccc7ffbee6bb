//! How `apply` and `plan` show what happens, as it happens: readable lines on stdout
//! (each failed resource with its reason), a progress line redrawn on stderr while
//! waiting when stderr is a terminal (plain "waiting" lines every [`PLAIN_EVERY`]
//! otherwise), or with `-o json` one JSON object per line on stdout and nothing else.

use super::args::Output;
use super::render::{escape_controls, report_summary};
use phoenix_proto::model::{ApplyReport, Status};
use phoenix_proto::v1;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Without a terminal, how often a "still waiting" line is printed.
const PLAIN_EVERY: Duration = Duration::from_secs(15);
/// Guest ids listed in a waiting line before "…".
const LISTED: usize = 8;

/// What became of a guest's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Plan,
    Converged,
    NotConverged,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Plan => "plan",
            Verdict::Converged => "converged",
            Verdict::NotConverged => "NOT converged",
        }
    }

    fn json(self) -> &'static str {
        match self {
            Verdict::Plan => "plan",
            Verdict::Converged => "converged",
            Verdict::NotConverged => "not_converged",
        }
    }
}

pub(super) struct Progress {
    json: bool,
    /// A progress line may be redrawn on stderr.
    tty: bool,
    started: Instant,
    /// The progress line is on screen and must be cleared before the next stdout line.
    drawn: bool,
    last_plain: Instant,
}

impl Progress {
    pub(super) fn new(output: Output) -> Self {
        let json = output == Output::Json;
        Progress {
            json,
            tty: !json && std::io::stderr().is_terminal(),
            started: Instant::now(),
            drawn: false,
            last_plain: Instant::now(),
        }
    }

    /// One line (text) or object (JSON) on stdout, after clearing the progress line.
    fn out(&mut self, text: impl FnOnce() -> String, object: impl FnOnce() -> serde_json::Value) {
        if self.drawn {
            eprint!("\r\x1b[2K");
            self.drawn = false;
        }
        let line = if self.json {
            object().to_string()
        } else {
            text()
        };
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }

    /// A template guest was compiled but is never pushed.
    pub(super) fn template(&mut self, guest: u32) {
        self.out(
            || format!("guest {guest}: template: compiled and valid, never pushed"),
            || json!({"event": "template", "guest": guest}),
        );
    }

    /// The coordinator's answer for one guest: what changed against its stored state.
    pub(super) fn pushed(&mut self, g: &v1::GuestApply, dry_run: bool, enrolled: bool) {
        let reach = if g.connected {
            "connected"
        } else if enrolled {
            "not connected: will converge when it connects"
        } else {
            "not enrolled: will converge once it joins"
        };
        self.out(
            || {
                let what = if dry_run {
                    "plan".to_string()
                } else if g.changed {
                    format!("new rev {}", g.revision)
                } else {
                    format!("unchanged rev {}", g.revision)
                };
                let mut line = format!("guest {}: {what} ({reach})", g.guest_id);
                for d in &g.diff {
                    line.push_str("\n  ");
                    line.push_str(&escape_controls(d));
                }
                line
            },
            || {
                json!({
                    "event": if dry_run { "planned" } else { "pushed" },
                    "guest": g.guest_id,
                    "revision": (!dry_run).then_some(g.revision),
                    "changed": g.changed,
                    "connected": g.connected,
                    "enrolled": enrolled,
                    "diff": g.diff,
                })
            },
        );
    }

    /// `apply --force` asked the guest for a pass now (`refused`: why it could not;
    /// `replica`: the other replica of a cluster the request went to).
    pub(super) fn forced(&mut self, guest: u32, replica: Option<&str>, refused: Option<&str>) {
        self.out(
            || match (refused, replica) {
                (None, None) => format!("guest {guest}: pass requested (--force)"),
                (None, Some(r)) => format!(
                    "guest {guest}: pass requested (--force) through replica {}",
                    escape_controls(r)
                ),
                (Some(why), _) => {
                    format!("guest {guest}: no pass forced: {}", escape_controls(why))
                }
            },
            || json!({"event": "forced", "guest": guest, "replica": replica, "refused": refused}),
        );
    }

    /// A guest's report for what was just pushed (or planned).
    pub(super) fn report(&mut self, guest: u32, report: &ApplyReport, verdict: Verdict) {
        self.out(
            || {
                let rev = if verdict == Verdict::Plan {
                    "-".to_string()
                } else {
                    report.revision.to_string()
                };
                let mut text = format!(
                    "guest {guest} rev {rev}: {}: {}",
                    verdict.text(),
                    report_summary(report)
                );
                // What needs a look first; the agent's words escaped line by line.
                let mut rows: Vec<_> = report
                    .results
                    .iter()
                    .filter(|r| r.status != Status::Unchanged)
                    .collect();
                rows.sort_by_key(|r| r.status != Status::Failed);
                for r in rows {
                    let detail = match r.status {
                        // The reason, then what the agent found different, if it says.
                        Status::Failed | Status::Skipped if !r.diff.is_empty() => {
                            format!("{}\n{}", r.message, r.diff)
                        }
                        Status::Failed | Status::Skipped => r.message.clone(),
                        _ if r.diff.is_empty() => r.message.clone(),
                        _ => r.diff.clone(),
                    };
                    let lines: Vec<String> = detail.lines().map(escape_controls).collect();
                    text.push_str(&format!(
                        "\n  {:<9} {}  {}",
                        r.status.to_string(),
                        escape_controls(&r.resource),
                        lines.join("\n            ")
                    ));
                }
                text
            },
            || {
                json!({
                    "event": "report",
                    "guest": guest,
                    "revision": (verdict != Verdict::Plan).then_some(report.revision),
                    "verdict": verdict.json(),
                    "trigger": report.trigger,
                    "duration_ms": report.duration_micros / 1000,
                    "counts": {
                        "changed": report.count(Status::Changed),
                        "unchanged": report.count(Status::Unchanged),
                        "failed": report.count(Status::Failed),
                        "skipped": report.count(Status::Skipped),
                    },
                    "results": report.results,
                })
            },
        );
    }

    /// Called about once a second while guests are outstanding.
    pub(super) fn waiting(&mut self, pending: &BTreeMap<u32, (u64, String)>, total: usize) {
        if self.json || pending.is_empty() {
            return;
        }
        let mut ids: Vec<String> = pending.keys().take(LISTED).map(u32::to_string).collect();
        if pending.len() > LISTED {
            ids.push("…".into());
        }
        let secs = self.started.elapsed().as_secs();
        if self.tty {
            eprint!(
                "\r\x1b[2K[{}/{total} reported] waiting for {} ({secs}s)",
                total - pending.len(),
                ids.join(", ")
            );
            let _ = std::io::stderr().flush();
            self.drawn = true;
        } else if self.last_plain.elapsed() >= PLAIN_EVERY {
            self.last_plain = Instant::now();
            eprintln!(
                "waiting for {} of {total} guests: {} ({secs}s)",
                pending.len(),
                ids.join(", ")
            );
        }
    }

    /// The end: which guests converged, did not, or never answered.
    pub(super) fn done(&mut self, converged: &[u32], failed: &[u32], timed_out: &[u32]) {
        if !self.json {
            if self.drawn {
                eprint!("\r\x1b[2K");
                self.drawn = false;
            }
            return;
        }
        self.out(String::new, || {
            json!({
                "event": "done",
                "ok": failed.is_empty() && timed_out.is_empty(),
                "converged": converged,
                "not_converged": failed,
                "timed_out": timed_out,
            })
        });
    }
}
