//! `phoenix-agent join <token>`: make a key here, send only a CSR, pin the coordinator by
//! the CA fingerprint in the token, check what comes back, then persist the identity.

use crate::runtime::backoff::Backoff;
use crate::runtime::policy::{self, Call, Verdict};
use crate::state::{Enrollment, StateDir, StateError};
use phoenix_pki::tls::{self, TrustStore};
use phoenix_pki::transport::{self, ChannelOptions};
use phoenix_pki::{keys, x509};
use phoenix_proto::MAX_MESSAGE_BYTES;
use phoenix_proto::model::GuestId;
use phoenix_proto::token::JoinToken;
use phoenix_proto::v1;

/// A coordinator briefly away (restarting, overloaded) is waited for, a refusal is not.
const ENROLL_ATTEMPTS: u32 = 5;
const ENROLL_RETRY_BASE: std::time::Duration = std::time::Duration::from_secs(1);
const ENROLL_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Token(#[from] phoenix_proto::token::TokenError),
    #[error(
        "join token expired at unix time {0}; create a new one with `phoenix token create --guest <id>`"
    )]
    Expired(i64),
    #[error("{0}")]
    Key(#[from] keys::KeyError),
    #[error("{0}")]
    Tls(#[from] tls::TlsSetupError),
    #[error("{0}")]
    Connect(#[from] transport::ConnectError),
    #[error("coordinator refused enrollment: {0}")]
    Refused(String),
    #[error("coordinator answered with a certificate that is not ours: {0}")]
    BadAnswer(String),
    #[error(
        "agent clock is {behind_secs} s behind: the certificate the coordinator just issued is not valid yet here; fix the clock (NTP) and run join again with the same token"
    )]
    ClockBehind { behind_secs: u64 },
    #[error(
        "agent clock is behind: the coordinator's certificate is not valid yet by this machine's clock; fix the clock (NTP) and run join again with the same token ({0})"
    )]
    CoordinatorNotValidYet(String),
    #[error("{0}")]
    State(#[from] StateError),
}

/// How far the local clock is behind, if the certificate issued just now is not valid
/// yet here: measured against the coordinator's clock when it sent it, else against
/// the certificate's start.
fn clock_behind(
    not_before: std::time::SystemTime,
    coordinator_now: Option<std::time::SystemTime>,
    now: std::time::SystemTime,
) -> Option<u64> {
    not_before
        .duration_since(now)
        .ok()
        .filter(|d| !d.is_zero())?;
    let reference = coordinator_now
        .filter(|c| *c > not_before)
        .unwrap_or(not_before);
    Some(
        reference
            .duration_since(now)
            .unwrap_or_default()
            .as_secs()
            .max(1),
    )
}

pub async fn join(
    state: &StateDir,
    token: &str,
    guest: Option<GuestId>,
) -> Result<Enrollment, EnrollError> {
    let token = JoinToken::decode(token)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if token.expires_unix <= now {
        return Err(EnrollError::Expired(token.expires_unix));
    }
    let guest = guest.unwrap_or(token.guest);
    let key = keys::generate()?;
    let csr = keys::csr(&key, &format!("guest-{guest}"), &[])?;
    let cfg =
        tls::enroll_client_config(&token.ca_fingerprint, &token.trust_domain.coordinator_uri())?;
    let channel = connect_any(&token.addrs(), &token.trust_domain.coordinator_dns(), cfg)
        .await
        .map_err(|e| {
            // With a clock far behind, even the coordinator's certificate is "not valid yet".
            if format!("{e:?}").contains("NotValidYet") {
                EnrollError::CoordinatorNotValidYet(e.to_string())
            } else {
                EnrollError::Connect(e)
            }
        })?;
    let mut client = v1::agent_client::AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut backoff = Backoff::new(ENROLL_RETRY_BASE, ENROLL_RETRY_MAX);
    let resp = loop {
        let mut req = tonic::Request::new(v1::EnrollRequest {
            token: token.encode(),
            guest_id: guest.get(),
            csr_pem: csr.clone(),
        });
        req.set_timeout(std::time::Duration::from_secs(30));
        let status = match client.enroll(req).await {
            Ok(r) => break r.into_inner(),
            Err(s) => s,
        };
        match policy::classify(Call::Enroll, status.code(), Some(guest)) {
            // The coordinator's refusals name their remedy ("create a new one"); the
            // policy's advice stands in when a bare code came back.
            Verdict::Fatal { advice } if status.message().is_empty() => {
                return Err(EnrollError::Refused(advice));
            }
            Verdict::Fatal { .. } => {
                return Err(EnrollError::Refused(status.message().to_string()));
            }
            Verdict::Retry if backoff.attempt() < ENROLL_ATTEMPTS - 1 => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %status, retry_in = ?wait, "enrollment failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Verdict::Retry => {
                return Err(EnrollError::Refused(format!(
                    "{} (gave up after {ENROLL_ATTEMPTS} attempts; the token stays usable, run join again)",
                    status.message()
                )));
            }
        }
    };

    // The bundle must still contain the root we pinned, and our new cert must verify
    // against it and name exactly this guest.
    let roots = x509::parse_chain(&resp.roots_pem, "trust bundle")
        .map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    if !roots
        .iter()
        .any(|r| x509::fingerprint(r) == token.ca_fingerprint)
    {
        return Err(EnrollError::BadAnswer(
            "trust bundle lacks the pinned root".into(),
        ));
    }
    // A clock behind the CA's makes the fresh chain "not valid yet"; say that instead
    // of a bare verification error (the token stays usable until the identity is used).
    let leaf = x509::parse_chain(&resp.chain_pem, "certificate chain")
        .map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    let leaf = leaf
        .first()
        .ok_or_else(|| EnrollError::BadAnswer("empty certificate chain".into()))?;
    let info = x509::inspect(leaf).map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    let coordinator_now = u64::try_from(resp.coordinator_time_unix)
        .ok()
        .filter(|t| *t > 0)
        .map(|t| std::time::UNIX_EPOCH + std::time::Duration::from_secs(t));
    if let Some(behind_secs) = clock_behind(
        info.not_before,
        coordinator_now,
        std::time::SystemTime::now(),
    ) {
        return Err(EnrollError::ClockBehind { behind_secs });
    }
    let trust = TrustStore::from_pem(&resp.roots_pem)?;
    trust.verify_chain(&resp.chain_pem)?;
    let identity = tls::Identity::from_pem(&resp.chain_pem, &key.serialize_pem())?;
    let want = token.trust_domain.guest_uri(guest);
    if !identity.info.uris().any(|u| u == want) {
        return Err(EnrollError::BadAnswer(format!(
            "certificate does not carry {want}"
        )));
    }
    let enrollment = Enrollment {
        guest,
        coordinator: token.addr.clone(),
        replicas: token.replicas.clone(),
        trust_domain: token.trust_domain.clone(),
    };
    state.save_identity(
        &enrollment,
        &key.serialize_pem(),
        &resp.chain_pem,
        &resp.roots_pem,
    )?;
    // The coordinator spends the token when the new identity is first used; until then
    // an answer refused here or lost on the way leaves it usable. Using it now closes
    // that window for everyone else holding the token.
    if let Err(e) = first_use(
        state,
        &enrollment,
        &resp.chain_pem,
        &key.serialize_pem(),
        &resp.roots_pem,
    )
    .await
    {
        tracing::warn!(error = %e, "enrolled, but could not use the new identity yet: the join token stays usable until `phoenix-agent run` connects");
    }
    Ok(enrollment)
}

/// A channel to the first of `addrs` that answers (every replica of a cluster can
/// enroll: the token is spent in the shared store); the last error if none does.
async fn connect_any(
    addrs: &[String],
    server_name: &str,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, transport::ConnectError> {
    let opts = ChannelOptions::default();
    // Never empty (the address joined through comes first); an empty list fails to parse.
    let (last, first) = addrs
        .split_last()
        .map_or(("", &[][..]), |(l, f)| (l.as_str(), f));
    for addr in first {
        match transport::connect(addr, server_name, cfg.clone(), &opts).await {
            Ok(ch) => return Ok(ch),
            Err(e) => {
                tracing::warn!(error = %e, "coordinator replica unreachable; trying the next")
            }
        }
    }
    transport::connect(last, server_name, cfg, &opts).await
}

/// Opens one session with the new identity (Hello, then close).
async fn first_use(
    state: &StateDir,
    enrollment: &Enrollment,
    chain_pem: &str,
    key_pem: &str,
    roots_pem: &str,
) -> Result<(), String> {
    let identity = tls::Identity::from_pem(chain_pem, key_pem).map_err(|e| e.to_string())?;
    let trust = TrustStore::from_pem(roots_pem).map_err(|e| e.to_string())?;
    let cfg = tls::client_config(
        tls::IdentityStore::new(identity),
        trust,
        &enrollment.trust_domain.coordinator_uri(),
    )
    .map_err(|e| e.to_string())?;
    let channel = connect_any(
        &enrollment.coordinators(),
        &enrollment.trust_domain.coordinator_dns(),
        cfg,
    )
    .await
    .map_err(|e| e.to_string())?;
    let applied = state.applied().unwrap_or_default();
    let hello = v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Hello(v1::Hello {
            guest_id: enrollment.guest.get(),
            agent_version: crate::runtime::AGENT_VERSION.to_string(),
            facts: None,
            applied_revision: applied.revision,
            applied_digest: applied.digest,
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(hello).await.map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.set_timeout(std::time::Duration::from_secs(30));
    // The coordinator answers once the Hello is recorded; dropping the stream ends it.
    v1::agent_client::AgentClient::new(channel)
        .session(req)
        .await
        .map_err(|s| s.message().to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn clock_skew_is_measured_in_whole_seconds() {
        let t = UNIX_EPOCH + Duration::from_secs(1000);
        let s = Duration::from_secs;
        assert_eq!(clock_behind(t, None, t - s(90)), Some(90));
        assert_eq!(
            clock_behind(t, None, t - Duration::from_millis(200)),
            Some(1)
        );
        // The coordinator's clock is the better reference (the cert may be backdated).
        assert_eq!(clock_behind(t, Some(t + s(30)), t - s(15)), Some(45));
        assert_eq!(clock_behind(t, None, t), None);
        assert_eq!(clock_behind(t, Some(t + s(30)), t + s(5)), None);
    }
}
