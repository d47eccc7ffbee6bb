//! The Phoenix coordinator: compiles configs into one desired state per guest, enrolls
//! agents, pushes states and records what every agent reports.

pub mod store;
