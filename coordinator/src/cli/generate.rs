//! `phoenix generate man|completions DIR`: man pages and shell completions made from the
//! clap definitions, so the package never ships documentation that drifted from the flags.

use super::CliError;
use super::args::{Cli, Generated};
use clap::CommandFactory;
use clap_complete::Shell;
use std::path::Path;

pub(super) fn write(what: Generated, dir: &Path) -> Result<(), CliError> {
    let what_text = match what {
        Generated::Man => "man pages",
        Generated::Completions => "shell completions",
    };
    let failed = |e: std::io::Error| {
        CliError::Input(format!("write {what_text} into {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    let mut cmd = Cli::command();
    match what {
        Generated::Man => clap_mangen::generate_to(cmd, dir).map_err(failed)?,
        Generated::Completions => {
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut cmd, "phoenix", dir).map_err(failed)?;
            }
        }
    }
    Ok(())
}
