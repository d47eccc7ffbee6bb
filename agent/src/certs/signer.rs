//! How the `cert` handler gets a CSR signed: through the coordinator (which checks the
//! guest declares that certificate) over the agent's authenticated channel.

use phoenix_proto::MAX_MESSAGE_BYTES;
use phoenix_proto::v1;
use std::sync::{Arc, RwLock};
use tonic::transport::Channel;

#[derive(Debug, Clone)]
pub struct SignedCert {
    /// Leaf first, then intermediates.
    pub chain_pem: String,
    /// The trust bundle (for `ca_path`).
    pub roots_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(
        "sign certificate {common_name}: no coordinator connection (certificates are signed through the coordinator; will retry on the next pass)"
    )]
    Offline { common_name: String },
    #[error("sign certificate {common_name}: coordinator refused: {message}")]
    Refused {
        common_name: String,
        message: String,
    },
}

#[async_trait::async_trait]
pub trait CertSigner: Send + Sync {
    async fn sign(
        &self,
        csr_pem: String,
        common_name: String,
        sans: Vec<String>,
        ttl_seconds: u64,
    ) -> Result<SignedCert, SignError>;
}

/// The channel of the current coordinator session, set by the runtime while connected.
#[derive(Debug, Default, Clone)]
pub struct SessionSigner {
    channel: Arc<RwLock<Option<Channel>>>,
}

impl SessionSigner {
    pub fn set(&self, channel: Option<Channel>) {
        *self.channel.write().unwrap_or_else(|p| p.into_inner()) = channel;
    }

    /// The open session's channel, if any.
    pub fn current(&self) -> Option<Channel> {
        self.channel
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait::async_trait]
impl CertSigner for SessionSigner {
    async fn sign(
        &self,
        csr_pem: String,
        common_name: String,
        sans: Vec<String>,
        ttl_seconds: u64,
    ) -> Result<SignedCert, SignError> {
        let channel = self
            .channel
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(channel) = channel else {
            return Err(SignError::Offline { common_name });
        };
        let mut client = v1::agent_client::AgentClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut req = tonic::Request::new(v1::SignServiceCertRequest {
            csr_pem,
            common_name: common_name.clone(),
            sans,
            ttl_seconds,
        });
        req.set_timeout(std::time::Duration::from_secs(30));
        let resp = client
            .sign_service_cert(req)
            .await
            .map_err(|s| SignError::Refused {
                common_name,
                message: s.message().to_string(),
            })?
            .into_inner();
        Ok(SignedCert {
            chain_pem: resp.chain_pem,
            roots_pem: resp.roots_pem,
        })
    }
}
