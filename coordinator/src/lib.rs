//! The Phoenix coordinator: compiles configs into one desired state per guest, enrolls
//! agents, pushes states, records what every agent reports and exposes it as metrics and a status page.
//!
//! Built as config → `server::run(config, listener, ca, shutdown)`; the `phoenix` binary
//! is a thin CLI over this library and the admin client in [`admin_client`].

pub mod admin_client;
pub mod cli;
pub mod cluster;
pub mod compile;
pub mod events;
pub mod guests;
pub mod httpd;
pub mod metrics;
pub mod plan;
pub mod server;
pub mod store;
pub mod web;
