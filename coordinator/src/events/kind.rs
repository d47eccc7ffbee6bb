//! Every type of event the coordinator records, and its topic. The stored `type` is the
//! variant's name; readers (scripts, the status page) match on it, so names are stable.

use crate::store::Topic;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A join token was used: the guest has a new identity.
    Enrolled,
    /// An enrollment was refused (bad, used or expired token, connected guest, CA down).
    EnrollRefused,
    SessionOpened,
    SessionEnded,
    /// A certificate was presented for a session and refused (revoked, replaced,
    /// forgotten guest). Recorded at most every few minutes per guest.
    SessionRefused,
    /// A new desired state was stored for the guest and pushed to it.
    DesiredPushed,
    /// A pass converged (every resource unchanged or changed).
    Applied,
    /// A pass left something failed or skipped.
    ApplyFailed,
    /// The agent's outbox overflowed while it was away: reports were lost.
    ReportsDropped,
    IdentityRenewed,
    IdentityRenewFailed,
    ServiceCertIssued,
    ServiceCertFailed,
    CoordinatorCertRenewed,
    CoordinatorCertRenewFailed,
    Revoked,
    CaHealthy,
    CaFailing,
    GuestForgotten,
    /// `phoenix converge`: the operator asked for a pass now.
    PassRequested,
}

impl Kind {
    pub fn topic(self) -> Topic {
        use Kind::*;
        match self {
            Enrolled | EnrollRefused => Topic::Enrollment,
            SessionOpened | SessionEnded | SessionRefused => Topic::Session,
            DesiredPushed => Topic::Desired,
            Applied | ApplyFailed | ReportsDropped => Topic::Report,
            IdentityRenewed
            | IdentityRenewFailed
            | ServiceCertIssued
            | ServiceCertFailed
            | CoordinatorCertRenewed
            | CoordinatorCertRenewFailed
            | Revoked => Topic::Cert,
            CaHealthy | CaFailing => Topic::Ca,
            GuestForgotten | PassRequested => Topic::Guest,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
