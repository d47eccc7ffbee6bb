//! What the page shows, read from the coordinator at request time (the same sources as
//! `phoenix status` and `phoenix certs`, so the two never disagree) into plain values
//! that [`super::page`] renders without touching the store.

use crate::server::{Coordinator, RpcError, now_unix, status_without_reports, unix};
use crate::store::Event;
use phoenix_proto::model::{ApplyReport, GuestId, Status};
use phoenix_proto::v1;

/// Everything on one page.
#[derive(Debug, Default)]
pub(super) struct Page {
    pub now_unix: i64,
    pub trust_domain: String,
    /// Which CA signs ("embedded", "step-ca") and the certificate that signs for it.
    pub ca: String,
    pub issuer: String,
    /// Ordered by guest id.
    pub guests: Vec<GuestView>,
    /// The coordinator's own certificate first, then identities and service certs by guest.
    pub certs: Vec<CertView>,
    /// The most recent events, newest first.
    pub events: Vec<Event>,
}

/// Events shown: enough for "what just happened", few enough to read.
const RECENT_EVENTS: usize = 25;

#[derive(Debug, Default)]
pub(super) struct GuestView {
    pub status: v1::GuestStatus,
    pub report: Option<ApplyReport>,
}

#[derive(Debug, Default)]
pub(super) struct CertView {
    /// None: the coordinator's own.
    pub guest: Option<u32>,
    pub kind: String,
    pub subject: String,
    pub sans: Vec<String>,
    pub not_after_unix: i64,
    pub result: String,
}

/// One word for a guest's state, worst first, as an operator triages: what needs a
/// look (revoked, failing, behind), what is away, what is fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Revoked,
    NotEnrolled,
    Failed,
    /// Connected, but its last applied revision is older than the wanted one.
    Behind,
    Offline,
    NoReport,
    Converged,
}

impl Health {
    pub fn label(self) -> &'static str {
        match self {
            Health::Revoked => "revoked",
            Health::NotEnrolled => "not enrolled",
            Health::Failed => "failed",
            Health::Behind => "applying",
            Health::Offline => "offline",
            Health::NoReport => "no report",
            Health::Converged => "converged",
        }
    }

    /// CSS class: `bad` needs a look, `warn` is away or in progress, `ok` is fine.
    pub(super) fn class(self) -> &'static str {
        match self {
            Health::Revoked | Health::Failed => "bad",
            Health::NotEnrolled | Health::Behind | Health::Offline | Health::NoReport => "warn",
            Health::Converged => "ok",
        }
    }
}

/// The state of a guest from its status and last stored report; `phoenix status` shows
/// the same word.
pub fn health(s: &v1::GuestStatus, report: Option<&ApplyReport>) -> Health {
    if s.revoked_unix != 0 {
        return Health::Revoked;
    }
    if !s.enrolled {
        return Health::NotEnrolled;
    }
    if report.is_some_and(|r| !r.converged()) {
        return Health::Failed;
    }
    if !s.connected {
        return Health::Offline;
    }
    match report {
        None => Health::NoReport,
        Some(_) if s.applied_revision < s.wanted_revision => Health::Behind,
        Some(_) => Health::Converged,
    }
}

impl GuestView {
    pub(super) fn health(&self) -> Health {
        health(&self.status, self.report.as_ref())
    }

    /// Results that did not converge: failed first, then skipped.
    pub(super) fn failures(&self) -> Vec<&phoenix_proto::model::ResourceResult> {
        let mut out: Vec<_> = self
            .report
            .iter()
            .flat_map(|r| r.results.iter())
            .filter(|r| matches!(r.status, Status::Failed | Status::Skipped))
            .collect();
        out.sort_by_key(|r| r.status != Status::Failed);
        out
    }
}

/// Reads the page from `c`.
pub(super) fn gather(c: &Coordinator) -> Result<Page, RpcError> {
    let mut guests = Vec::new();
    for (g, mut status) in status_without_reports(c)? {
        status.connected = c.hub.connected(g);
        status.replica = c.hub.holder(g).unwrap_or_default();
        let stored = c.store.report(g)?;
        if let Some(r) = &stored {
            status.last_report_unix = r.received_unix;
        }
        guests.push(GuestView {
            status,
            report: stored.map(|r| r.report),
        });
    }
    let own = c.identity.current();
    let issuer = phoenix_pki::x509::parse_chain(&own.chain_pem, "coordinator chain")
        .ok()
        .and_then(|chain| {
            chain
                .get(1)
                .and_then(|d| phoenix_pki::x509::inspect(d).ok())
        })
        .map(|i| i.common_name)
        .unwrap_or_default();
    let mut certs = vec![CertView {
        guest: None,
        kind: "coordinator".into(),
        subject: own.info.common_name.clone(),
        sans: own.info.sans.iter().map(|s| s.to_string()).collect(),
        not_after_unix: unix(own.info.not_after),
        result: "ok".into(),
    }];
    let mut by_guest: Vec<(GuestId, CertView)> = Vec::new();
    for (g, a) in c.store.agents()? {
        by_guest.push((
            g,
            CertView {
                guest: Some(g.get()),
                kind: "identity".into(),
                subject: format!("guest-{g}"),
                sans: vec![format!("URI:{}", c.td.guest_uri(g))],
                not_after_unix: a.not_after_unix,
                result: match a.revoked_unix {
                    Some(_) => "revoked".into(),
                    None => "ok".into(),
                },
            },
        ));
    }
    for (g, rec) in c.store.service_certs()? {
        by_guest.push((
            g,
            CertView {
                guest: Some(g.get()),
                kind: format!("cert:{}", rec.name),
                subject: rec.common_name,
                sans: rec
                    .sans
                    .iter()
                    .map(|s| phoenix_pki::San::host(s).to_string())
                    .collect(),
                not_after_unix: rec.not_after_unix,
                result: match rec.revoked {
                    Some(how) => format!("revoked: {how}"),
                    None => rec.result,
                },
            },
        ));
    }
    by_guest.sort_by(|a, b| (a.0, &a.1.kind).cmp(&(b.0, &b.1.kind)));
    certs.extend(by_guest.into_iter().map(|(_, v)| v));
    // Indexes may have gaps, so this may return fewer than RECENT_EVENTS; never more.
    let last = c.store.event_bounds()?.last;
    let mut events = c
        .store
        .events_since(last.saturating_sub(RECENT_EVENTS as u64), RECENT_EVENTS)?;
    events.reverse();
    Ok(Page {
        now_unix: now_unix(),
        events,
        trust_domain: c.td.as_str().to_string(),
        ca: c.ca.name().to_string(),
        issuer,
        guests,
        certs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_proto::model::ResourceResult;

    fn result(resource: &str, status: Status) -> ResourceResult {
        ResourceResult {
            resource: resource.into(),
            status,
            message: String::new(),
            duration_micros: 0,
            diff: String::new(),
        }
    }

    fn guest(
        connected: bool,
        wanted: u64,
        applied: u64,
        results: Option<Vec<ResourceResult>>,
    ) -> GuestView {
        GuestView {
            status: v1::GuestStatus {
                guest_id: 101,
                enrolled: true,
                connected,
                wanted_revision: wanted,
                applied_revision: applied,
                ..Default::default()
            },
            report: results.map(|results| ApplyReport {
                revision: applied,
                digest: String::new(),
                dry_run: false,
                results,
                duration_micros: 0,
                trigger: "push".into(),
            }),
        }
    }

    #[test]
    fn health_names_the_worst_thing_first() {
        let ok = vec![result("file:/a", Status::Unchanged)];
        let bad = vec![
            result("file:/a", Status::Skipped),
            result("file:/b", Status::Failed),
        ];
        assert_eq!(
            guest(true, 2, 2, Some(ok.clone())).health(),
            Health::Converged
        );
        assert_eq!(guest(true, 3, 2, Some(ok.clone())).health(), Health::Behind);
        assert_eq!(guest(false, 2, 2, Some(ok)).health(), Health::Offline);
        assert_eq!(
            guest(false, 2, 2, Some(bad.clone())).health(),
            Health::Failed
        );
        assert_eq!(guest(true, 1, 0, None).health(), Health::NoReport);
        let mut revoked = guest(true, 2, 2, Some(bad.clone()));
        revoked.status.revoked_unix = 5;
        assert_eq!(revoked.health(), Health::Revoked);
        let failing = guest(true, 2, 2, Some(bad));
        let order: Vec<&str> = failing
            .failures()
            .iter()
            .map(|r| r.resource.as_str())
            .collect();
        assert_eq!(order, ["file:/b", "file:/a"], "failed before skipped");
    }
}
