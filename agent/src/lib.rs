//! The Phoenix agent: runs in every guest, dials the coordinator over mTLS, keeps the
//! guest converged to its last desired state, also while the coordinator is away.

pub mod files;
pub mod reconcile;
