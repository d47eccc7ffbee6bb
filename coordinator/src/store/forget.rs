//! Dropping a guest from the store (`phoenix forget`).

use super::StoreError;
use phoenix_proto::model::GuestId;

/// What `forget_guest` deleted, for the operator and the event.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Forgotten {
    /// The serial of the identity that was on record (now refused as "not enrolled").
    pub serial: Option<String>,
    pub desired_revision: Option<u64>,
    pub had_report: bool,
    pub had_declared: bool,
    pub service_certs: usize,
    /// Join tokens issued for the guest (used or not).
    pub tokens: usize,
}

impl Forgotten {
    pub fn anything(&self) -> bool {
        self.serial.is_some()
            || self.desired_revision.is_some()
            || self.had_report
            || self.had_declared
            || self.service_certs > 0
            || self.tokens > 0
    }
}

pub trait ForgetGuest {
    /// Deletes everything the store holds about `guest`: its agent record (so its
    /// certificates are refused from then on), desired state, declared facts, last
    /// report, service certificate records and join tokens. Events stay (they age out).
    /// One transaction where the backend allows it.
    fn forget_guest(&self, guest: GuestId) -> Result<Forgotten, StoreError>;
}
