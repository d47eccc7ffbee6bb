//! The page itself: one server-rendered HTML document, no script (the Content Security
//! Policy forbids any), reloaded by the browser itself every 15 s
//! (`<meta http-equiv="refresh">`).
//!
//! Sections, each with an `id` the browser test looks for: `summary`, `guests` (one row
//! per guest, ordered by id), `reports` (each guest's last report; open when something
//! failed, with every reason), `certs` (expiry and issuer), `events` (the most recent,
//! newest first).

use super::html::Html;
use super::view::{CertView, GuestView, Page};
use phoenix_proto::model::Status;

const STYLE: &str = "<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d232a;background:#f5f6f8}
header{background:#1d232a;color:#f5f6f8;padding:14px 24px}
header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#b7bec7}
main{padding:8px 24px 24px}
section{margin-top:18px}
h2{font-size:16px;margin:0 0 8px}
table{border-collapse:collapse;background:#fff;width:100%;box-shadow:0 1px 2px #0002}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef0f3;font-weight:600;font-size:12px;text-transform:uppercase;color:#4b5561}
.ok{color:#16794a}.warn{color:#9a6700}.bad{color:#c62828;font-weight:600}
.pill{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.pill.ok{background:#dcf5e7}.pill.warn{background:#fff1c2}.pill.bad{background:#fde0e0}
#summary span{margin-right:18px}
details{background:#fff;margin:6px 0;box-shadow:0 1px 2px #0002}
summary{padding:8px 12px;cursor:pointer}
details table{box-shadow:none}
pre{margin:0;white-space:pre-wrap;word-break:break-word;font:12px/1.4 ui-monospace,monospace}
code{font:12px ui-monospace,monospace}
footer{padding:0 24px 24px;color:#6b7480;font-size:12px}
</style>";

pub(super) fn render(p: &Page) -> String {
    let mut h = Html::default();
    h.raw("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
        .raw("<meta http-equiv=\"refresh\" content=\"15\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width\">")
        .raw("<title>Phoenix status</title>")
        .raw(STYLE)
        .raw("</head><body><header><h1>Phoenix status</h1><p>trust domain ")
        .text(&p.trust_domain)
        .raw(" · CA ")
        .text(&p.ca)
        .raw(" (issuer ")
        .text(&p.issuer)
        .raw(") · read-only, refreshed every 15 s</p></header><main>");
    summary(&mut h, p);
    guests(&mut h, p);
    reports(&mut h, p);
    certs(&mut h, p);
    events(&mut h, p);
    h.raw("</main><footer>phoenix ")
        .text(env!("CARGO_PKG_VERSION"))
        .raw("</footer></body></html>\n");
    h.finish()
}

fn summary(h: &mut Html, p: &Page) {
    let count = |f: &dyn Fn(&GuestView) -> bool| p.guests.iter().filter(|g| f(g)).count();
    let connected = count(&|g| g.status.connected);
    let converged = count(&|g| g.health().class() == "ok");
    let failed = count(&|g| !g.failures().is_empty());
    h.raw("<section id=\"summary\"><p>");
    for (id, n, what, class) in [
        ("n-guests", p.guests.len(), "guests", ""),
        ("n-connected", connected, "connected", ""),
        ("n-converged", converged, "converged", "ok"),
        (
            "n-failed",
            failed,
            "with failures",
            if failed > 0 { "bad" } else { "" },
        ),
    ] {
        h.raw("<span id=\"")
            .raw(id)
            .raw("\" class=\"")
            .raw(class)
            .raw("\"><b>");
        h.text(&n.to_string()).raw("</b> ").raw(what).raw("</span>");
    }
    h.raw("</p></section>");
}

fn guests(h: &mut Html, p: &Page) {
    h.raw("<section id=\"guests\"><h2>Guests</h2><table><thead><tr>")
        .raw("<th>Guest</th><th>State</th><th>Connected</th><th>Wanted</th><th>Applied</th>")
        .raw("<th>Last report</th><th>Agent</th><th>Identity expires</th><th>Declared vs observed</th>")
        .raw("</tr></thead><tbody>");
    if p.guests.is_empty() {
        h.raw("<tr><td colspan=\"9\">No guests yet: <code>phoenix apply -f …</code> declares them.</td></tr>");
    }
    for g in &p.guests {
        let s = &g.status;
        let health = g.health();
        let id = s.guest_id.to_string();
        h.raw("<tr id=\"guest-").text(&id).raw("\" data-state=\"");
        h.text(health.label()).raw("\">");
        h.el("<td><a href=\"#report-", &id, "\">")
            .text(&id)
            .raw("</a></td>");
        h.raw("<td><span class=\"pill ")
            .raw(health.class())
            .raw("\">");
        h.text(health.label()).raw("</span></td>");
        let connected = match (s.connected, s.replica.as_str()) {
            (false, _) => "no".to_string(),
            (true, "") => "yes".to_string(),
            (true, r) => format!("yes ({r})"),
        };
        h.el("<td class=\"connected\">", &connected, "</td>");
        h.el("<td>", &s.wanted_revision.to_string(), "</td>");
        h.el("<td>", &s.applied_revision.to_string(), "</td>");
        let last = match &g.report {
            Some(r) => format!(
                "rev {} · {} · {}",
                r.revision,
                counts(r),
                ago(p.now_unix, s.last_report_unix)
            ),
            None => "-".into(),
        };
        h.el("<td>", &last, "</td>");
        let host = s.facts.as_ref().map(|f| f.hostname.as_str()).unwrap_or("");
        h.raw("<td>").text(&s.agent_version);
        if !host.is_empty() {
            h.raw("<br><code>").text(host).raw("</code>");
        }
        h.raw("</td>");
        let (text, class) = expiry(p.now_unix, s.cert_not_after_unix);
        h.raw("<td class=\"")
            .raw(class)
            .raw("\">")
            .text(&text)
            .raw("</td>");
        if s.mismatches.is_empty() {
            h.raw("<td class=\"ok\">")
                .text(if s.facts.is_some() { "matches" } else { "-" });
            h.raw("</td>");
        } else {
            h.raw("<td class=\"mismatch warn\">");
            for (i, m) in s.mismatches.iter().enumerate() {
                if i > 0 {
                    h.raw("<br>");
                }
                h.text(m);
            }
            h.raw("</td>");
        }
        h.raw("</tr>");
    }
    h.raw("</tbody></table></section>");
}

fn reports(h: &mut Html, p: &Page) {
    h.raw("<section id=\"reports\"><h2>Last reports</h2>");
    for g in p.guests.iter() {
        let Some(r) = &g.report else { continue };
        let id = g.status.guest_id.to_string();
        let failing = !g.failures().is_empty();
        h.raw("<details id=\"report-").text(&id).raw("\"");
        if failing {
            h.raw(" open class=\"failing\"");
        }
        h.raw("><summary><b>guest ").text(&id).raw("</b> · rev ");
        h.text(&r.revision.to_string()).raw(" · ");
        h.raw(if r.converged() {
            "<span class=\"ok\">"
        } else {
            "<span class=\"bad\">"
        });
        h.text(&counts(r)).raw("</span> · ");
        h.text(&r.trigger).raw(" · ");
        h.text(&ago(p.now_unix, g.status.last_report_unix));
        h.raw("</summary><table><thead><tr><th>Resource</th><th>Result</th><th>Reason or change</th></tr></thead><tbody>");
        // What needs a look first, then the rest in the agent's order.
        let mut rows: Vec<_> = r.results.iter().collect();
        rows.sort_by_key(|x| match x.status {
            Status::Failed => 0,
            Status::Skipped => 1,
            Status::Changed => 2,
            Status::Unchanged => 3,
        });
        for x in rows {
            let class = match x.status {
                Status::Failed => "bad",
                Status::Skipped => "warn",
                Status::Changed | Status::Unchanged => "ok",
            };
            h.raw("<tr class=\"result ")
                .raw(class)
                .raw("\" data-status=\"");
            h.text(&x.status.to_string()).raw("\">");
            h.el("<td><code>", &x.resource, "</code></td>");
            h.raw("<td class=\"").raw(class).raw("\">");
            h.text(&x.status.to_string()).raw("</td>");
            let detail = if x.message.is_empty() {
                &x.diff
            } else {
                &x.message
            };
            h.el("<td><pre class=\"reason\">", detail, "</pre></td></tr>");
        }
        h.raw("</tbody></table></details>");
    }
    h.raw("</section>");
}

fn certs(h: &mut Html, p: &Page) {
    h.raw("<section id=\"certs\"><h2>Certificates</h2><table><thead><tr>")
        .raw("<th>Guest</th><th>Certificate</th><th>Subject</th><th>Names</th>")
        .raw("<th>Issuer</th><th>Expires</th><th>Last result</th></tr></thead><tbody>");
    for c in &p.certs {
        cert_row(h, p, c);
    }
    h.raw("</tbody></table></section>");
}

fn cert_row(h: &mut Html, p: &Page, c: &CertView) {
    let guest = c.guest.map(|g| g.to_string()).unwrap_or_else(|| "-".into());
    h.el("<tr><td>", &guest, "</td>");
    h.el("<td><code>", &c.kind, "</code></td>");
    h.el("<td>", &c.subject, "</td>");
    h.el("<td><code>", &c.sans.join(", "), "</code></td>");
    h.raw("<td>")
        .text(&p.ca)
        .raw(": ")
        .text(&p.issuer)
        .raw("</td>");
    let (text, class) = expiry(p.now_unix, c.not_after_unix);
    h.raw("<td class=\"")
        .raw(class)
        .raw("\">")
        .text(&text)
        .raw("</td>");
    let class = if c.result == "ok" || c.result == "changed" || c.result == "unchanged" {
        "ok"
    } else {
        "bad"
    };
    h.raw("<td class=\"")
        .raw(class)
        .raw("\">")
        .text(&c.result)
        .raw("</td></tr>");
}

/// An event's details are cut after this many characters.
const MAX_DETAIL_CHARS: usize = 240;

fn events(h: &mut Html, p: &Page) {
    h.raw("<section id=\"events\"><h2>Recent events</h2><table><thead><tr>")
        .raw("<th>#</th><th>When</th><th>Topic</th><th>Type</th><th>Key</th><th>Details</th>")
        .raw("</tr></thead><tbody>");
    if p.events.is_empty() {
        h.raw("<tr><td colspan=\"6\">No events recorded yet.</td></tr>");
    }
    for e in &p.events {
        let bad =
            e.kind.contains("Fail") || e.kind.contains("Refused") || e.kind.contains("Revoked");
        h.raw(if bad {
            "<tr class=\"event bad\" data-topic=\""
        } else {
            "<tr class=\"event\" data-topic=\""
        });
        h.text(e.topic.as_str()).raw("\">");
        h.el("<td>", &e.index.to_string(), "</td>");
        h.el("<td>", &ago(p.now_unix, e.time_unix_ms / 1000), "</td>");
        h.el("<td>", e.topic.as_str(), "</td>");
        h.el("<td>", &e.kind, "</td>");
        h.el("<td>", &e.key, "</td>");
        // The same words as `phoenix events`, cut (the whole event is in `phoenix events -o json`).
        let mut what = crate::cli::events::what(&crate::events::stream::message(e));
        if what.chars().count() > MAX_DETAIL_CHARS {
            what = what.chars().take(MAX_DETAIL_CHARS).collect::<String>() + "…";
        }
        h.el("<td>", &what, "</td></tr>");
    }
    h.raw("</tbody></table></section>");
}

fn counts(r: &phoenix_proto::model::ApplyReport) -> String {
    let parts: Vec<String> = [
        Status::Failed,
        Status::Skipped,
        Status::Changed,
        Status::Unchanged,
    ]
    .into_iter()
    .filter_map(|s| {
        let n = r.count(s);
        (n > 0).then(|| format!("{n} {s}"))
    })
    .collect();
    if parts.is_empty() {
        "no resources".into()
    } else {
        parts.join(", ")
    }
}

fn ago(now: i64, unix: i64) -> String {
    if unix <= 0 {
        return "-".into();
    }
    format!("{} ago", human(now - unix))
}

/// Text and class of an expiry: `bad` once expired, `warn` inside 4 hours.
fn expiry(now: i64, unix: i64) -> (String, &'static str) {
    if unix <= 0 {
        return ("-".into(), "");
    }
    if unix <= now {
        return (format!("EXPIRED {} ago", human(now - unix)), "bad");
    }
    // Renewal runs at about 2/3 of a lifetime; a few hours left means it is failing.
    let class = if unix - now < 4 * 3600 { "warn" } else { "ok" };
    (format!("in {}", human(unix - now)), class)
}

fn human(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_proto::model::{ApplyReport, ResourceResult};
    use phoenix_proto::v1;

    fn page_with_reason(reason: &str) -> Page {
        Page {
            now_unix: 1000,
            trust_domain: "phoenix.lab".into(),
            ca: "embedded".into(),
            issuer: "Phoenix CA".into(),
            guests: vec![GuestView {
                status: v1::GuestStatus {
                    guest_id: 101,
                    enrolled: true,
                    connected: true,
                    wanted_revision: 2,
                    applied_revision: 1,
                    agent_version: "<b>0.1</b>".into(),
                    mismatches: vec!["cores: declared 4, observed <2>".into()],
                    last_report_unix: 990,
                    ..Default::default()
                },
                report: Some(ApplyReport {
                    revision: 2,
                    digest: "d".into(),
                    dry_run: false,
                    results: vec![ResourceResult {
                        resource: "file:/etc/<x>".into(),
                        status: Status::Failed,
                        message: reason.into(),
                        duration_micros: 1,
                        diff: String::new(),
                    }],
                    duration_micros: 1,
                    trigger: "push".into(),
                }),
            }],
            certs: vec![],
            events: vec![crate::store::Event {
                index: 7,
                time_unix_ms: 995_000,
                topic: crate::store::Topic::Report,
                kind: "ApplyFailed".into(),
                key: "101".into(),
                payload: serde_json::json!({"revision": 2, "trigger": "push", "failed": 1,
                    "results": [{"resource": "file:/a", "status": "failed",
                                 "message": "<script>alert(2)</script>"}]}),
            }],
        }
    }

    #[test]
    fn hostile_values_are_text_and_failures_are_open() {
        let html = render(&page_with_reason("<script>alert(1)</script>"));
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("&lt;b&gt;0.1&lt;/b&gt;"), "{html}");
        assert!(html.contains("observed &lt;2&gt;"), "{html}");
        assert!(html.contains("<details id=\"report-101\" open"), "{html}");
        assert!(html.contains("data-state=\"failed\""), "{html}");
        // An event's payload is guest text too.
        assert!(
            html.contains("&lt;script&gt;alert(2)&lt;/script&gt;"),
            "{html}"
        );
        assert!(
            html.contains("<tr class=\"event bad\" data-topic=\"Report\">"),
            "{html}"
        );
    }
}
