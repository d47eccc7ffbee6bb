use crate::store::StoreError;
use phoenix_ca::CaError;
use tonic::{Code, Status};

/// Everything an RPC handler can fail with; mapped to a gRPC status in one place.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Denied(String),
    #[error("enroll refused: {0}")]
    Token(StoreError),
    #[error("{0}")]
    Store(StoreError),
    /// The guest's identity is not (or no longer) acceptable.
    #[error("{0}")]
    Identity(StoreError),
    /// A concurrent change won; the caller may retry.
    #[error("{0}")]
    Conflict(StoreError),
    #[error("certificate authority: {0}")]
    Ca(CaError),
    #[error("{0}")]
    NotFound(String),
    /// Another session of the same guest is live (docs/design/0012); the caller retries.
    #[error(transparent)]
    SessionInUse(#[from] super::hub::SessionInUse),
    /// The shared store is unreachable or without quorum: another replica may serve.
    #[error("{0}")]
    Unavailable(StoreError),
}

impl From<StoreError> for RpcError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TokenUnknown
            | StoreError::TokenUsed { .. }
            | StoreError::TokenExpired { .. }
            | StoreError::TokenGuest { .. } => RpcError::Token(e),
            StoreError::NotEnrolled { .. } | StoreError::Revoked { .. } => RpcError::Identity(e),
            StoreError::Changed { .. } => RpcError::Conflict(e),
            StoreError::Unavailable { .. } => RpcError::Unavailable(e),
            StoreError::TooLarge { .. } => RpcError::BadRequest(e.to_string()),
            StoreError::Open { .. } | StoreError::Io { .. } | StoreError::NotLeader { .. } => {
                RpcError::Store(e)
            }
        }
    }
}

impl From<CaError> for RpcError {
    fn from(e: CaError) -> Self {
        RpcError::Ca(e)
    }
}

impl From<RpcError> for Status {
    fn from(e: RpcError) -> Status {
        let msg = e.to_string();
        match e {
            RpcError::BadRequest(_) => Status::invalid_argument(msg),
            RpcError::Unauthenticated(_) => Status::unauthenticated(msg),
            RpcError::Denied(_) | RpcError::Token(_) | RpcError::Identity(_) => {
                Status::permission_denied(msg)
            }
            RpcError::Conflict(_) => Status::aborted(msg),
            RpcError::Store(_) => Status::internal(msg),
            RpcError::Ca(e) => Status::new(ca_code(&e), msg),
            RpcError::Unavailable(_) => Status::unavailable(msg),
            RpcError::NotFound(_) => Status::not_found(msg),
            RpcError::SessionInUse(_) => Status::already_exists(msg),
        }
    }
}

/// The gRPC code for each way signing can fail, so a caller can tell its own mistake
/// (invalid argument) from the CA saying no (permission denied / failed precondition), a
/// CA that may answer later (unavailable) and a fault on this side (internal). No `_` arm:
/// a new `CaError` variant must be placed here.
fn ca_code(e: &CaError) -> Code {
    match e {
        CaError::Csr { .. }
        | CaError::Grant(_)
        | CaError::Chain { .. }
        | CaError::Key { .. }
        | CaError::Serial { .. } => Code::InvalidArgument,
        CaError::Denied { .. } => Code::PermissionDenied,
        CaError::Expired { .. } | CaError::Refused { .. } => Code::FailedPrecondition,
        CaError::Unreachable { .. } | CaError::Failed { .. } => Code::Unavailable,
        // The CA is misconfigured or answers nonsense: an operator has to look.
        CaError::BadAnswer { .. }
        | CaError::Provisioner(_)
        | CaError::Url { .. }
        | CaError::UrlShape { .. }
        | CaError::Fingerprint(_) => Code::FailedPrecondition,
        CaError::Io { .. }
        | CaError::Material { .. }
        | CaError::Sign { .. }
        | CaError::Token { .. }
        | CaError::Tls { .. }
        | CaError::Client { .. } => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_ca::stepca::{ProvisionerKeySource, StepCa, StepCaConfig};
    use phoenix_ca::{CertAuthority, IssueRequest, embedded::EmbeddedCa};
    use std::time::Duration;

    fn code(e: CaError) -> Code {
        Status::from(RpcError::Ca(e)).code()
    }

    fn http(status: u16) -> CaError {
        CaError::from_status(
            "https://ca.lab/1.0/sign".into(),
            "sign",
            status,
            "no".into(),
        )
    }

    #[tokio::test]
    async fn a_garbled_csr_is_the_callers_mistake() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = EmbeddedCa::load_or_create(dir.path(), "lab").expect("ca");
        let err = ca
            .issue(IssueRequest {
                csr_pem: "not a CSR".into(),
                common_name: "guest-1".into(),
                sans: Vec::new(),
                ttl: Duration::from_secs(60),
            })
            .await
            .expect_err("garbled CSR");
        let status = Status::from(RpcError::Ca(err));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("parse certificate signing request for guest-1"),
            "{status:?}"
        );
    }

    #[test]
    fn ca_answers_map_to_denied_refused_or_unavailable() {
        assert_eq!(code(http(401)), Code::PermissionDenied);
        assert_eq!(code(http(403)), Code::PermissionDenied);
        assert_eq!(code(http(400)), Code::FailedPrecondition);
        assert_eq!(code(http(500)), Code::Unavailable);
        assert_eq!(
            code(CaError::Expired {
                action: "renew",
                subject: "guest-1".into(),
                serial: "0a".into(),
                not_after: "2026-01-01".into(),
            }),
            Code::FailedPrecondition
        );
    }

    #[tokio::test]
    async fn a_ca_nobody_listens_for_is_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        // RFC 7515 appendix A.3's P-256 key: a provisioner key that loads.
        let jwk = dir.path().join("jwk");
        std::fs::write(
            &jwk,
            r#"{"kty":"EC","crv":"P-256",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
            "d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"}"#,
        )
        .expect("write jwk");
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let err = StepCa::connect(&StepCaConfig {
            url: "https://127.0.0.1:1".into(),
            fingerprint: "00".repeat(32),
            provisioner: "p".into(),
            key: ProvisionerKeySource::Jwk(jwk),
        })
        .await
        .expect_err("nothing listens");
        assert!(
            matches!(
                err,
                CaError::Unreachable {
                    action: "bootstrap",
                    ..
                }
            ),
            "{err}"
        );
        let status = Status::from(RpcError::Ca(err));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("https://127.0.0.1:1/root/"),
            "{status:?}"
        );
    }

    #[test]
    fn an_unreachable_store_is_unavailable_to_clients() {
        let e = StoreError::Unavailable {
            action: "read agent",
            endpoints: "http://10.0.0.1:2379,http://10.0.0.2:2379".into(),
            reason: "no leader".into(),
        };
        let status = Status::from(RpcError::from(e));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("http://10.0.0.2:2379"));
    }
}
