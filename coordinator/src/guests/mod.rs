//! Getting the agent into guests from the host: `phoenix guest install`.
//!
//! [`transport`] is the one small trait every way into a guest implements (push a file, run
//! an argv) and the host runner underneath; [`attach`] holds the attach-style transports
//! (plain LXC's `lxc-attach`, Proxmox's `pct`, `docker exec`), [`qm`] the Proxmox VM one
//! through the QEMU guest agent; [`install`] is the flow on top (push, join, start, wait).

pub mod attach;
pub mod install;
pub mod qm;
pub mod transport;

pub use transport::{Exec, GuestTransport, Host, ProcessHost, TransportError};
