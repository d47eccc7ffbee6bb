use crate::store::StoreError;
use phoenix_pki::CaError;
use tonic::Status;

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
            RpcError::Ca(_) | RpcError::Unavailable(_) => Status::unavailable(msg),
            RpcError::NotFound(_) => Status::not_found(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_store_is_unavailable_to_clients() {
        let e = StoreError::Unavailable {
            action: "read agent",
            endpoints: "http://10.0.0.1:2379,http://10.0.0.2:2379".into(),
            reason: "no leader".into(),
        };
        let status = Status::from(RpcError::from(e));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("http://10.0.0.2:2379"));
    }
}
