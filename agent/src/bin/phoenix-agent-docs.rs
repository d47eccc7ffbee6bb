//! `phoenix-agent-docs man|completions DIR`: the agent's man pages and shell completions,
//! made from the same clap definitions as `phoenix-agent` (`phoenix_agent::cli`), so the
//! package never ships documentation that drifted from the flags. A packaging tool, run by
//! coordinator/debian/build-deb.sh on the build machine and not shipped: the man page and
//! completion generators stay out of the agent binary every guest keeps resident (issue 14).

use clap::{CommandFactory, Parser, ValueEnum};
use phoenix_agent::cli::Cli;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "phoenix-agent-docs",
    version,
    about = "Write phoenix-agent's man pages or shell completions (for packaging)"
)]
struct Args {
    #[arg(value_enum)]
    what: Generated,
    /// Directory to write into (created).
    dir: PathBuf,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Generated {
    /// phoenix-agent.1 and phoenix-agent-<command>.1.
    Man,
    /// bash (phoenix-agent), zsh (_phoenix-agent) and fish (phoenix-agent.fish).
    Completions,
}

#[derive(Debug, thiserror::Error)]
#[error("write {what:?} into {dir}: {source}")]
struct GenerateError {
    what: Generated,
    dir: PathBuf,
    source: std::io::Error,
}

fn generate(what: Generated, dir: &Path) -> Result<(), GenerateError> {
    let failed = |e: std::io::Error| GenerateError {
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

fn main() -> ExitCode {
    let args = Args::parse();
    match generate(args.what, &args.dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
