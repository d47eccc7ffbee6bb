//! The `phoenix-agent` command line: flags, subcommands and how the options file fills
//! what the command line did not give. In the library so that `phoenix-agent-docs` (the
//! packaging tool that writes the man pages and completions) renders the very same
//! definitions without the shipped binary carrying a man page and completion generator.

use crate::config::{self, AgentConfig};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use phoenix_proto::model::GuestId;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "phoenix-agent",
    version,
    about = "Phoenix agent: keeps this guest converged to its desired state"
)]
pub struct Cli {
    #[arg(
        long,
        global = true,
        env = "PHOENIX_AGENT_STATE_DIR",
        default_value = crate::state::DEFAULT_STATE_DIR
    )]
    pub state_dir: PathBuf,
    /// Options file (every `run` flag under its name, and `state-dir`); default:
    /// /etc/phoenix-agent/agent.toml when it exists. Flags win over the file.
    #[arg(long, global = true, env = "PHOENIX_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// True when the user gave this argument (flag or environment), so it beats the file.
/// `m` may not know `id` at all (a flag of another subcommand): then it was not given.
fn given(m: &ArgMatches, id: &str) -> bool {
    m.ids().any(|i| i.as_str() == id)
        && matches!(
            m.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
}

impl Cli {
    /// Parses the command line (exiting on a usage error, as clap does) and fills what
    /// was not given from the config file.
    pub fn parse_with_config() -> Result<Cli, config::ConfigError> {
        let matches = Cli::command().get_matches();
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let (path, explicit) = match &cli.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(config::DEFAULT_PATH), false),
        };
        let file = AgentConfig::load(&path, explicit)?;
        let sub = matches.subcommand().map(|(_, m)| m);
        let given_anywhere = |id: &str| given(&matches, id) || sub.is_some_and(|m| given(m, id));
        if let Some(d) = file.state_dir
            && !given_anywhere("state_dir")
        {
            cli.state_dir = d.0;
        }
        let roots = file
            .file_root
            .map(|r| r.into_iter().map(|d| d.0).collect::<Vec<_>>());
        match &mut cli.command {
            Command::Run {
                policy,
                drift_interval,
                backoff_max,
                shutdown_deadline,
                session_open_timeout,
            } => {
                for (value, from_file, id) in [
                    (drift_interval, file.drift_interval, "drift_interval"),
                    (backoff_max, file.backoff_max, "backoff_max"),
                    (
                        shutdown_deadline,
                        file.shutdown_deadline,
                        "shutdown_deadline",
                    ),
                    (
                        session_open_timeout,
                        file.session_open_timeout,
                        "session_open_timeout",
                    ),
                ] {
                    if let Some(s) = from_file
                        && !given_anywhere(id)
                    {
                        *value = s.0;
                    }
                }
                if let Some(r) = roots
                    && !given_anywhere("file_roots")
                {
                    policy.file_roots = r;
                }
            }
            Command::Apply { policy, .. } => {
                if let Some(r) = roots
                    && !given_anywhere("file_roots")
                {
                    policy.file_roots = r;
                }
            }
            Command::Join { .. } => {}
        }
        Ok(cli)
    }
}

#[derive(clap::Args, Debug)]
pub struct Policy {
    /// Directory under which managed files may live (repeatable).
    #[arg(long = "file-root", default_values = ["/etc", "/opt", "/srv", "/var/www", "/usr/local"])]
    pub file_roots: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Enroll with a one-time token from `phoenix token create`.
    Join {
        #[arg(required_unless_present = "token_file")]
        token: Option<String>,
        /// Read the token from this file instead (keeps it out of the process list;
        /// `phoenix guest install` pushes it as a 0600 file).
        #[arg(long, conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// Guest id to enroll as; defaults to the token's.
        #[arg(long)]
        guest: Option<GuestId>,
    },
    /// Connect to the coordinator and keep this guest converged.
    Run {
        #[command(flatten)]
        policy: Policy,
        /// Re-check the desired state this often (seconds).
        #[arg(long, default_value_t = 300)]
        drift_interval: u64,
        /// Cap of the reconnect backoff (seconds).
        #[arg(long, default_value_t = 30)]
        backoff_max: u64,
        /// On SIGTERM/SIGINT, wait this long for the pass in progress (seconds).
        #[arg(long, default_value_t = 80)]
        shutdown_deadline: u64,
        /// Give up on a session whose opening the coordinator does not answer within this
        /// many seconds, and reconnect. Hidden: for tests and incident work.
        #[arg(long, default_value_t = 60, hide = true)]
        session_open_timeout: u64,
    },
    /// Converge a local spec file once, without a coordinator.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        policy: Policy,
    },
}
