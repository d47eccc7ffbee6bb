use clap::{Parser, Subcommand};
use phoenix_agent::certs::SessionSigner;
use phoenix_agent::host::{self, HostOptions};
use phoenix_agent::reconcile::Engine;
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
    #[command(subcommand)]
    command: Command,
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
        token: String,
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
    #[error("start runtime: {0}")]
    Runtime(std::io::Error),
}

fn main() -> ExitCode {
    phoenix_pki::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PHOENIX_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // Two workers: the agent is mostly idle, and a guest's cores belong to its workload.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = rt
        .map_err(MainError::Runtime)
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, MainError> {
    let state = StateDir::open(&cli.state_dir)?;
    match cli.command {
        Command::Join { token, guest } => {
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
        } => {
            let signer = SessionSigner::default();
            let engine = Arc::new(Engine::new(host::handlers(&HostOptions {
                file_roots: policy.file_roots,
                signer: signer.clone(),
                state_dir: cli.state_dir.clone(),
            })));
            let opts = Options {
                drift_interval: Duration::from_secs(drift_interval.max(1)),
                backoff_max: Duration::from_secs(backoff_max.max(1)),
                ..Options::default()
            };
            let shutdown = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
                }
            };
            runtime::run(state, engine, signer, opts, shutdown).await?;
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
            let report = engine
                .run(&DesiredState::new(1, spec, dry_run), "local", &|| None)
                .await;
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
