//! The Phoenix agent: runs in every guest, dials the coordinator over mTLS, keeps the
//! guest converged to its last desired state, also while the coordinator is away.
//!
//! Layout: `reconcile` is the engine and sees only the `Converge` trait; one module per
//! host effect (`files`, …) implements it; `hostfs` confines their file access beneath
//! the allowed roots; `runtime` connects the engine to the coordinator; `enroll` and
//! `state` own the identity on disk.

pub mod certs;
pub mod cli;
pub mod config;
pub mod enroll;
pub mod exec;
pub mod facts;
pub mod files;
pub mod host;
pub mod hostfs;
mod hostio;
pub mod packages;
pub mod reconcile;
pub mod runtime;
pub mod stacks;
pub mod state;
pub mod systemd;
