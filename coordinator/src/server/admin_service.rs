//! The local admin RPCs behind `phoenix apply|status|token|agents|certs|revoke|events|
//! forget|converge`.

use super::{Coordinator, RpcError, guest_id, now_unix};
use crate::events::Kind;
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

/// What a revocation did: the identity's serial and how it and each service certificate
/// were revoked.
struct Revocation {
    serial: String,
    identity: String,
    service_certs: Vec<String>,
}

/// Marks `guest` revoked (in one transaction, so a renewal waiting for the CA cannot
/// undo it), ends its open session with `why`, revokes its certificates at the CA where
/// it keeps a list, and records it.
async fn revoke_guest(c: &Coordinator, guest: GuestId, why: &str) -> Result<Revocation, RpcError> {
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
        Status::permission_denied(format!("guest {guest} was {why}")),
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
    c.events.record(
        Kind::Revoked,
        guest,
        serde_json::json!({
            "serial": rec.serial,
            "identity": identity,
            "service_certs": service_certs,
            "why": why,
        }),
    );
    Ok(Revocation {
        serial: rec.serial,
        identity,
        service_certs,
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::EventMessage, Status>> + Send>>;

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
        w.plan_wait_seconds = w.plan_wait_seconds.max(part.plan_wait_seconds);
    }
    Ok(whole.unwrap_or_default())
}

/// One guest's requested spec, validated and compared with the stored one.
struct Checked {
    guest: GuestId,
    /// Canonical JSON of the spec and its digest: what is stored and pushed.
    json: Vec<u8>,
    digest: String,
    answer: v1::GuestApply,
}

/// Validates `raw` as the spec of `guest` and compares it with `stored`; the errors name
/// the guest.
fn check(
    c: &Coordinator,
    guest: GuestId,
    raw: &[u8],
    stored: Option<&crate::store::DesiredRecord>,
) -> Result<Checked, Vec<String>> {
    let named = |e: &dyn std::fmt::Display| format!("guest {guest}: {e}");
    let spec = GuestSpec::from_json(raw)
        .map_err(|errs| errs.iter().map(|e| named(e)).collect::<Vec<_>>())?;
    let reserved = model::reserved_cert_names(&spec, &c.td);
    if !reserved.is_empty() {
        return Err(reserved.iter().map(|e| named(e)).collect());
    }
    let json = spec.to_json();
    let digest = model::digest(&json);
    let changed = stored.is_none_or(|d| d.digest != digest);
    // An unchanged spec has no diff: its stored twin is not parsed.
    let diff = match stored {
        Some(d) if changed => crate::plan::spec_diff(
            &GuestSpec::from_json(&d.spec_json).unwrap_or_default(),
            &spec,
        ),
        Some(_) => Vec::new(),
        None => crate::plan::spec_diff(&GuestSpec::default(), &spec),
    };
    let answer = v1::GuestApply {
        guest_id: guest.get(),
        revision: stored.map_or(0, |d| d.revision),
        digest: digest.clone(),
        changed,
        connected: c.hub.connected(guest),
        diff,
    };
    Ok(Checked {
        guest,
        json,
        digest,
        answer,
    })
}

/// Guests below which an apply is checked on one thread: below it, starting threads
/// costs more than it saves.
const PARALLEL_FROM: usize = 512;

/// Most threads an apply is checked on: a big host's cores are not all ours.
const MAX_THREADS: usize = 8;

/// `f` over `items`, in order, on the machine's cores: checking a fleet's specs is
/// the part of an apply before anything is pushed, and nothing else runs meanwhile
/// (issue 14: 10,000 guests take ~100 ms on one core).
fn par_map<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS));
    if items.len() < PARALLEL_FROM || threads < 2 {
        return items.iter().map(&f).collect();
    }
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = items
            .chunks(items.len().div_ceil(threads))
            .map(|part| s.spawn(move || part.iter().map(f).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| {
                p.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Validates every guest's spec, then stores the changed ones as one revision and pushes
/// them (or, for a dry run, pushes every one as a plan); one answer per guest.
fn apply_whole(
    c: &Coordinator,
    req: v1::AdminApplyRequest,
) -> Result<Vec<v1::GuestApply>, RpcError> {
    let started = std::time::Instant::now();
    let ids = req
        .guests
        .keys()
        .map(|raw| guest_id(*raw))
        .collect::<Result<Vec<_>, _>>()?;
    let all_stored = c.store.desired_many(&ids).map_err(RpcError::from)?;
    let items: Vec<_> = ids
        .iter()
        .zip(req.guests.values())
        .zip(&all_stored)
        .collect();
    // Every guest's spec is validated before any is stored or pushed.
    let mut checked = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for result in par_map(&items, |((g, raw), stored)| {
        check(c, **g, raw, stored.as_ref())
    }) {
        match result {
            Ok(ok) => checked.push(ok),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(RpcError::BadRequest(errors.join("\n")));
    }
    let checked_at = started.elapsed();
    let mut out = Vec::with_capacity(checked.len());
    let mut to_send = Vec::new();
    for ok in checked {
        if ok.answer.changed || req.dry_run {
            // With the position of its answer, for the diff the event records.
            to_send.push((ok.guest, ok.digest, ok.json, out.len()));
        }
        out.push(ok.answer);
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
        // Unchanged guests are dry-run too, so the plan also shows host drift.
        let plans: Vec<(GuestId, crate::store::DesiredRecord)> = to_send
            .into_iter()
            .map(|(g, digest, spec_json, _)| {
                let rec = crate::store::DesiredRecord {
                    revision: 0,
                    digest,
                    spec_json,
                };
                (g, rec)
            })
            .collect();
        // A cluster hands them to the replica holding each guest's session, for as long
        // as the asker waits.
        let wait = Duration::from_secs(req.plan_wait_seconds);
        if !c
            .store
            .forward_plans(&plans, wait)
            .map_err(RpcError::from)?
        {
            for (g, rec) in &plans {
                let mut state = super::desired_message(rec);
                state.dry_run = true;
                c.hub.push(*g, state);
            }
        }
        return Ok(out);
    }
    if !to_send.is_empty() {
        let (states, answers): (Vec<_>, Vec<_>) = to_send
            .into_iter()
            .map(|(g, digest, json, i)| ((g, digest, json), i))
            .unzip();
        let revision = c.store.put_desired(&states).map_err(RpcError::from)?;
        let stored = started.elapsed();
        for ((g, digest, json), i) in states.into_iter().zip(answers) {
            // Every changed guest is in this revision.
            out[i].revision = revision;
            c.metrics.pushed(g, revision);
            let diff = out[i].diff.clone();
            c.events.record(
                Kind::DesiredPushed,
                g,
                serde_json::json!({
                    "revision": revision,
                    "digest": digest,
                    "diff": diff,
                    "connected": out[i].connected,
                }),
            );
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
        tracing::info!(
            revision,
            guests = out.len(),
            checked_ms = checked_at.as_millis() as u64,
            stored_ms = stored.as_millis() as u64,
            pushed_ms = started.elapsed().as_millis() as u64,
            "apply stored and pushed (milliseconds since it began)"
        );
    }
    Ok(out)
}

/// Every known guest's status from the store, except its last report and whether it is
/// connected (`status` adds those while it streams, one guest at a time).
pub(crate) fn status_without_reports(
    c: &Coordinator,
) -> Result<BTreeMap<GuestId, v1::GuestStatus>, RpcError> {
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
        // Off the admin runtime's one thread: a fleet's apply takes it for hundreds of
        // milliseconds, and the report watchers following that apply run there too.
        let c = self.0.clone();
        let out = tokio::task::spawn_blocking(move || apply_whole(&c, whole))
            .await
            .map_err(|e| Status::internal(format!("apply failed: {e}")))??;
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
                e.replica = c.hub.holder(g).unwrap_or_default();
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
        // Every replica of a cluster, so the agent can fail over (docs/design/0010).
        let replicas = c.store.replica_addrs().map_err(RpcError::from)?;
        let token = JoinToken::mint(&c.advertise, &c.td, &c.ca_fingerprint()?, guest, expires)
            .with_replicas(replicas);
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
            c.hub.clone(),
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
        let r = revoke_guest(c, guest, "revoked").await?;
        Ok(Response::new(v1::RevokeResponse {
            serial: r.serial,
            service_certs: r.service_certs,
            identity: r.identity,
        }))
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        req: Request<v1::EventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let filter = crate::events::stream::Filter::try_from(req.into_inner())
            .map_err(|e| RpcError::BadRequest(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(crate::events::stream::run(
            self.0.events.clone(),
            filter,
            tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// Revokes the guest's identity first (a forgotten guest's certificate must not go
    /// on working: with its record gone it is refused as "not enrolled", and step-ca is
    /// told where it keeps a list), then deletes everything stored about it.
    async fn forget(
        &self,
        req: Request<v1::ForgetRequest>,
    ) -> Result<Response<v1::ForgetResponse>, Status> {
        let c = &self.0;
        let guest = guest_id(req.into_inner().guest_id)?;
        let was_connected = c.hub.connected(guest);
        let enrolled = c.store.agent(guest).map_err(RpcError::from)?;
        let revocation = match &enrolled {
            Some(a) if a.revoked_unix.is_none() => {
                Some(revoke_guest(c, guest, "forgotten by the coordinator").await?)
            }
            _ => None,
        };
        let gone = c.store.forget_guest(guest).map_err(RpcError::from)?;
        c.hub.forget(guest);
        if !gone.anything() && enrolled.is_none() {
            return Err(RpcError::NotFound(format!(
                "guest {guest} is not known to the coordinator (nothing to forget)"
            ))
            .into());
        }
        let mut removed = Vec::new();
        if let Some(serial) = &gone.serial {
            removed.push(format!(
                "agent record (identity {serial}; refused from now on)"
            ));
        }
        if let Some(rev) = gone.desired_revision {
            removed.push(format!("desired state (revision {rev})"));
        }
        if gone.had_declared {
            removed.push("declared facts".into());
        }
        if gone.had_report {
            removed.push("last report".into());
        }
        if gone.service_certs > 0 {
            removed.push(format!(
                "{} service certificate record(s)",
                gone.service_certs
            ));
        }
        if gone.tokens > 0 {
            removed.push(format!("{} join token(s)", gone.tokens));
        }
        tracing::warn!(%guest, was_connected, removed = %removed.join(", "), "guest forgotten");
        let event_index = c
            .events
            .record_wait(
                Kind::GuestForgotten,
                guest,
                serde_json::json!({ "removed": removed, "was_connected": was_connected }),
            )
            .await
            .unwrap_or(0);
        let (identity, service_certs) = revocation
            .map(|r| (r.identity, r.service_certs))
            .unwrap_or_default();
        Ok(Response::new(v1::ForgetResponse {
            removed,
            identity,
            service_certs,
            was_connected,
            event_index,
        }))
    }

    async fn converge(
        &self,
        req: Request<v1::ConvergeRequest>,
    ) -> Result<Response<v1::ConvergeResponse>, Status> {
        let c = &self.0;
        let guest = guest_id(req.into_inner().guest_id)?;
        let desired = c
            .store
            .desired(guest)
            .map_err(RpcError::from)?
            .ok_or_else(|| {
                RpcError::NotFound(format!(
                    "guest {guest} has no desired state; `phoenix apply` one first"
                ))
            })?;
        let after_index = c.store.event_bounds().map_err(RpcError::from)?.last;
        // Here, or through etcd to the replica holding the session (docs/design/0010);
        // its report comes back through the store and the event log, both cluster-wide.
        let replica = if c.hub.request_pass(guest) {
            String::new()
        } else {
            let me = c.cfg.cluster.replica.as_str();
            match c.hub.holder(guest).filter(|h| h != me) {
                Some(holder) if c.store.forward_pass(guest, me).map_err(RpcError::from)? => holder,
                _ => {
                    return Err(RpcError::NotFound(format!(
                        "guest {guest} is not connected; its agent runs a pass when it starts and retries failed ones by itself"
                    ))
                    .into());
                }
            }
        };
        c.events.record(
            Kind::PassRequested,
            guest,
            serde_json::json!({ "revision": desired.revision, "replica": replica }),
        );
        Ok(Response::new(v1::ConvergeResponse {
            revision: desired.revision,
            after_index,
            replica,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Split over threads or not, the answers come back one per item, in the items'
    /// order: apply matches them to guests by position.
    #[test]
    fn par_map_keeps_order_on_both_sides_of_the_threshold() {
        for n in [0, 1, PARALLEL_FROM - 1, PARALLEL_FROM, 10_007] {
            let items: Vec<u64> = (0..n as u64).collect();
            let out = par_map(&items, |x| (x * 3, std::thread::current().id()));
            assert_eq!(
                out.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
                items.iter().map(|x| x * 3).collect::<Vec<_>>(),
                "n = {n}"
            );
            let threads: HashSet<_> = out.iter().map(|(_, t)| *t).collect();
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            if n >= PARALLEL_FROM && cores > 1 {
                assert!(threads.len() > 1, "n = {n} ran on one thread");
            }
        }
    }

    /// A panic in one part reaches the caller (the apply fails) instead of losing answers.
    #[test]
    fn par_map_passes_a_panic_on() {
        let items: Vec<u32> = (0..PARALLEL_FROM as u32 * 2).collect();
        let caught = std::panic::catch_unwind(|| {
            par_map(&items, |x| {
                assert_ne!(*x, PARALLEL_FROM as u32 + 3, "boom");
                *x
            })
        });
        assert!(caught.is_err());
    }
}
