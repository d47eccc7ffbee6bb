//! What the coordinator must not forget across restarts: enrolled agents, join tokens,
//! desired revisions and the last report of each guest. Behind a trait so a distributed
//! store (etcd) can replace the embedded one; see docs/design/0001-embedded-store.md.

mod redb_store;

pub use redb_store::RedbStore;

use phoenix_proto::model::{ApplyReport, GuestId};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open store at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("store {action}: {reason}")]
    Io {
        action: &'static str,
        reason: String,
    },
    #[error("join token is unknown (never issued, or issued by another coordinator)")]
    TokenUnknown,
    #[error(
        "join token was already used at {used_at_unix} (tokens are single-use; create a new one)"
    )]
    TokenUsed { used_at_unix: i64 },
    #[error("join token expired at {expired_at_unix} (create a new one)")]
    TokenExpired { expired_at_unix: i64 },
    #[error("join token is for guest {token_guest}, not guest {claimed}")]
    TokenGuest {
        token_guest: GuestId,
        claimed: GuestId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub guest: GuestId,
    pub expires_unix: i64,
    pub used_unix: Option<i64>,
}

/// An enrolled agent's identity and what it last told us.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Serial of the identity cert issued last; a cert with another serial (an old
    /// identity of a rebuilt guest) is refused.
    pub serial: String,
    /// The serial before the last renewal, accepted until the new one is seen, so a
    /// renewal whose answer was lost does not lock the agent out.
    pub previous_serial: Option<String>,
    pub not_after_unix: i64,
    pub enrolled_unix: i64,
    pub renewed_unix: i64,
    pub last_seen_unix: i64,
    pub agent_version: String,
    pub applied_revision: u64,
    pub applied_digest: String,
    /// Facts from the last Hello, protobuf-encoded `v1::Facts`.
    pub facts: Vec<u8>,
    /// Set by `phoenix revoke`: every certificate of this guest is refused until it
    /// re-joins (step-ca 0.19 has no CRL/OCSP, so this deny-list is the revocation).
    #[serde(default)]
    pub revoked_unix: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRecord {
    pub revision: u64,
    pub digest: String,
    pub spec_json: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRecord {
    pub received_unix: i64,
    pub report: ApplyReport,
}

/// A guest service certificate the coordinator had signed, for `phoenix certs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCertRecord {
    /// The `cert` resource's name.
    pub name: String,
    pub common_name: String,
    pub sans: Vec<String>,
    pub serial: String,
    pub not_after_unix: i64,
    pub issued_unix: i64,
    /// "ok", or why the last signing request failed.
    pub result: String,
}

pub trait Store: Send + Sync + 'static {
    fn put_token(&self, token_hash: &str, rec: &TokenRecord) -> Result<(), StoreError>;
    /// Marks the token used, atomically; fails if unknown, used, expired or for another guest.
    fn consume_token(
        &self,
        token_hash: &str,
        guest: GuestId,
        now_unix: i64,
    ) -> Result<(), StoreError>;

    fn agent(&self, guest: GuestId) -> Result<Option<AgentRecord>, StoreError>;
    fn put_agent(&self, guest: GuestId, rec: &AgentRecord) -> Result<(), StoreError>;
    /// Soft state (last seen, facts): may be lost on a crash without harm.
    fn put_agent_soft(&self, guest: GuestId, rec: &AgentRecord) -> Result<(), StoreError>;
    fn agents(&self) -> Result<Vec<(GuestId, AgentRecord)>, StoreError>;

    fn desired(&self, guest: GuestId) -> Result<Option<DesiredRecord>, StoreError>;
    fn all_desired(&self) -> Result<Vec<(GuestId, DesiredRecord)>, StoreError>;
    /// Stores a batch of new desired states and returns the revision given to them:
    /// one global, monotonically increasing counter, so "newer" is unambiguous.
    fn put_desired(&self, states: &[(GuestId, String, Vec<u8>)]) -> Result<u64, StoreError>;

    /// What the configs declare about the guest (JSON of `compile::Declared`).
    fn declared(&self, guest: GuestId) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_declared(&self, guest: GuestId, json: &[u8]) -> Result<(), StoreError>;

    fn put_service_cert(&self, guest: GuestId, rec: &ServiceCertRecord) -> Result<(), StoreError>;
    fn service_certs(&self) -> Result<Vec<(GuestId, ServiceCertRecord)>, StoreError>;

    fn report(&self, guest: GuestId) -> Result<Option<ReportRecord>, StoreError>;
    fn put_report(&self, guest: GuestId, rec: &ReportRecord) -> Result<(), StoreError>;
}
