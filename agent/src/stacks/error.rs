//! What can go wrong with a stack; every variant names the stack.

use super::engine::EngineError;
use super::plan::PlanError;

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("stack {stack}: label {label:?} for service {service}: {why}")]
    Label {
        stack: String,
        service: String,
        label: String,
        why: &'static str,
    },
    #[error("stack {stack}: file {path} is outside the allowed roots")]
    FileOutsideRoots { stack: String, path: String },
    #[error("stack {stack}: {action} {path}: {source}")]
    Io {
        stack: String,
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "stack {stack}: host access not declared in host_access: {grants}; a stack gets these only by listing them in its host_access"
    )]
    HostAccess { stack: String, grants: String },
    #[error("stack {stack}: env file {path}: {why}")]
    EnvFile {
        stack: String,
        path: String,
        why: String,
    },
    #[error("stack {stack}: env file {path} line {line}: expected KEY=VALUE")]
    EnvFileLine {
        stack: String,
        path: String,
        line: usize,
    },
    #[error("stack {stack}: read registry credentials from {from}: {why}")]
    RegistryAuth {
        stack: String,
        from: String,
        why: String,
    },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("stack {stack}: {source}")]
    Engine {
        stack: String,
        #[source]
        source: EngineError,
    },
    #[error("stack {stack}: service {service} {why}")]
    Dependency {
        stack: String,
        service: String,
        why: String,
    },
    #[error("stack {stack}: service {service}: {source}")]
    BuildContext {
        stack: String,
        service: String,
        #[source]
        source: super::context::ContextError,
    },
    #[error(
        "stack {stack}: service {service}: {key} {wanted} is not the engine's platform ({engine}); Phoenix sets up no emulation, so only the guest's own platform runs"
    )]
    Platform {
        stack: String,
        service: String,
        key: String,
        wanted: String,
        engine: String,
    },
    #[error("stack {stack}: image {image} is still absent after pulling it")]
    PullMissing { stack: String, image: String },
    #[error(
        "stack {stack}: recreate {service} failed: {cause}; {}",
        if *.restored { "the previous container was put back" } else { "the previous container was not restored" }
    )]
    RecreateFailed {
        stack: String,
        service: String,
        cause: String,
        restored: bool,
    },
}
