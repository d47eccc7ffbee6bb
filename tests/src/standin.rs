//! A coordinator stand-in, for tests of the real agent against a peer on the coordinator's
//! address that is not the real coordinator: one that stalls, or one that impersonates it.
//! Enrollment, renewals and signing are refused as unavailable; what a session's opening
//! gets is the test's choice, and the openings are counted.

use phoenix_ca::{CertAuthority, IssueRequest};
use phoenix_pki::tls::Identity;
use phoenix_pki::{San, keys};
use phoenix_proto::v1::{self, coordinator_message};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// The common name (and DNS name) the real coordinator presents.
pub const COORDINATOR: &str = "coordinator.phoenix.lab";
/// The URI SAN that makes a certificate the coordinator identity.
pub const COORDINATOR_URI: &str = "spiffe://phoenix.lab/coordinator";

type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::CoordinatorMessage, Status>> + Send>>;

/// What a session's opening gets.
pub enum Opening {
    /// Never answered.
    Stall,
    /// Answered with this desired state, then nothing more.
    Push(v1::DesiredState),
}

pub struct StandIn {
    pub opening: Opening,
    /// Sessions opened (or, for `Stall`, attempted).
    pub openings: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl v1::agent_server::Agent for StandIn {
    async fn enroll(
        &self,
        _: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        Err(Status::unavailable("stand-in"))
    }
    async fn renew(
        &self,
        _: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        Err(Status::unavailable("stand-in"))
    }
    async fn renew_expired(
        &self,
        _: Request<v1::RenewExpiredRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        Err(Status::unavailable("stand-in"))
    }
    type SessionStream = SessionStream;
    async fn session(
        &self,
        _: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        self.openings.fetch_add(1, Ordering::SeqCst);
        match &self.opening {
            Opening::Stall => std::future::pending().await,
            Opening::Push(desired) => {
                let first = v1::CoordinatorMessage {
                    msg: Some(coordinator_message::Msg::Desired(desired.clone())),
                };
                let stream = tokio_stream::iter(vec![Ok(first)]).chain(tokio_stream::pending());
                Ok(Response::new(Box::pin(stream)))
            }
        }
    }
    async fn sign_service_cert(
        &self,
        _: Request<v1::SignServiceCertRequest>,
    ) -> Result<Response<v1::SignServiceCertResponse>, Status> {
        Err(Status::unavailable("stand-in"))
    }
}

/// A server identity for `sans` with the coordinator's common name, issued by `ca` (chain
/// ending with the root).
pub async fn mint(ca: &dyn CertAuthority, sans: Vec<San>) -> Identity {
    let key = keys::generate().expect("key");
    let csr = keys::csr(&key, COORDINATOR, &sans).expect("csr");
    let issued = ca
        .issue(IssueRequest {
            csr_pem: csr,
            common_name: COORDINATOR.into(),
            sans,
            ttl: Duration::from_secs(600),
        })
        .await
        .expect("CA signs the stand-in's certificate");
    let chain = format!("{}{}", issued.chain_pem, issued.roots_pem);
    Identity::from_pem(&chain, &key.serialize_pem()).expect("identity")
}
