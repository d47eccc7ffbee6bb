use phoenix_coordinator::cli::{Cli, CliError};

/// mimalloc instead of glibc's malloc: at 10,000 agents glibc's malloc and free were
/// about 15 % of the coordinator's CPU (perf over bench_spine), much of it consolidating
/// fast bins. Built without its transparent-huge-page advice (`no_thp`): with it, the
/// heap's arenas were backed by 2 MiB pages and the coordinator held ~120 MB more with
/// 10,000 sessions than with glibc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    phoenix_pki::tls::install_default_provider();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PHOENIX_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Under systemd stderr goes to the journal, which stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        logs.without_time().init();
    } else {
        logs.init();
    }
    let cli = match Cli::parse_with_config() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking work is store calls, which mostly wait for the store's one writer:
        // more threads only queue there, and 10,000 agents renewing at once spawned
        // hundreds of them (about 100 MB of stacks and malloc arenas, bench_spine).
        .max_blocking_threads(32)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(phoenix_coordinator::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e @ CliError::NotConverged(_)) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
