//! Why a pass runs and why it stops early: recorded in the pass's span and report.

use std::fmt;

/// What started a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The agent started and enforces the desired state it persisted before.
    Startup,
    /// The coordinator sent a new desired state.
    Push { revision: u64 },
    /// The periodic re-check that repairs drift.
    Drift,
    /// An earlier pass failed; `attempt` counts the retries since the last good pass.
    Retry { attempt: u32 },
    /// A plan the operator asked for; nothing is changed.
    DryRun,
    /// The operator asked for a pass now (`phoenix converge`), on whatever revision.
    Converge,
    /// `phoenix-agent apply -f`, without a coordinator.
    Local,
}

/// The report carries the trigger as this text (`ApplyReport::trigger`); keep it stable,
/// operators grep for it.
impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Startup => f.write_str("startup"),
            Trigger::Push { revision } => write!(f, "push r{revision}"),
            Trigger::Drift => f.write_str("drift"),
            Trigger::Retry { attempt } => write!(f, "retry {attempt}"),
            Trigger::DryRun => f.write_str("dry-run"),
            Trigger::Converge => f.write_str("converge"),
            Trigger::Local => f.write_str("local"),
        }
    }
}

/// Why the engine stops between resources; the rest of the pass is reported skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A newer desired state arrived; the next pass applies it.
    Superseded(u64),
    /// The agent is shutting down: the resource in progress finished, nothing new starts.
    ShuttingDown,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Superseded(rev) => write!(f, "superseded by revision {rev}"),
            Stop::ShuttingDown => f.write_str("not started: the agent is shutting down"),
        }
    }
}
