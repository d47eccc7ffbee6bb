//! The real handlers of this build, one per resource kind. Each host-effect module plugs
//! itself in here.

use crate::files::FileConverger;
use crate::reconcile::{Handlers, Unsupported};
use std::path::PathBuf;
use std::sync::Arc;

/// Operator policy the agent is started with (not part of any desired state).
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Managed files (and certs) may only live under these directories.
    pub file_roots: Vec<PathBuf>,
}

pub fn handlers(opts: &HostOptions) -> Handlers {
    Handlers {
        files: Arc::new(FileConverger::new(opts.file_roots.clone())),
        packages: Unsupported::new("package"),
        apt_sources: Unsupported::new("apt_source"),
        services: Unsupported::new("service"),
        stacks: Unsupported::new("stack"),
        certs: Unsupported::new("cert"),
        execs: Unsupported::new("exec"),
    }
}
