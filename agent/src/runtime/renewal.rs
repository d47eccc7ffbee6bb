//! Identity renewal in its own task, so the session keeps servicing its stream while a
//! renewal waits up to its deadline. The task publishes each new identity by swapping it
//! into the shared `IdentityStore` (new handshakes present it, open streams stay up) and
//! announcing its serial on a watch, so a session waiting for a usable identity wakes.
//!
//! Schedule: at about 2/3 of the lifetime (`rotation::renew_delay`); a failed renewal is
//! retried with `rotation::retry_delay` (capped by the remaining lifetime), a refused one
//! (revoked identity) at the cap with the operator's advice logged. An identity that
//! expired while the agent was offline is renewed with proof of its key.

use super::Shared;
use super::policy::{self, Call, Verdict};
use crate::state::StateError;
use phoenix_pki::tls::{self, Identity, TlsSetupError, TrustStore};
use phoenix_pki::transport;
use phoenix_pki::x509::CertInfo;
use phoenix_pki::{keys, rotation};
use phoenix_proto::model::GuestId;
use phoenix_proto::v1;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Deadline of a renewal call.
const RPC_DEADLINE: Duration = Duration::from_secs(30);
/// Retry interval after a refusal no retry fixes: the operator's `join` is picked up
/// from disk meanwhile.
const REFUSED_RETRY: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("renew identity: coordinator answered {0}")]
    Rpc(#[from] tonic::Status),
    #[error("renew identity: {0}")]
    Connect(#[from] transport::ConnectError),
    #[error("renew identity: {0}")]
    Key(#[from] keys::KeyError),
    #[error("renew identity: {0}")]
    Tls(#[from] TlsSetupError),
    #[error("renew identity: new certificate does not carry {0}")]
    WrongIdentity(String),
    #[error("renew identity: {0}")]
    State(#[from] StateError),
}

impl RenewError {
    /// The status code the retry policy sorts; local failures are worth a retry.
    fn code(&self) -> tonic::Code {
        match self {
            RenewError::Rpc(s) => s.code(),
            _ => tonic::Code::Unavailable,
        }
    }
}

/// What the schedule needs from the world; the agent's is `Live`, tests fake it.
#[async_trait::async_trait]
pub trait Renewer: Send + Sync {
    fn now(&self) -> SystemTime;
    fn current(&self) -> CertInfo;
    /// Renews a valid identity (mTLS).
    async fn renew(&self) -> Result<(), RenewError>;
    /// Renews an expired one, proving possession of its key.
    async fn renew_expired(&self) -> Result<(), RenewError>;
    /// Who we are, for the commands in the advice.
    fn guest(&self) -> Option<GuestId>;
}

/// Renews forever; each new identity's serial is sent on `published`.
pub async fn schedule(r: &dyn Renewer, published: &watch::Sender<String>) {
    let mut attempt = 0u32;
    let mut wait = None;
    loop {
        let info = r.current();
        let expired = info.not_after <= r.now();
        let delay = wait.take().unwrap_or_else(|| {
            if expired {
                Duration::ZERO
            } else {
                rotation::renew_delay(&info, r.now())
            }
        });
        tokio::time::sleep(delay).await;
        // A `join` may have replaced the identity while we slept.
        let info = r.current();
        let expired = info.not_after <= r.now();
        let result = if expired {
            r.renew_expired().await
        } else {
            r.renew().await
        };
        match result {
            Ok(()) => {
                attempt = 0;
                published.send_replace(r.current().serial_hex);
            }
            Err(e) => {
                let remaining = info.not_after.duration_since(r.now()).unwrap_or_default();
                let verdict = policy::classify(Call::Renew, e.code(), r.guest());
                let next = match &verdict {
                    Verdict::Fatal { .. } => REFUSED_RETRY,
                    Verdict::Retry if expired => rotation::retry_delay(attempt, REFUSED_RETRY * 10)
                        .max(Duration::from_secs(5)),
                    Verdict::Retry => rotation::retry_delay(attempt, remaining),
                };
                let cert = format!("identity certificate {}", info.serial_hex);
                match verdict {
                    // Said whatever the code: past expiry only a new enrollment is certain
                    // to help (the coordinator renews expired certificates for a short
                    // grace period at most).
                    _ if expired => tracing::error!(
                        error = %e,
                        "{cert} expired at {:?}; the CA does not renew expired certificates: {}",
                        info.not_after,
                        policy::rejoin_advice(r.guest())
                    ),
                    Verdict::Fatal { advice } => tracing::error!(error = %e, "{cert}: {advice}"),
                    Verdict::Retry => tracing::warn!(
                        error = %e,
                        retry_in = ?next,
                        "identity renewal failed; keeping the current certificate"
                    ),
                }
                attempt = attempt.saturating_add(1);
                wait = Some(next);
            }
        }
    }
}

/// The agent's renewer: talks to the coordinator, persists, swaps.
pub struct Live(pub Arc<Shared>);

#[async_trait::async_trait]
impl Renewer for Live {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn current(&self) -> CertInfo {
        reload_identity_from_disk(&self.0);
        self.0.identity.current().info
    }

    async fn renew(&self) -> Result<(), RenewError> {
        let shared = &self.0;
        let key = keys::generate()?;
        let csr = keys::csr(&key, &format!("guest-{}", shared.enrollment.guest), &[])?;
        // Over the open session's connection when there is one: the coordinator keeps a
        // session past its certificate's expiry only while that certificate is the one
        // the current identity was renewed from, i.e. renewed over that session.
        let channel = match shared.signer.current() {
            Some(channel) => channel,
            None => shared.connect(shared.mutual_tls()?).await?,
        };
        let mut req = tonic::Request::new(v1::RenewRequest { csr_pem: csr });
        req.set_timeout(RPC_DEADLINE);
        let resp = v1::agent_client::AgentClient::new(channel)
            .renew(req)
            .await?
            .into_inner();
        adopt(shared, &key, resp)
    }

    async fn renew_expired(&self) -> Result<(), RenewError> {
        let shared = &self.0;
        let guest = shared.enrollment.guest;
        let (chain, old_key, _) = shared.state.identity()?;
        let old_key = keys::load(&old_key)?;
        let key = keys::generate()?;
        let csr = keys::csr(&key, &format!("guest-{guest}"), &[])?;
        let proof = keys::sign(&old_key, &keys::renew_expired_message(&csr))?;
        // The expired certificate cannot do mTLS: server-authenticated only.
        let cfg = tls::server_auth_config(
            shared.trust.clone(),
            &shared.enrollment.trust_domain.coordinator_uri(),
        )?;
        let channel = shared.connect(cfg).await?;
        let mut req = tonic::Request::new(v1::RenewExpiredRequest {
            chain_pem: chain,
            csr_pem: csr,
            proof,
        });
        req.set_timeout(RPC_DEADLINE);
        let resp = v1::agent_client::AgentClient::new(channel)
            .renew_expired(req)
            .await?
            .into_inner();
        adopt(shared, &key, resp)?;
        tracing::info!("expired identity renewed");
        Ok(())
    }

    fn guest(&self) -> Option<GuestId> {
        Some(self.0.enrollment.guest)
    }
}

/// A `join` while we run replaces the files on disk; pick that identity up.
pub fn reload_identity_from_disk(shared: &Shared) {
    if let Ok((chain, key, roots)) = shared.state.identity()
        && let Ok(id) = Identity::from_pem(&chain, &key)
        && id.info.serial_hex != shared.identity.current().info.serial_hex
        && id.info.not_after > shared.identity.current().info.not_after
        && shared.trust.swap(&roots).is_ok()
    {
        tracing::info!(serial = %id.info.serial_hex, "identity replaced on disk; using it");
        shared.identity.swap(id);
    }
}

/// Checks a renewed chain against the roots and our own identity, persists it, then
/// publishes it in memory.
fn adopt(shared: &Shared, key: &rcgen::KeyPair, resp: v1::RenewResponse) -> Result<(), RenewError> {
    let guest = shared.enrollment.guest;
    let trust = TrustStore::from_pem(&resp.roots_pem)?;
    trust.verify_chain(&resp.chain_pem)?;
    let id = Identity::from_pem(&resp.chain_pem, &key.serialize_pem())?;
    let want = shared.enrollment.trust_domain.guest_uri(guest);
    if !id.info.uris().any(|u| u == want) {
        return Err(RenewError::WrongIdentity(want));
    }
    shared
        .state
        .save_renewed(&key.serialize_pem(), &resp.chain_pem, &resp.roots_pem)?;
    shared.trust.swap(&resp.roots_pem)?;
    tracing::info!(serial = %id.info.serial_hex, not_after = ?id.info.not_after, "identity renewed");
    shared.identity.swap(id);
    Ok(())
}

#[cfg(test)]
mod tests;
