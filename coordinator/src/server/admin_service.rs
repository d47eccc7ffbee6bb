//! The local admin RPCs behind `phoenix apply|status|token|agents|certs`.

use super::{Coordinator, RpcError, guest_id, now_unix};
use crate::store::StoreError;
use phoenix_proto::model::{self, GuestId, GuestSpec};
use phoenix_proto::token::JoinToken;
use phoenix_proto::v1;
use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct AdminApi(pub Arc<Coordinator>);

/// Resource-level difference between two specs: `+ id`, `- id`, `~ id`.
pub fn spec_diff(old: &GuestSpec, new: &GuestSpec) -> Vec<String> {
    let index = |s: &GuestSpec| -> BTreeMap<String, model::Resource> {
        s.resources()
            .iter()
            .map(|r| (r.id().to_string(), r.clone()))
            .collect()
    };
    let (a, b) = (index(old), index(new));
    let mut out = Vec::new();
    for (id, r) in &b {
        match a.get(id) {
            None => out.push(format!("+ {id}")),
            Some(prev) if prev != r => out.push(format!("~ {id}")),
            Some(_) => {}
        }
    }
    for id in a.keys().filter(|id| !b.contains_key(*id)) {
        out.push(format!("- {id}"));
    }
    out
}

/// Revokes `serial` at the CA where it keeps a list; says how it went, for the operator.
async fn revoke_at_ca(c: &Coordinator, serial: &str) -> String {
    match c.ca.revoke_serial(serial, "phoenix revoke").await {
        Ok(true) => format!("revoked at {} and deny-listed by Phoenix", c.ca.name()),
        Ok(false) => format!(
            "deny-listed by Phoenix only (the {} CA keeps no revocation list)",
            c.ca.name()
        ),
        Err(e) => format!(
            "deny-listed by Phoenix; revoking at {} failed: {e}",
            c.ca.name()
        ),
    }
}

type ReportStream = Pin<Box<dyn Stream<Item = Result<v1::ReportEvent, Status>> + Send>>;

type ApplyStream = Pin<Box<dyn Stream<Item = Result<v1::GuestApply, Status>> + Send>>;
type StatusStream = Pin<Box<dyn Stream<Item = Result<v1::GuestStatus, Status>> + Send>>;

/// Joins the parts of one streamed apply into one request; refuses parts that disagree
/// on `dry_run` or name a guest twice.
async fn join_parts(
    mut parts: tonic::Streaming<v1::AdminApplyRequest>,
) -> Result<v1::AdminApplyRequest, Status> {
    let mut whole: Option<v1::AdminApplyRequest> = None;
    while let Some(part) = parts.message().await? {
        let Some(w) = whole.as_mut() else {
            whole = Some(part);
            continue;
        };
        if part.dry_run != w.dry_run {
            return Err(RpcError::BadRequest(
                "apply parts disagree on dry_run (one apply is a plan or not)".into(),
            )
            .into());
        }
        for (g, spec) in part.guests {
            if w.guests.insert(g, spec).is_some() {
                return Err(RpcError::BadRequest(format!(
                    "guest {g} appears in two parts of one apply"
                ))
                .into());
            }
        }
        w.declared_json.extend(part.declared_json);
    }
    Ok(whole.unwrap_or_default())
}

/// Validates every guest's spec, then stores the changed ones as one revision and pushes
/// them (or, for a dry run, pushes every one as a plan); one answer per guest.
fn apply_whole(
    c: &Coordinator,
    req: v1::AdminApplyRequest,
) -> Result<Vec<v1::GuestApply>, RpcError> {
    // Validate every guest's spec before storing or pushing any.
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for (raw, json) in &req.guests {
        let guest = guest_id(*raw)?;
        match GuestSpec::from_json(json) {
            Ok(spec) => {
                let reserved = model::reserved_cert_names(&spec, &c.td);
                errors.extend(reserved.into_iter().map(|e| format!("guest {guest}: {e}")));
                parsed.push((guest, spec));
            }
            Err(errs) => errors.extend(errs.into_iter().map(|e| format!("guest {guest}: {e}"))),
        }
    }
    if !errors.is_empty() {
        return Err(RpcError::BadRequest(errors.join("\n")));
    }
    let mut out = Vec::new();
    let mut to_store = Vec::new();
    for (guest, spec) in &parsed {
        let json = spec.to_json();
        let digest = model::digest(&json);
        let stored = c.store.desired(*guest).map_err(RpcError::from)?;
        let old_spec = stored
            .as_ref()
            .and_then(|d| GuestSpec::from_json(&d.spec_json).ok())
            .unwrap_or_default();
        let changed = stored.as_ref().map(|d| d.digest != digest).unwrap_or(true);
        out.push(v1::GuestApply {
            guest_id: guest.get(),
            revision: stored.as_ref().map(|d| d.revision).unwrap_or(0),
            digest: digest.clone(),
            changed,
            connected: c.hub.connected(*guest),
            diff: spec_diff(&old_spec, spec),
        });
        if changed {
            to_store.push((*guest, digest, json));
        }
    }
    if !req.dry_run {
        let mut declared = Vec::new();
        for (raw, json) in &req.declared_json {
            let g = guest_id(*raw)?;
            if c.store.declared(g).map_err(RpcError::from)?.as_deref() != Some(json.as_slice()) {
                declared.push((g, json.clone()));
            }
        }
        if !declared.is_empty() {
            c.store
                .put_declared_many(&declared)
                .map_err(RpcError::from)?;
        }
    }
    if req.dry_run {
        for (g, digest, json) in &to_store {
            c.hub.push(
                *g,
                v1::DesiredState {
                    revision: 0,
                    digest: digest.clone(),
                    spec_json: json.clone(),
                    dry_run: true,
                },
            );
        }
        // Unchanged guests are dry-run too, so the plan also shows host drift.
        for (g, spec) in &parsed {
            if !to_store.iter().any(|(x, _, _)| x == g) {
                let json = spec.to_json();
                c.hub.push(
                    *g,
                    v1::DesiredState {
                        revision: 0,
                        digest: model::digest(&json),
                        spec_json: json,
                        dry_run: true,
                    },
                );
            }
        }
        return Ok(out);
    }
    if !to_store.is_empty() {
        let revision = c.store.put_desired(&to_store).map_err(RpcError::from)?;
        // Every changed guest is in this revision.
        for entry in out.iter_mut().filter(|o| o.changed) {
            entry.revision = revision;
        }
        for (g, digest, json) in to_store {
            c.metrics.pushed(g, revision);
            c.hub.push(
                g,
                v1::DesiredState {
                    revision,
                    digest,
                    spec_json: json,
                    dry_run: false,
                },
            );
        }
    }
    Ok(out)
}

/// Every known guest's status from the store, except its last report and whether it is
/// connected (`status` adds those while it streams, one guest at a time).
fn status_without_reports(c: &Coordinator) -> Result<BTreeMap<GuestId, v1::GuestStatus>, RpcError> {
    let mut guests: BTreeMap<GuestId, v1::GuestStatus> = BTreeMap::new();
    for (g, d) in c.store.all_desired().map_err(RpcError::from)? {
        let e = guests.entry(g).or_default();
        e.guest_id = g.get();
        e.wanted_revision = d.revision;
        e.wanted_digest = d.digest;
    }
    for (g, a) in c.store.agents().map_err(RpcError::from)? {
        let e = guests.entry(g).or_default();
        e.guest_id = g.get();
        e.enrolled = true;
        e.applied_revision = a.applied_revision;
        e.applied_digest = a.applied_digest;
        e.cert_not_after_unix = a.not_after_unix;
        e.agent_version = a.agent_version;
        e.last_seen_unix = a.last_seen_unix;
        e.facts = prost::Message::decode(a.facts.as_slice()).ok();
        e.revoked_unix = a.revoked_unix.unwrap_or(0);
    }
    for (g, e) in guests.iter_mut() {
        let declared = c
            .store
            .declared(*g)
            .map_err(RpcError::from)?
            .and_then(|j| serde_json::from_slice::<phoenix_proto::model::Declared>(&j).ok());
        if let (Some(d), Some(f)) = (declared, e.facts.as_ref()) {
            e.mismatches = phoenix_proto::model::compare(&d, f)
                .iter()
                .map(|m| m.to_string())
                .collect();
        }
    }
    Ok(guests)
}

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminApi {
    type ApplyStream = ApplyStream;

    async fn apply(
        &self,
        req: Request<tonic::Streaming<v1::AdminApplyRequest>>,
    ) -> Result<Response<ApplyStream>, Status> {
        let whole = join_parts(req.into_inner()).await?;
        let out = apply_whole(&self.0, whole)?;
        Ok(Response::new(Box::pin(tokio_stream::iter(
            out.into_iter().map(Ok),
        ))))
    }

    type StatusStream = StatusStream;

    async fn status(
        &self,
        _req: Request<v1::StatusRequest>,
    ) -> Result<Response<StatusStream>, Status> {
        let c = self.0.clone();
        let guests = status_without_reports(&c)?;
        // The last reports are most of the answer: read one at a time as the client takes them.
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            for (g, mut e) in guests {
                e.connected = c.hub.connected(g);
                let item = match c.store.report(g) {
                    Ok(r) => {
                        if let Some(r) = r {
                            e.last_report = Some(v1::ApplyReport::from(&r.report));
                            e.last_report_unix = r.received_unix;
                        }
                        Ok(e)
                    }
                    Err(err) => Err(Status::from(RpcError::from(err))),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn create_token(
        &self,
        req: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let c = &self.0;
        let req = req.into_inner();
        let guest = guest_id(req.guest_id)?;
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            s => Duration::from_secs(s),
        };
        if ttl > MAX_TOKEN_TTL {
            return Err(RpcError::BadRequest(format!(
                "token lifetime {}s exceeds the maximum of {}s",
                ttl.as_secs(),
                MAX_TOKEN_TTL.as_secs()
            ))
            .into());
        }
        let expires = now_unix() + ttl.as_secs() as i64;
        let token = JoinToken::mint(&c.advertise, &c.td, &c.ca_fingerprint()?, guest, expires);
        c.store
            .put_token(
                &token.secret_hash(),
                &crate::store::TokenRecord {
                    guest,
                    expires_unix: expires,
                    used_unix: None,
                    issued_serial: None,
                    replace: req.replace,
                },
            )
            .map_err(RpcError::from)?;
        Ok(Response::new(v1::CreateTokenResponse {
            token: token.encode(),
            expires_unix: expires,
        }))
    }

    type WatchReportsStream = ReportStream;

    async fn watch_reports(
        &self,
        req: Request<v1::WatchReportsRequest>,
    ) -> Result<Response<ReportStream>, Status> {
        let c = &self.0;
        let wanted: HashSet<GuestId> = req
            .into_inner()
            .guest_ids
            .into_iter()
            .map(guest_id)
            .collect::<Result<_, _>>()?;
        // Subscribe before the watcher reads the store so nothing falls in between. The
        // stored reports are sent by the watcher's own task: sending them here, before the
        // stream is returned, blocked once more than the channel's 64 slots were stored
        // (and with it `phoenix apply`, which opens this watch first).
        let live = c.hub.subscribe_reports();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(super::report_watch::run(
            c.store.clone(),
            live,
            wanted,
            tx,
            c.metrics.clone(),
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn revoke(
        &self,
        req: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        let c = &self.0;
        let guest = guest_id(req.into_inner().guest_id)?;
        // In one transaction, so a renewal waiting for the CA cannot undo it.
        let rec = c
            .store
            .revoke_agent(guest, now_unix())
            .map_err(|e| match e {
                StoreError::NotEnrolled { .. } => RpcError::NotFound(e.to_string()),
                e => RpcError::from(e),
            })?;
        // Its open session ends now, not at its next reconnect.
        c.hub.end_sessions(
            guest,
            Status::permission_denied(format!("guest {guest} was revoked")),
        );
        let identity = revoke_at_ca(c, &rec.serial).await;
        tracing::warn!(%guest, serial = %rec.serial, how = %identity, "agent identity revoked");
        let mut service_certs = Vec::new();
        for (g, mut cert) in c.store.service_certs().map_err(RpcError::from)? {
            if g != guest || cert.serial.is_empty() || cert.revoked.is_some() {
                continue;
            }
            let how = revoke_at_ca(c, &cert.serial).await;
            tracing::warn!(%guest, cert = %cert.name, serial = %cert.serial, how = %how, "service certificate revoked");
            service_certs.push(format!("{} ({}): {how}", cert.name, cert.serial));
            cert.revoked = Some(how);
            c.store
                .put_service_cert(guest, &cert)
                .map_err(RpcError::from)?;
        }
        Ok(Response::new(v1::RevokeResponse {
            serial: rec.serial,
            service_certs,
            identity,
        }))
    }

    async fn certs(
        &self,
        _req: Request<v1::CertsRequest>,
    ) -> Result<Response<v1::CertsResponse>, Status> {
        let c = &self.0;
        let own = c.identity.current().info;
        let mut certs = vec![v1::CertEntry {
            guest_id: 0,
            kind: "coordinator".into(),
            subject: own.common_name.clone(),
            sans: own.sans.iter().map(|s| s.to_string()).collect(),
            not_after_unix: super::unix(own.not_after),
            last_renewal_unix: super::unix(own.not_before),
            last_result: "ok".into(),
            serial: own.serial_hex.clone(),
        }];
        for (g, a) in c.store.agents().map_err(RpcError::from)? {
            certs.push(v1::CertEntry {
                guest_id: g.get(),
                kind: "identity".into(),
                subject: format!("guest-{g}"),
                sans: vec![format!("URI:{}", c.td.guest_uri(g))],
                not_after_unix: a.not_after_unix,
                last_renewal_unix: a.renewed_unix,
                last_result: match a.revoked_unix {
                    Some(at) => format!("revoked at unix time {at} (deny-listed by Phoenix)"),
                    None => "ok".into(),
                },
                serial: a.serial,
            });
        }
        for (g, rec) in c.store.service_certs().map_err(RpcError::from)? {
            // The agent's view of the last attempt (signing, writing, reloading) wins when
            // the coordinator's part succeeded.
            let agent_result = c
                .store
                .report(g)
                .map_err(RpcError::from)?
                .and_then(|r| {
                    let id = format!("cert:{}", rec.name);
                    r.report.results.into_iter().find(|x| x.resource == id)
                })
                .map(|x| match x.status {
                    phoenix_proto::model::Status::Failed => format!("failed: {}", x.message),
                    s => s.to_string(),
                });
            certs.push(v1::CertEntry {
                guest_id: g.get(),
                kind: format!("cert:{}", rec.name),
                subject: rec.common_name,
                sans: rec
                    .sans
                    .iter()
                    .map(|s| phoenix_pki::San::host(s).to_string())
                    .collect(),
                not_after_unix: rec.not_after_unix,
                last_renewal_unix: rec.issued_unix,
                last_result: match (rec.revoked, rec.result.as_str(), agent_result) {
                    (Some(how), _, _) => format!("revoked: {how}"),
                    (None, "ok", Some(a)) => a,
                    (None, r, _) => r.to_string(),
                },
                serial: rec.serial,
            });
        }
        Ok(Response::new(v1::CertsResponse { certs }))
    }
}
