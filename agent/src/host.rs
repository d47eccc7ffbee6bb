//! The real handlers of this build, one per resource kind. Each host-effect module plugs
//! itself in here.

use crate::certs::{CertConverger, SessionSigner};
use crate::exec::{ExecConverger, ProcessRunner};
use crate::files::FileConverger;
use crate::packages::{Apt, AptSourceConverger, PackageConverger};
use crate::reconcile::{Converge, Handlers, Unsupported};
use crate::stacks::{StackConverger, engine::DockerEngine};
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
        stacks: stacks(opts),
        certs: Arc::new(CertConverger::new(
            opts.file_roots.clone(),
            Arc::new(opts.signer.clone()),
            Arc::new(Systemctl::new(ProcessRunner::default())),
        )),
        execs: Arc::new(ExecConverger::new(ProcessRunner::default())),
    }
}

/// The Docker client connects lazily, so a guest without Docker only fails the stacks it
/// is asked to run; an unusable DOCKER_HOST disables stacks altogether.
fn stacks(opts: &HostOptions) -> Arc<dyn Converge<phoenix_proto::model::StackSpec>> {
    match DockerEngine::connect() {
        Ok(engine) => Arc::new(StackConverger::new(
            Arc::new(engine),
            opts.file_roots.clone(),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "Docker stacks disabled");
            Unsupported::new("stack")
        }
    }
}
