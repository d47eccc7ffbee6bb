//! `phoenix-agent join <token>`: make a key here, send only a CSR, pin the coordinator by
//! the CA fingerprint in the token, check what comes back, then persist the identity.

use crate::state::{Enrollment, StateDir, StateError};
use phoenix_pki::tls::{self, TrustStore};
use phoenix_pki::transport::{self, ChannelOptions};
use phoenix_pki::{keys, x509};
use phoenix_proto::MAX_MESSAGE_BYTES;
use phoenix_proto::model::GuestId;
use phoenix_proto::token::JoinToken;
use phoenix_proto::v1;

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
    #[error("{0}")]
    State(#[from] StateError),
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
    let channel = transport::connect(
        &token.addr,
        &token.trust_domain.coordinator_dns(),
        cfg,
        &ChannelOptions::default(),
    )
    .await?;
    let mut client = v1::agent_client::AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut req = tonic::Request::new(v1::EnrollRequest {
        token: token.encode(),
        guest_id: guest.get(),
        csr_pem: csr,
    });
    req.set_timeout(std::time::Duration::from_secs(30));
    let resp = client
        .enroll(req)
        .await
        .map_err(|s| EnrollError::Refused(s.message().to_string()))?
        .into_inner();

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
        trust_domain: token.trust_domain.clone(),
    };
    state.save_identity(
        &enrollment,
        &key.serialize_pem(),
        &resp.chain_pem,
        &resp.roots_pem,
    )?;
    Ok(enrollment)
}
