//! The real handlers of this build, one per resource kind. Each host-effect module plugs
//! itself in here.

use crate::certs::{CertConverger, SessionSigner};
use crate::exec::{ExecConverger, ProcessRunner};
use crate::files::FileConverger;
use crate::packages::{Apt, AptSourceConverger, PackageConverger};
use crate::reconcile::{Handlers, Unsupported};
use crate::systemd::{ServiceConverger, Systemctl};
use std::path::PathBuf;
use std::sync::Arc;

/// Operator policy the agent is started with (not part of any desired state).
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Managed files (and certs) may only live under these directories.
    pub file_roots: Vec<PathBuf>,
    /// Signs service certificates through the coordinator session.
    pub signer: SessionSigner,
}

pub fn handlers(opts: &HostOptions) -> Handlers {
    Handlers {
        files: Arc::new(FileConverger::new(opts.file_roots.clone())),
        packages: Arc::new(PackageConverger::new(Apt::new(ProcessRunner::default()))),
        apt_sources: Arc::new(AptSourceConverger::new(
            Apt::new(ProcessRunner::default()),
            "/",
        )),
        services: Arc::new(ServiceConverger::new(
            Systemctl::new(ProcessRunner::default()),
            "/etc/systemd/system",
            "/etc/phoenix/env",
        )),
        stacks: Unsupported::new("stack"),
        certs: Arc::new(CertConverger::new(
            opts.file_roots.clone(),
            Arc::new(opts.signer.clone()),
            Arc::new(Systemctl::new(ProcessRunner::default())),
        )),
        execs: Arc::new(ExecConverger::new(ProcessRunner::default())),
    }
}
