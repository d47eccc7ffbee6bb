//! The agent-facing RPCs. Identity rules: an agent is whoever holds a certificate from
//! our CA whose URI SAN is `spiffe://<td>/guest/<id>` and whose serial is the one we
//! issued last for that guest (a rebuilt guest's new enrollment retires the old cert).

use super::{Coordinator, RpcError, guest_id, now_unix, unix};
use crate::store::{AgentRecord, ReportRecord};
use phoenix_pki::x509::{self, CertInfo};
use phoenix_pki::{IssueRequest, San};
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
        if let Some(at) = rec.revoked_unix {
            return Err(RpcError::Denied(format!(
                "identity of guest {guest} was revoked at unix time {at}; re-join with a new token (`phoenix token create --guest {guest}`)"
            )));
        }
        if info.serial_hex != rec.serial
            && rec.previous_serial.as_deref() != Some(info.serial_hex.as_str())
        {
            return Err(RpcError::Denied(format!(
                "certificate {} of guest {guest} was replaced by a newer enrollment",
                info.serial_hex
            )));
        }
        Ok((guest, info, rec))
    }

    async fn issue_identity(
        &self,
        guest: GuestId,
        csr_pem: String,
    ) -> Result<phoenix_pki::Issued, RpcError> {
        let c = &self.0;
        Ok(c.ca
            .issue(IssueRequest {
                csr_pem,
                common_name: format!("guest-{guest}"),
                sans: vec![San::Uri(c.td.guest_uri(guest))],
                ttl: c.cfg.agent_cert_ttl,
            })
            .await?)
    }

    async fn handle_report(&self, guest: GuestId, report: v1::ApplyReport) -> Result<(), RpcError> {
        let c = &self.0;
        let report =
            ApplyReport::try_from(report).map_err(|e| RpcError::BadRequest(e.to_string()))?;
        // A plan is news for whoever asked for it, not the guest's state.
        if report.dry_run {
            c.hub.publish_report(guest, Arc::new(report));
            return Ok(());
        }
        if report.converged()
            && let Some(mut rec) = c.store.agent(guest)?
        {
            rec.applied_revision = report.revision;
            rec.applied_digest = report.digest.clone();
            rec.last_seen_unix = now_unix();
            c.store.put_agent_soft(guest, &rec)?;
        }
        c.store.put_report(
            guest,
            &ReportRecord {
                received_unix: now_unix(),
                report: report.clone(),
            },
        )?;
        c.hub.publish_report(guest, Arc::new(report));
        Ok(())
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
        let c = &self.0;
        let req = req.into_inner();
        let guest = guest_id(req.guest_id)?;
        let token =
            JoinToken::decode(&req.token).map_err(|e| RpcError::BadRequest(e.to_string()))?;
        // Single use: consumed before signing, so two racing joins cannot both succeed.
        c.store
            .consume_token(&token.secret_hash(), guest, now_unix())
            .map_err(RpcError::from)?;
        let issued = self.issue_identity(guest, req.csr_pem).await?;
        let serial = issued.serial.clone();
        let now = now_unix();
        c.store
            .put_agent(
                guest,
                &AgentRecord {
                    serial,
                    previous_serial: None,
                    not_after_unix: unix(issued.not_after),
                    enrolled_unix: now,
                    renewed_unix: now,
                    last_seen_unix: now,
                    ..AgentRecord::default()
                },
            )
            .map_err(RpcError::from)?;
        tracing::info!(%guest, serial = %issued.serial, "agent enrolled");
        Ok(Response::new(v1::EnrollResponse {
            chain_pem: issued.chain_pem,
            roots_pem: c.trust.pem(),
            trust_domain: c.td.to_string(),
        }))
    }

    async fn renew(
        &self,
        req: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        let (guest, info, mut rec) = self.authenticate(&req)?;
        let issued = self.issue_identity(guest, req.into_inner().csr_pem).await?;
        // The cert that authenticated this call stays valid until the new one is used.
        rec.previous_serial = Some(info.serial_hex);
        rec.serial = issued.serial.clone();
        rec.not_after_unix = unix(issued.not_after);
        rec.renewed_unix = now_unix();
        self.0
            .store
            .put_agent(guest, &rec)
            .map_err(RpcError::from)?;
        tracing::info!(%guest, serial = %issued.serial, "agent identity renewed");
        Ok(Response::new(v1::RenewResponse {
            chain_pem: issued.chain_pem,
            roots_pem: self.0.trust.pem(),
        }))
    }

    async fn renew_expired(
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
        let mut rec = c
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
        rec.previous_serial = None;
        rec.serial = issued.serial.clone();
        rec.not_after_unix = unix(issued.not_after);
        rec.renewed_unix = now_unix();
        c.store.put_agent(guest, &rec).map_err(RpcError::from)?;
        tracing::info!(%guest, serial = %issued.serial, expired_for = expired_for.as_secs(), "expired agent identity renewed");
        Ok(Response::new(v1::RenewResponse {
            chain_pem: issued.chain_pem,
            roots_pem: c.trust.pem(),
        }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let (guest, info, mut rec) = self.authenticate(&req)?;
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
        // Seeing the new serial in use retires the previous one.
        if rec.serial == info.serial_hex {
            rec.previous_serial = None;
        }
        rec.agent_version = hello.agent_version.clone();
        rec.applied_revision = hello.applied_revision;
        rec.applied_digest = hello.applied_digest.clone();
        rec.last_seen_unix = now_unix();
        rec.facts = hello
            .facts
            .map(|f| prost::Message::encode_to_vec(&f))
            .unwrap_or_default();
        c.store
            .put_agent_soft(guest, &rec)
            .map_err(RpcError::from)?;
        tracing::info!(%guest, version = %hello.agent_version, applied = hello.applied_revision, "agent connected");

        let (tx, rx) = mpsc::channel::<Result<v1::CoordinatorMessage, Status>>(16);
        let mut attachment = c.hub.attach(guest);
        let api = AgentApi(c.clone());
        tokio::spawn(async move {
            let mut ping = tokio::time::interval(api.0.cfg.ping_interval);
            ping.tick().await;
            let mut nonce = 0u64;
            loop {
                let out = tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(v1::AgentMessage { msg: Some(agent_message::Msg::Report(r)) })) => {
                            if let Err(e) = api.handle_report(guest, r).await {
                                tracing::warn!(%guest, error = %e, "report refused");
                            }
                            continue;
                        }
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(status) => {
                            tracing::info!(%guest, %status, "session stream ended");
                            break;
                        }
                    },
                    r = attachment.desired.changed() => {
                        if r.is_err() { break; }
                        match attachment.desired.borrow_and_update().clone() {
                            Some(d) => msg(coordinator_message::Msg::Desired((*d).clone())),
                            None => continue,
                        }
                    }
                    r = attachment.dry_run.changed() => {
                        if r.is_err() { break; }
                        match attachment.dry_run.borrow_and_update().clone() {
                            Some(d) => msg(coordinator_message::Msg::Desired((*d).clone())),
                            None => continue,
                        }
                    }
                    _ = ping.tick() => {
                        nonce += 1;
                        msg(coordinator_message::Msg::Ping(v1::Ping { nonce }))
                    }
                };
                if tx.send(Ok(out)).await.is_err() {
                    break;
                }
            }
            tracing::info!(%guest, "agent disconnected");
            drop(attachment);
        });
        let stream: SessionStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(stream))
    }

    async fn sign_service_cert(
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
        let cert = declared.resources.iter().find_map(|r| match r {
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
            name: spec.name.clone(),
            common_name: spec.common_name.clone(),
            sans: req.sans.clone(),
            serial: String::new(),
            not_after_unix: 0,
            issued_unix: now_unix(),
            result: "ok".into(),
        };
        match &result {
            Ok(issued) => {
                rec.serial = issued.serial.clone();
                rec.not_after_unix = unix(issued.not_after);
            }
            Err(e) => rec.result = format!("failed: {e}"),
        }
        if let Err(e) = c.store.put_service_cert(guest, &rec) {
            tracing::warn!(%guest, error = %e, "cannot record service certificate");
        }
        let issued = result.map_err(RpcError::from)?;
        Ok(Response::new(v1::SignServiceCertResponse {
            chain_pem: issued.chain_pem,
            roots_pem: c.trust.pem(),
        }))
    }
}
