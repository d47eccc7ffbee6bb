//! The agent-facing RPCs. Identity rules: an agent is whoever holds a certificate from
//! our CA whose URI SAN is `spiffe://<td>/guest/<id>` and whose serial is the one we
//! issued last for that guest (a rebuilt guest's new enrollment retires the old cert).

use super::hub::{Attachment, Claimed, Hub, SessionInUse, Signal};
use super::{Coordinator, RpcError, guest_id, now_unix, unix};
use crate::events::report::{Delivery, payload as report_payload};
use crate::events::{Kind, now_unix_ms};
use crate::metrics::{CertKind, EventDrop};
use crate::store::{AgentRecord, ReportRecord, ReportWrite, StoreError};
use phoenix_ca::IssueRequest;
use phoenix_pki::San;
use phoenix_pki::x509::{self, CertInfo};
use phoenix_proto::model::{ApplyReport, GuestId, GuestSpec, Resource, reserved_name};
use phoenix_proto::token::JoinToken;
use phoenix_proto::v1::{self, agent_message, coordinator_message};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentApi(pub Arc<Coordinator>);

impl AgentApi {
    /// Records a refused session: limited per guest, as the agent retries on its own.
    fn refused<T>(&self, req: &Request<T>, peer: &str, e: &RpcError) {
        let claimed = self.claimed_guest(req);
        let source = claimed.map_or_else(
            || peer.rsplit_once(':').map_or(peer, |(h, _)| h).to_string(),
            |g| g.to_string(),
        );
        self.0.events.record_limited(
            Kind::SessionRefused,
            claimed.map_or_else(|| "unknown".to_string(), |g| g.to_string()),
            &source,
            serde_json::json!({ "peer": peer, "error": e.to_string() }),
        );
    }

    /// The guest a request's client certificate names, unverified (for the event log).
    fn claimed_guest<T>(&self, req: &Request<T>) -> Option<GuestId> {
        let certs = req.peer_certs()?;
        let info = x509::inspect(certs.first()?).ok()?;
        info.uris().find_map(|u| self.0.td.parse_guest_uri(u))
    }

    /// The guest a request's client certificate speaks for, with its current record.
    fn authenticate<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(GuestId, CertInfo, AgentRecord), RpcError> {
        let c = &self.0;
        let certs = req.peer_certs().ok_or_else(|| {
            RpcError::Unauthenticated("a client certificate is required (enroll first)".into())
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| RpcError::Unauthenticated("empty client certificate chain".into()))?;
        let info = x509::inspect(leaf).map_err(|e| RpcError::Unauthenticated(e.to_string()))?;
        let prefix = format!("spiffe://{}/", c.td);
        let uri = info
            .uris()
            .find(|u| u.starts_with(&prefix))
            .ok_or_else(|| {
                RpcError::Denied(format!(
                    "client certificate carries no identity in trust domain {}",
                    c.td
                ))
            })?
            .to_string();
        let guest = c.td.parse_guest_uri(&uri).ok_or_else(|| {
            RpcError::Denied(format!(
                "certificate identity {uri} is not an agent identity"
            ))
        })?;
        let rec = c
            .store
            .agent(guest)?
            .ok_or_else(|| RpcError::Denied(format!("guest {guest} is not enrolled")))?;
        current_or_previous(guest, &rec, &info.serial_hex)?;
        Ok((guest, info, rec))
    }

    async fn issue_identity(
        &self,
        guest: GuestId,
        csr_pem: String,
    ) -> Result<phoenix_ca::Issued, RpcError> {
        let c = &self.0;
        let issued =
            c.ca.issue(IssueRequest {
                csr_pem,
                common_name: format!("guest-{guest}"),
                sans: vec![San::Uri(c.td.guest_uri(guest))],
                ttl: c.cfg.agent_cert_ttl,
            })
            .await;
        c.events.ca_result(
            c.ca.name(),
            "issue an agent identity",
            issued.as_ref().map(drop).map_err(|e| e.to_string()),
        );
        Ok(issued?)
    }

    /// Enrolls with a join token. The token is only used once the CA has signed and the
    /// identity is stored, in the transaction that stores it; a CA outage leaves it
    /// usable. Returns the guest, its new identity and whether an identity was replaced.
    async fn enroll_checked(
        &self,
        req: v1::EnrollRequest,
    ) -> Result<(GuestId, phoenix_ca::Issued, bool), RpcError> {
        let c = &self.0;
        let guest = guest_id(req.guest_id)?;
        let token =
            JoinToken::decode(&req.token).map_err(|e| RpcError::BadRequest(e.to_string()))?;
        let hash = token.secret_hash();
        let tok = c.store.check_token(&hash, guest, now_unix())?;
        let current = c.store.agent(guest)?;
        if let Some(cur) = &current
            && cur.revoked_unix.is_none()
            && c.hub.connected(guest)
            && !tok.replace
        {
            return Err(RpcError::Denied(format!(
                "guest {guest} is connected with its current identity (serial {}); a token that replaces it must be created with `phoenix token create --guest {guest} --replace`",
                cur.serial
            )));
        }
        let issued = self.issue_identity(guest, req.csr_pem).await?;
        let now = now_unix();
        c.store.enroll(
            &hash,
            guest,
            now,
            current.as_ref().map(|r| r.serial.as_str()),
            &AgentRecord {
                serial: issued.serial.clone(),
                previous_serial: None,
                not_after_unix: unix(issued.not_after),
                enrolled_unix: now,
                renewed_unix: now,
                last_seen_unix: now,
                confirmed: false,
                ..AgentRecord::default()
            },
        )?;
        if current.is_some() {
            c.hub.end_sessions(
                guest,
                Status::permission_denied(format!(
                    "identity of guest {guest} was replaced by a new enrollment"
                )),
            );
        }
        let replaced = current.is_some();
        Ok((guest, issued, replaced))
    }

    /// Stores and records a report. `pass`: it came from the agent's outbox (else a
    /// plain report of an older agent or a plan); returns the outbox position to
    /// acknowledge, once the report is durably recorded (or was recorded before).
    async fn handle_report(
        &self,
        guest: GuestId,
        report: v1::ApplyReport,
        pass: Option<&v1::PassReport>,
        session_opened_unix_ms: i64,
    ) -> Result<Option<u64>, RpcError> {
        let c = &self.0;
        let report =
            ApplyReport::try_from(report).map_err(|e| RpcError::BadRequest(e.to_string()))?;
        // A plan is news for whoever asked for it, not the guest's state.
        if report.dry_run {
            c.hub.publish_report(guest, 0, Arc::new(report));
            return Ok(None);
        }
        let seq = pass.map(|p| p.seq);
        if let Some(seq) = seq {
            let seen = c.store.agent(guest)?.map_or(0, |a| a.last_pass_seq);
            if seq <= seen {
                // Recorded before; the acknowledgement was lost.
                return Ok(Some(seq));
            }
        }
        if let Some(p) = pass.filter(|p| p.dropped_before > 0) {
            c.metrics
                .events_dropped(EventDrop::AgentOutbox, p.dropped_before);
            c.events
                .record_paced(
                    Kind::ReportsDropped,
                    guest,
                    serde_json::json!({ "dropped": p.dropped_before, "before_seq": p.seq }),
                )
                .await;
        }
        let received = now_unix_ms();
        let payload = report_payload(
            &report,
            Delivery {
                seq,
                finished_unix_ms: pass.map(|p| p.finished_unix_ms),
                received_unix_ms: received,
                session_opened_unix_ms,
            },
        );
        let kind = if report.converged() {
            Kind::Applied
        } else {
            Kind::ApplyFailed
        };
        // The report and its event are stored in one commit (or the event first): a
        // report is never marked seen without its event. Acknowledged only once durable:
        // until then the agent keeps it and sends it again. Batched with the other
        // sessions' reports and events; the writer publishes it to report watchers.
        // In flight until published: a report watcher opened meanwhile reads the log from
        // below it (report_watch).
        let _pending = c.hub.report_pending(c.events.last_index());
        let (revision, converged) = (report.revision, report.converged());
        c.events
            .record_report(
                kind,
                ReportWrite {
                    guest,
                    converged,
                    pass_seq: seq,
                    record: ReportRecord {
                        seq: 0,
                        event: 0,
                        received_unix: now_unix(),
                        report,
                    },
                },
                payload,
            )
            .await?;
        c.metrics.reported(guest, revision);
        Ok(seq)
    }
}

/// Whether a certificate with `serial` still speaks for `guest`: not revoked, and the
/// current serial or the one just renewed away from.
fn current_or_previous(guest: GuestId, rec: &AgentRecord, serial: &str) -> Result<(), RpcError> {
    if let Some(at) = rec.revoked_unix {
        return Err(RpcError::Identity(StoreError::Revoked { guest, at }));
    }
    if serial != rec.serial && rec.previous_serial.as_deref() != Some(serial) {
        return Err(RpcError::Denied(format!(
            "certificate {serial} of guest {guest} was replaced by a newer enrollment"
        )));
    }
    Ok(())
}

/// How long a session whose certificate (`serial`) just expired may go on: as long as
/// the identity its holder renewed from that certificate (the agent renews over its open
/// connection, so rotation does not cut the stream). None: not renewed, or revoked.
fn renewed_through(c: &Coordinator, guest: GuestId, serial: &str) -> Option<Duration> {
    let rec = c.store.agent(guest).ok()??;
    if rec.revoked_unix.is_some() || rec.previous_serial.as_deref() != Some(serial) {
        return None;
    }
    let left = rec.not_after_unix.checked_sub(now_unix())?;
    (left > 0).then(|| Duration::from_secs(left.unsigned_abs()))
}

/// Longest agent version and fact strings kept from a Hello: they are the guest's own
/// words and end up in the operator's terminal.
const MAX_VERSION_CHARS: usize = 64;
const MAX_HOSTNAME_CHARS: usize = 253;
const MAX_FACT_CHARS: usize = 256;
const MAX_LIST_ITEMS: usize = 64;

/// `s` cut to `max` characters (marked with "…" when cut).
fn bounded(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn bounded_facts(mut f: v1::Facts) -> v1::Facts {
    f.hostname = bounded(&f.hostname, MAX_HOSTNAME_CHARS);
    f.os = bounded(&f.os, MAX_FACT_CHARS);
    f.kernel = bounded(&f.kernel, MAX_FACT_CHARS);
    f.disks.truncate(MAX_LIST_ITEMS);
    for d in &mut f.disks {
        d.mount_point = bounded(&d.mount_point, MAX_FACT_CHARS);
    }
    // The agent sends at most 256 mounts (pseudo filesystems left out); keep as many here so
    // a declared mount point is not reported missing because of a cut.
    f.mounts.truncate(4 * MAX_LIST_ITEMS);
    for m in &mut f.mounts {
        m.mount_point = bounded(&m.mount_point, MAX_FACT_CHARS);
        m.source = bounded(&m.source, MAX_FACT_CHARS);
        m.fs_type = bounded(&m.fs_type, MAX_FACT_CHARS);
    }
    f.interfaces.truncate(MAX_LIST_ITEMS);
    for i in &mut f.interfaces {
        i.name = bounded(&i.name, MAX_FACT_CHARS);
        i.addresses.truncate(MAX_LIST_ITEMS);
        for a in &mut i.addresses {
            *a = bounded(a, MAX_FACT_CHARS);
        }
    }
    f
}

/// How long a new session waits for the guest's previous one to be noticed as gone: an
/// agent restarted (or reconnecting after a renewal) can be back before its old
/// connection's close reaches us. A half-open old connection is found by keepalive
/// within about 30 s; the agent retries until then.
const PREVIOUS_SESSION_GRACE: Duration = Duration::from_secs(3);

/// Why a session could not be attached.
enum NotAttached {
    InUse(SessionInUse),
    Unavailable(String),
}

/// Attaches the session of `guest` here and, in a cluster, claims it in etcd: one live
/// session per identity across every replica (docs/design/0012). A session another
/// replica holds is waited for up to `remote_grace`: that replica may have died, and its
/// lease (with the guest's holder key) expires within the lease TTL, after which the
/// agent failing over from it is served here. Past the grace it is a second live
/// holder of the identity, refused like one on a single coordinator.
async fn attach_when_free(
    hub: &Arc<Hub>,
    guest: GuestId,
    remote_grace: Duration,
) -> Result<Attachment, NotAttached> {
    let t0 = tokio::time::Instant::now();
    loop {
        let attachment = match hub.attach(guest) {
            Ok(a) => a,
            Err(_) if t0.elapsed() < PREVIOUS_SESSION_GRACE => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(NotAttached::InUse(e)),
        };
        match hub.claim(guest).await {
            Claimed::Held => return Ok(attachment),
            Claimed::Failed(reason) => return Err(NotAttached::Unavailable(reason)),
            Claimed::HeldBy(other) => {
                drop(attachment);
                let deadline = t0 + remote_grace;
                if tokio::time::Instant::now() >= deadline {
                    return Err(NotAttached::InUse(SessionInUse {
                        guest,
                        holder: Some(other),
                    }));
                }
                // Until the holder's registration goes (its session closed, or its
                // replica's lease expired), seen through the change feed; etcd is asked
                // again at least every second.
                let next = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
                while hub.held_by(guest, &other) && tokio::time::Instant::now() < next {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::CoordinatorMessage, Status>> + Send>>;

fn msg(m: coordinator_message::Msg) -> v1::CoordinatorMessage {
    v1::CoordinatorMessage { msg: Some(m) }
}

#[tonic::async_trait]
impl v1::agent_server::Agent for AgentApi {
    async fn enroll(
        &self,
        req: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let peer = req
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let req = req.into_inner();
        let claimed = req.guest_id;
        match self.enroll_checked(req).await {
            Ok((guest, issued, replaced)) => {
                tracing::info!(%guest, %peer, serial = %issued.serial, replaced, "agent enrolled");
                let c = &self.0;
                c.events
                    .record_paced(
                        Kind::Enrolled,
                        guest,
                        serde_json::json!({
                            "peer": peer,
                            "serial": issued.serial,
                            "not_after_unix": unix(issued.not_after),
                            "replaced": replaced,
                        }),
                    )
                    .await;
                Ok(Response::new(v1::EnrollResponse {
                    chain_pem: issued.chain_pem,
                    roots_pem: c.trust.pem(),
                    trust_domain: c.td.to_string(),
                    coordinator_time_unix: now_unix(),
                }))
            }
            Err(e) => {
                tracing::warn!(guest = claimed, %peer, error = %e, "enrollment refused");
                // Anyone may call Enroll: limited per peer address (host, not port).
                let host = peer.rsplit_once(':').map_or(peer.as_str(), |(h, _)| h);
                self.0.events.record_limited(
                    Kind::EnrollRefused,
                    claimed,
                    host,
                    serde_json::json!({ "peer": peer, "guest": claimed, "error": e.to_string() }),
                );
                Err(e.into())
            }
        }
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let peer = req
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let (guest, info, seen) = match self.authenticate(&req) {
            Ok(who) => who,
            Err(e) => {
                self.refused(&req, &peer, &e);
                return Err(e.into());
            }
        };
        let c = self.0.clone();
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(v1::AgentMessage {
                msg: Some(agent_message::Msg::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => {
                return Err(RpcError::BadRequest("session must start with Hello".into()).into());
            }
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(RpcError::BadRequest("no Hello within 10 s".into()).into()),
        };
        if hello.guest_id != guest.get() {
            return Err(RpcError::Denied(format!(
                "certificate is for guest {guest} but Hello claims guest {}",
                hello.guest_id
            ))
            .into());
        }
        // One identity, one live session, refused before this Hello touches the guest's
        // record (docs/design/0012).
        let remote_grace = c.cfg.etcd.as_ref().map_or(PREVIOUS_SESSION_GRACE, |e| {
            PREVIOUS_SESSION_GRACE.max(e.lease_ttl + Duration::from_secs(2))
        });
        let mut attachment = match attach_when_free(&c.hub, guest, remote_grace).await {
            Ok(a) => a,
            Err(NotAttached::Unavailable(reason)) => {
                tracing::warn!(%guest, %peer, %reason, "session refused: it could not be registered in etcd");
                return Err(RpcError::Unavailable(StoreError::Unavailable {
                    action: "register the agent session",
                    endpoints: "the cluster's etcd".into(),
                    reason,
                })
                .into());
            }
            Err(NotAttached::InUse(e)) => {
                let e = RpcError::SessionInUse(e);
                tracing::warn!(%guest, %peer, error = %e, "second session refused: the guest already has a live session (a cloned guest or a copied key?)");
                c.events.record_limited(
                    Kind::SessionRefused,
                    guest,
                    &guest.to_string(),
                    serde_json::json!({ "peer": peer, "error": e.to_string() }),
                );
                return Err(e.into());
            }
        };
        let facts = hello.facts.map(bounded_facts);
        let version = bounded(&hello.agent_version, MAX_VERSION_CHARS);
        let serial = info.serial_hex.clone();
        let updated = c
            .store
            .update_agent(
                guest,
                Some(&seen.serial),
                // The first use of a new identity is what finally uses its join token.
                !seen.confirmed && seen.serial == serial,
                &mut |rec| {
                    // Seeing the new serial in use retires the previous one.
                    if rec.serial == serial {
                        rec.previous_serial = None;
                        rec.confirmed = true;
                    }
                    rec.agent_version = version.clone();
                    rec.applied_revision = hello.applied_revision;
                    rec.applied_digest = hello.applied_digest.clone();
                    rec.last_seen_unix = now_unix();
                    rec.facts = facts
                        .as_ref()
                        .map(prost::Message::encode_to_vec)
                        .unwrap_or_default();
                },
            )
            .map_err(RpcError::from)?;
        tracing::info!(%guest, %peer, %version, applied = hello.applied_revision, "agent connected");

        // Boxed: a channel allocates its slots 32 at a time up front, and one unboxed slot
        // is 64 bytes, so 2 KiB per session (20 MB with 10,000 agents) for a channel that
        // rarely holds more than one message.
        let (tx, rx) = mpsc::channel::<Box<Result<v1::CoordinatorMessage, Status>>>(16);
        // A revoke or re-enrollment that landed between `authenticate` and `attach` ended
        // no session yet; it must end this one. The record just written is the current
        // one (the write compared it), so no second read: a later revoke finds this
        // session attached and ends it.
        current_or_previous(guest, &updated, &info.serial_hex)?;
        let opened = now_unix_ms();
        c.events
            .record_paced(
                Kind::SessionOpened,
                guest,
                serde_json::json!({
                    "peer": peer,
                    "agent_version": version,
                    "applied_revision": hello.applied_revision,
                    "serial": serial,
                }),
            )
            .await;
        // The session lives no longer than the certificate that opened it; the agent
        // reconnects with its renewed one.
        let expires = info
            .not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        let api = AgentApi(c.clone());
        // The reports and the closing event are handled in boxed futures: inline, their
        // state (event log, store) sized this task, which lives as long as the session, at
        // 2,192 bytes instead of 1,480 (release build, `size_of_val`; issue 14: memory per
        // session).
        tokio::spawn(async move {
            let mut ping = tokio::time::interval(api.0.cfg.ping_interval);
            ping.tick().await;
            let mut nonce = 0u64;
            let expiry = tokio::time::sleep(expires);
            tokio::pin!(expiry);
            let mut why = "the agent closed the stream".to_string();
            loop {
                let out = tokio::select! {
                    () = &mut expiry => {
                        if let Some(left) = renewed_through(&api.0, guest, &serial) {
                            expiry.as_mut().reset(tokio::time::Instant::now() + left);
                            continue;
                        }
                        tracing::info!(%guest, "session ended: its certificate expired");
                        why = "its certificate expired".into();
                        let _ = tx
                            .send(Box::new(Err(Status::unauthenticated(format!(
                                "certificate of guest {guest} expired, renew"
                            )))))
                            .await;
                        break;
                    }
                    m = inbound.message() => match m {
                        Ok(Some(v1::AgentMessage { msg: Some(agent_message::Msg::Report(r)) })) => {
                            if let Err(e) = Box::pin(api.handle_report(guest, r, None, opened)).await {
                                tracing::warn!(%guest, error = %e, "report refused");
                            }
                            continue;
                        }
                        Ok(Some(v1::AgentMessage { msg: Some(agent_message::Msg::Pass(mut p)) })) => {
                            let Some(r) = p.report.take() else { continue };
                            match Box::pin(api.handle_report(guest, r, Some(&p), opened)).await {
                                Ok(Some(seq)) => msg(coordinator_message::Msg::PassAck(v1::PassAck { seq })),
                                Ok(None) => continue,
                                Err(e) => {
                                    tracing::warn!(%guest, error = %e, "report refused");
                                    continue;
                                }
                            }
                        }
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(status) => {
                            tracing::info!(%guest, %status, "session stream ended");
                            why = format!("stream error: {}", status.message());
                            break;
                        }
                    },
                    r = attachment.replicas.changed() => {
                        if r.is_err() { break; }
                        let addrs = attachment.replicas.borrow_and_update().to_vec();
                        msg(coordinator_message::Msg::Replicas(v1::Replicas { addrs }))
                    }
                    signal = attachment.signals.next() => match signal {
                        Signal::Desired(d) => msg(coordinator_message::Msg::Desired((*d).clone())),
                        Signal::RunPass(nonce) => msg(coordinator_message::Msg::RunPass(v1::RunPass { nonce })),
                        Signal::Ended(status) => {
                            // A stop ends every session: one "stopping" line says so, not a
                            // warning per guest. A revoke or replaced identity is worth one.
                            if status.code() == tonic::Code::Unavailable {
                                tracing::debug!(%guest, %status, "session ended by the coordinator");
                            } else {
                                tracing::warn!(%guest, %status, "session ended by the coordinator");
                            }
                            why = format!("ended by the coordinator: {}", status.message());
                            let _ = tx.send(Box::new(Err(status))).await;
                            break;
                        }
                    },
                    _ = ping.tick() => {
                        nonce += 1;
                        msg(coordinator_message::Msg::Ping(v1::Ping { nonce }))
                    }
                };
                if tx.send(Box::new(Ok(out))).await.is_err() {
                    break;
                }
            }
            tracing::info!(%guest, "agent disconnected");
            drop(attachment);
            Box::pin(api.0.events.record_paced(
                Kind::SessionEnded,
                guest,
                serde_json::json!({
                    "why": why,
                    "seconds": (now_unix_ms() - opened) / 1000,
                }),
            ))
            .await;
        });
        let stream: SessionStream = Box::pin(tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            |m| *m,
        ));
        Ok(Response::new(stream))
    }

    async fn renew(
        &self,
        req: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        let who = self.claimed_guest(&req);
        let r = self.renew_checked(req).await;
        self.0.metrics.renewal(CertKind::Identity, r.is_ok());
        self.renew_failed(who, r.as_ref().err());
        r
    }

    async fn renew_expired(
        &self,
        req: Request<v1::RenewExpiredRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        let who = x509::parse_chain(&req.get_ref().chain_pem, "certificate chain")
            .ok()
            .and_then(|chain| x509::inspect(chain.first()?).ok())
            .and_then(|info| info.uris().find_map(|u| self.0.td.parse_guest_uri(u)));
        let r = self.renew_expired_checked(req).await;
        self.0.metrics.renewal(CertKind::Identity, r.is_ok());
        self.renew_failed(who, r.as_ref().err());
        r
    }

    async fn sign_service_cert(
        &self,
        req: Request<v1::SignServiceCertRequest>,
    ) -> Result<Response<v1::SignServiceCertResponse>, Status> {
        let who = self.claimed_guest(&req);
        let name = req.get_ref().common_name.clone();
        let r = self.sign_service_cert_checked(req).await;
        self.0.metrics.renewal(CertKind::Service, r.is_ok());
        // What the CA answered is recorded where it is known; here what was refused
        // before asking it (a name or SAN the guest does not declare: a compromised or
        // misconfigured guest), once per 10 min per guest.
        if let Err(s) = &r
            && matches!(
                s.code(),
                tonic::Code::PermissionDenied
                    | tonic::Code::InvalidArgument
                    | tonic::Code::Unauthenticated
            )
        {
            let key = who.map_or_else(|| "unknown".to_string(), |g| g.to_string());
            self.0.events.record_limited(
                Kind::ServiceCertRefused,
                &key,
                &key,
                serde_json::json!({ "common_name": name, "error": s.message() }),
            );
        }
        r
    }
}

/// The certificate RPCs; their outcomes are counted by the trait methods above.
impl AgentApi {
    /// Records a failed renewal (limited per guest: the agent retries on its own).
    fn renew_failed(&self, who: Option<GuestId>, err: Option<&Status>) {
        let Some(err) = err else { return };
        let key = who.map_or_else(|| "unknown".to_string(), |g| g.to_string());
        self.0.events.record_limited(
            Kind::IdentityRenewFailed,
            &key,
            &key,
            serde_json::json!({ "error": err.message() }),
        );
    }

    async fn renew_checked(
        &self,
        req: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        let (guest, info, seen) = self.authenticate(&req)?;
        let issued = self.issue_identity(guest, req.into_inner().csr_pem).await?;
        // Written only if nothing (a revoke, another renewal) changed the record while
        // the CA was signing. A durable write waits for the store's one writer: off the
        // async workers, or a fleet renewing at once stalls every session behind it.
        let (store, previous, serial, not_after) = (
            self.0.store.clone(),
            info.serial_hex.clone(),
            issued.serial.clone(),
            unix(issued.not_after),
        );
        super::blocking("update agent", move || {
            store.update_agent(guest, Some(&seen.serial), true, &mut |rec| {
                // The cert that authenticated this call stays valid until the new one is used.
                rec.previous_serial = Some(previous.clone());
                rec.serial = serial.clone();
                rec.not_after_unix = not_after;
                rec.renewed_unix = now_unix();
                rec.confirmed = true;
            })
        })
        .await
        .map_err(RpcError::from)?;
        tracing::info!(%guest, serial = %issued.serial, "agent identity renewed");
        self.0
            .events
            .record_paced(
                Kind::IdentityRenewed,
                guest,
                serde_json::json!({
                    "serial": issued.serial,
                    "not_after_unix": unix(issued.not_after),
                    "expired": false,
                }),
            )
            .await;
        Ok(Response::new(v1::RenewResponse {
            chain_pem: issued.chain_pem,
            roots_pem: self.0.trust.pem(),
        }))
    }

    async fn renew_expired_checked(
        &self,
        req: Request<v1::RenewExpiredRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        let c = &self.0;
        let req = req.into_inner();
        let chain = x509::parse_chain(&req.chain_pem, "certificate chain")
            .map_err(|e| RpcError::BadRequest(e.to_string()))?;
        let info = x509::inspect(&chain[0]).map_err(|e| RpcError::BadRequest(e.to_string()))?;
        let now = std::time::SystemTime::now();
        let Ok(expired_for) = now.duration_since(info.not_after) else {
            return Err(RpcError::BadRequest(
                "certificate has not expired; renew it with Renew".into(),
            )
            .into());
        };
        if expired_for > c.cfg.renew_after_expiry {
            return Err(RpcError::Denied(format!(
                "certificate expired {}s ago; this coordinator renews expired certificates for {}s at most: re-join with a new token (`phoenix token create --guest <id>`)",
                expired_for.as_secs(),
                c.cfg.renew_after_expiry.as_secs()
            ))
            .into());
        }
        // Checked as of just before expiry, so only the expiry itself is forgiven.
        let at = info.not_after - Duration::from_secs(1);
        let at = rustls_pki_types::UnixTime::since_unix_epoch(
            at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default(),
        );
        c.trust
            .verify_chain_at(&req.chain_pem, at)
            .map_err(|e| RpcError::Denied(e.to_string()))?;
        let msg = phoenix_pki::keys::renew_expired_message(&req.csr_pem);
        if !x509::verify_signature(&chain[0], &msg, &req.proof) {
            return Err(RpcError::Denied(
                "proof of possession of the expired key does not verify".into(),
            )
            .into());
        }
        let guest = info
            .uris()
            .find_map(|u| c.td.parse_guest_uri(u))
            .ok_or_else(|| RpcError::Denied("certificate is not an agent identity".into()))?;
        let rec = c
            .store
            .agent(guest)
            .map_err(RpcError::from)?
            .ok_or_else(|| RpcError::Denied(format!("guest {guest} is not enrolled")))?;
        if rec.serial != info.serial_hex || rec.revoked_unix.is_some() {
            return Err(RpcError::Denied(format!(
                "certificate {} is not guest {guest}'s current identity (replaced or revoked)",
                info.serial_hex
            ))
            .into());
        }
        let issued = self.issue_identity(guest, req.csr_pem).await?;
        c.store
            .update_agent(guest, Some(&rec.serial), true, &mut |rec| {
                rec.previous_serial = None;
                rec.serial = issued.serial.clone();
                rec.not_after_unix = unix(issued.not_after);
                rec.renewed_unix = now_unix();
                rec.confirmed = true;
            })
            .map_err(RpcError::from)?;
        tracing::info!(%guest, serial = %issued.serial, expired_for = expired_for.as_secs(), "expired agent identity renewed");
        c.events
            .record_paced(
                Kind::IdentityRenewed,
                guest,
                serde_json::json!({
                    "serial": issued.serial,
                    "not_after_unix": unix(issued.not_after),
                    "expired": true,
                    "expired_for_seconds": expired_for.as_secs(),
                }),
            )
            .await;
        Ok(Response::new(v1::RenewResponse {
            chain_pem: issued.chain_pem,
            roots_pem: c.trust.pem(),
        }))
    }

    async fn sign_service_cert_checked(
        &self,
        req: Request<v1::SignServiceCertRequest>,
    ) -> Result<Response<v1::SignServiceCertResponse>, Status> {
        let (guest, _, _) = self.authenticate(&req)?;
        let c = &self.0;
        let req = req.into_inner();
        // A guest may only get what its desired state declares: same CN, SANs within
        // the declared ones.
        let declared = c
            .store
            .desired(guest)
            .map_err(RpcError::from)?
            .and_then(|d| GuestSpec::from_json(&d.spec_json).ok())
            .unwrap_or_default();
        let cert = declared.resources().iter().find_map(|r| match r {
            Resource::Cert(s) if s.common_name == req.common_name => Some(s),
            _ => None,
        });
        let Some(spec) = cert else {
            return Err(RpcError::Denied(format!(
                "guest {guest} declares no certificate for {:?}",
                req.common_name
            ))
            .into());
        };
        // Service certs never carry identity names, whatever a stored desired state says
        // (one stored before this rule existed included): docs/design/0005.
        if let Some(reserved) = spec
            .check_identity_names(&c.td)
            .err()
            .or_else(|| req.sans.iter().find_map(|s| reserved_name(&c.td, s)))
        {
            return Err(RpcError::Denied(format!("certificate {}: {reserved}", spec.name)).into());
        }
        if let Some(extra) = req
            .sans
            .iter()
            .find(|s| !spec.sans.contains(s) && **s != spec.common_name)
        {
            return Err(RpcError::Denied(format!(
                "SAN {extra:?} is not declared for certificate {}",
                spec.name
            ))
            .into());
        }
        let mut sans: Vec<San> = req.sans.iter().map(|s| San::host(s)).collect();
        if sans.is_empty() {
            sans.push(San::host(&spec.common_name));
        }
        let ttl = Duration::from_secs(req.ttl_seconds.clamp(60, spec.ttl_seconds.max(60)));
        let result =
            c.ca.issue(IssueRequest {
                csr_pem: req.csr_pem,
                common_name: spec.common_name.clone(),
                sans,
                ttl,
            })
            .await;
        let mut rec = crate::store::ServiceCertRecord {
            name: spec.name.to_string(),
            common_name: spec.common_name.clone(),
            sans: req.sans.clone(),
            serial: String::new(),
            not_after_unix: 0,
            issued_unix: now_unix(),
            result: "ok".into(),
            revoked: None,
        };
        match &result {
            Ok(issued) => {
                rec.serial = issued.serial.clone();
                rec.not_after_unix = unix(issued.not_after);
            }
            Err(e) => rec.result = format!("failed: {e}"),
        }
        c.events.ca_result(
            c.ca.name(),
            "sign a service certificate",
            result.as_ref().map(drop).map_err(|e| e.to_string()),
        );
        match &result {
            Ok(_) => c.events.record(
                Kind::ServiceCertIssued,
                guest,
                serde_json::json!({
                    "name": rec.name,
                    "common_name": rec.common_name,
                    "sans": rec.sans,
                    "serial": rec.serial,
                    "not_after_unix": rec.not_after_unix,
                }),
            ),
            Err(e) => c.events.record_limited(
                Kind::ServiceCertFailed,
                guest,
                &format!("{guest}/{}", rec.name),
                serde_json::json!({ "name": rec.name, "error": e.to_string() }),
            ),
        }
        // A revoke that landed while the CA was signing must not leave this cert unlisted.
        let revoked_at = match c.store.agent(guest) {
            Ok(Some(a)) => a.revoked_unix,
            _ => None,
        };
        if revoked_at.is_some() {
            rec.revoked = Some("deny-listed by Phoenix (guest revoked while signing)".into());
        }
        if let Err(e) = c.store.put_service_cert(guest, &rec) {
            tracing::warn!(%guest, error = %e, "cannot record service certificate");
        }
        let issued = result.map_err(RpcError::from)?;
        if let Some(at) = revoked_at {
            return Err(RpcError::Identity(StoreError::Revoked { guest, at }).into());
        }
        Ok(Response::new(v1::SignServiceCertResponse {
            chain_pem: issued.chain_pem,
            roots_pem: c.trust.pem(),
        }))
    }
}
