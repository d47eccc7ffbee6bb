use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use phoenix_agent::certs::SessionSigner;
use phoenix_agent::config::{self, AgentConfig};
use phoenix_agent::host::{self, HostOptions};
use phoenix_agent::reconcile::{Engine, Stop, Trigger};
use phoenix_agent::runtime::{self, Options};
use phoenix_agent::state::StateDir;
use phoenix_proto::model::{DesiredState, GuestId, GuestSpec, Status};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "phoenix-agent",
    version,
    about = "Phoenix agent: keeps this guest converged to its desired state"
)]
struct Cli {
    #[arg(
        long,
        global = true,
        env = "PHOENIX_AGENT_STATE_DIR",
        default_value = phoenix_agent::state::DEFAULT_STATE_DIR
    )]
    state_dir: PathBuf,
    /// Options file (every `run` flag under its name, and `state-dir`); default:
    /// /etc/phoenix-agent/agent.toml when it exists. Flags win over the file.
    #[arg(long, global = true, env = "PHOENIX_AGENT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
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
    fn parse_with_config() -> Result<Cli, config::ConfigError> {
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
            Command::Join { .. } | Command::Generate { .. } => {}
        }
        Ok(cli)
    }
}

#[derive(clap::Args, Debug)]
struct Policy {
    /// Directory under which managed files may live (repeatable).
    #[arg(long = "file-root", default_values = ["/etc", "/opt", "/srv", "/var/www", "/usr/local"])]
    file_roots: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    /// Write man pages or shell completions (for packaging).
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: Generated,
        /// Directory to write into (created).
        dir: PathBuf,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Generated {
    /// phoenix-agent.1 and phoenix-agent-<command>.1.
    Man,
    /// bash (phoenix-agent), zsh (_phoenix-agent) and fish (phoenix-agent.fish).
    Completions,
}

/// `phoenix-agent generate man|completions DIR`: made from these clap definitions, so the
/// package never ships documentation that drifted from the flags (as `phoenix generate`).
fn generate(what: Generated, dir: &std::path::Path) -> Result<(), MainError> {
    let failed = |e: std::io::Error| MainError::Generate {
        what,
        dir: dir.to_owned(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    let mut cmd = Cli::command();
    match what {
        Generated::Man => clap_mangen::generate_to(cmd, dir).map_err(failed)?,
        Generated::Completions => {
            for shell in [
                clap_complete::Shell::Bash,
                clap_complete::Shell::Zsh,
                clap_complete::Shell::Fish,
            ] {
                clap_complete::generate_to(shell, &mut cmd, "phoenix-agent", dir)
                    .map_err(failed)?;
            }
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    State(#[from] phoenix_agent::state::StateError),
    #[error(transparent)]
    Enroll(#[from] phoenix_agent::enroll::EnrollError),
    #[error(transparent)]
    Run(#[from] runtime::RunError),
    #[error("read {path}: {reason}")]
    Spec { path: PathBuf, reason: String },
    #[error("read the join token file {path}: {reason}")]
    TokenFile { path: PathBuf, reason: String },
    #[error("start runtime: {0}")]
    Runtime(std::io::Error),
    #[error("write {what:?} into {dir}: {source}")]
    Generate {
        what: Generated,
        dir: PathBuf,
        source: std::io::Error,
    },
}

fn main() -> ExitCode {
    phoenix_pki::tls::install_default_provider();
    init_logging();
    let cli = match Cli::parse_with_config() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Two workers: the agent is mostly idle, and a guest's cores belong to its workload.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {}", MainError::Runtime(e));
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e @ MainError::Run(runtime::RunError::PassStillRunning(_))) => {
            eprintln!("error: {e}");
            // Dropping the runtime would drop the pass, and with it kill the apt or dpkg
            // it runs; leave without running destructors instead.
            std::process::exit(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_not_enrolled() {
                // The unit's RestartPreventExitStatus: restarting cannot enroll the agent.
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Logs to stderr at `PHOENIX_LOG` (`info` when unset or unparsable): a level and/or
/// `target=level` directives, e.g. `warn,phoenix_agent=debug`. `filter::Targets` takes the
/// coordinator's `EnvFilter` target directives, not its span and field filters, whose regex
/// engine (~270 KiB) the agent then does not link (issue 14).
fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = std::env::var("PHOENIX_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
}

/// EX_CONFIG (sysexits.h): `run` without an enrollment, or a bad config file.
/// phoenix-agent.service names it in RestartPreventExitStatus: restarting cannot fix either,
/// so systemd does not restart-loop an agent nobody joined or configured wrongly.
const EXIT_CONFIG: u8 = 78;

impl MainError {
    fn is_not_enrolled(&self) -> bool {
        matches!(
            self,
            MainError::State(phoenix_agent::state::StateError::NotEnrolled { .. })
                | MainError::Run(runtime::RunError::State(
                    phoenix_agent::state::StateError::NotEnrolled { .. }
                ))
        )
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
    }
    tracing::info!("signal received: stopping after the resource in progress");
}

async fn run(cli: Cli) -> Result<ExitCode, MainError> {
    let state = match &cli.command {
        // Packaging runs this on the build machine: no state directory to open there.
        Command::Generate { what, dir } => {
            generate(*what, dir)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => StateDir::open(&cli.state_dir)?,
    };
    match cli.command {
        Command::Generate { .. } => Ok(ExitCode::SUCCESS),
        Command::Join {
            token,
            token_file,
            guest,
        } => {
            let token = match (token, token_file) {
                (Some(t), _) => t,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_owned())
                    .map_err(|e| MainError::TokenFile {
                        path,
                        reason: e.to_string(),
                    })?,
                (None, None) => unreachable!("clap requires the token or --token-file"),
            };
            let e = phoenix_agent::enroll::join(&state, &token, guest).await?;
            println!(
                "enrolled as guest {} with coordinator {} (trust domain {})",
                e.guest, e.coordinator, e.trust_domain
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            policy,
            drift_interval,
            backoff_max,
            shutdown_deadline,
            session_open_timeout,
        } => {
            let signer = SessionSigner::default();
            let engine = Arc::new(Engine::new(host::handlers(&HostOptions {
                file_roots: policy.file_roots,
                signer: signer.clone(),
                state_dir: cli.state_dir.clone(),
            })));
            let mut opts = Options {
                backoff_max: Duration::from_secs(backoff_max.max(1)),
                shutdown_deadline: Duration::from_secs(shutdown_deadline),
                session_open_timeout: Duration::from_secs(session_open_timeout.max(1)),
                ..Options::default()
            };
            opts.passes.drift_interval = Duration::from_secs(drift_interval.max(1));
            runtime::run(state, engine, signer, opts, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply {
            file,
            dry_run,
            json,
            policy,
        } => {
            let bytes = std::fs::read(&file).map_err(|e| MainError::Spec {
                path: file.clone(),
                reason: e.to_string(),
            })?;
            let spec = GuestSpec::from_json(&bytes).map_err(|errs| MainError::Spec {
                path: file.clone(),
                reason: errs
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            })?;
            // No coordinator here: certificates that need signing fail with "offline".
            let engine = Engine::new(host::handlers(&HostOptions {
                file_roots: policy.file_roots,
                signer: SessionSigner::default(),
                state_dir: cli.state_dir.clone(),
            }));
            // A signal stops the pass between resources, as in `run`.
            let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = stopping.clone();
            let signals = tokio::spawn(async move {
                shutdown_signal().await;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let stop = move || {
                stopping
                    .load(std::sync::atomic::Ordering::SeqCst)
                    .then_some(Stop::ShuttingDown)
            };
            let report = engine
                .run(&DesiredState::new(1, spec, dry_run), Trigger::Local, &stop)
                .await;
            signals.abort();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                for r in &report.results {
                    println!("{:<9} {}  {}", r.status.to_string(), r.resource, r.message);
                    if !r.diff.is_empty() && r.status == Status::Changed {
                        println!("          {}", r.diff.replace('\n', "\n          "));
                    }
                }
            }
            Ok(if report.converged() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
    }
}
