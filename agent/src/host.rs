//! The real handlers of this build, one per resource kind. Each host-effect module plugs
//! itself in here.

use crate::certs::{CertConverger, SessionSigner};
use crate::exec::{ExecConverger, ProcessRunner};
use crate::files::FileConverger;
use crate::files::ledger::Ledger;
use crate::packages::{Apt, AptSourceConverger, PackageConverger};
use crate::reconcile::{Converge, Handlers, Prune, Unsupported};
use crate::stacks::engine::{ContainerEngine, DockerEngine};
use crate::stacks::{StackConverger, owner::OwnerKey};
use crate::systemd::{ServiceConverger, Systemctl};
use phoenix_proto::model::StackSpec;
use std::path::PathBuf;
use std::sync::Arc;

/// Operator policy the agent is started with (not part of any desired state).
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Managed files (and certs) may only live under these directories.
    pub file_roots: Vec<PathBuf>,
    /// Signs service certificates through the coordinator session.
    pub signer: SessionSigner,
    /// The agent's state directory: holds the key that proves which containers the agent
    /// created, and may not be bound into a stack's container.
    pub state_dir: PathBuf,
}

pub fn handlers(opts: &HostOptions) -> Handlers {
    // One client serves stacks and cert container restarts. It connects lazily, so a
    // guest without Docker only fails what it is asked to run there.
    let engine: Option<Arc<dyn ContainerEngine>> = match DockerEngine::connect() {
        Ok(e) => Some(Arc::new(e)),
        Err(e) => {
            tracing::warn!(error = %e, "Docker stacks and container restarts disabled");
            None
        }
    };
    // What this agent wrote, shared by every handler that writes files.
    let ledger = Arc::new(Ledger::open(&opts.state_dir).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "starting a new ownership ledger: nothing earlier counts as Phoenix's, so nothing is removed and replaced files are backed up");
        Ledger::fresh(&opts.state_dir)
    }));
    let files = Arc::new(FileConverger::new(opts.file_roots.clone()).with_ledger(ledger.clone()));
    let services = Arc::new(
        ServiceConverger::new(
            Systemctl::new(ProcessRunner::default()),
            "/etc/systemd/system",
            "/etc/phoenix/env",
        )
        .with_ledger(ledger.clone()),
    );
    let stacks = stacks(opts, engine.clone());
    // Stacks first: a container stops while the host services and files it may use are
    // still there, as it was started after them. Then units, stopped before the files
    // they read go.
    let mut prune: Vec<Arc<dyn Prune>> = Vec::new();
    if let Some(s) = &stacks {
        prune.push(s.clone());
    }
    prune.push(services.clone());
    prune.push(files.clone());
    Handlers {
        files,
        packages: Arc::new(PackageConverger::new(Apt::new(ProcessRunner::default()))),
        apt_sources: Arc::new(AptSourceConverger::new(
            Apt::new(ProcessRunner::default()),
            "/",
        )),
        services,
        stacks: match stacks {
            Some(s) => s as Arc<dyn Converge<StackSpec>>,
            None => Unsupported::new("stack"),
        },
        certs: Arc::new(
            CertConverger::new(
                opts.file_roots.clone(),
                Arc::new(opts.signer.clone()),
                Arc::new(Systemctl::new(ProcessRunner::default())),
                engine,
            )
            .with_ledger(ledger),
        ),
        execs: Arc::new(ExecConverger::new(ProcessRunner::default())),
        prune,
    }
}

/// An unusable DOCKER_HOST (no engine) or owner key disables stacks altogether: they
/// are then neither converged nor removed.
fn stacks(
    opts: &HostOptions,
    engine: Option<Arc<dyn ContainerEngine>>,
) -> Option<Arc<StackConverger>> {
    let owner = match OwnerKey::load_or_create(&opts.state_dir) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "Docker stacks disabled");
            return None;
        }
    };
    let engine = engine?;
    Some(Arc::new(StackConverger::new(
        engine,
        opts.file_roots.clone(),
        owner,
    )))
}
