use phoenix_agent::certs::SessionSigner;
use phoenix_agent::cli::{Cli, Command};
use phoenix_agent::host::{self, HostOptions};
use phoenix_agent::reconcile::{Engine, Stop, Trigger};
use phoenix_agent::runtime::{self, Options};
use phoenix_agent::state::StateDir;
use phoenix_proto::model::{DesiredState, GuestSpec, Status};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
    let state = StateDir::open(&cli.state_dir)?;
    match cli.command {
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
