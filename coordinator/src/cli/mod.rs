//! The `phoenix` command line: `serve` runs the daemon; every other command talks to it
//! over the admin socket (or, `validate` and `schema`, to no one).
//!
//! [`args`] is what clap reads; [`run`] dispatches to one module per kind of command
//! ([`serve`], [`offline`], [`apply`] with its live [`follow`]er, [`inventory`],
//! [`identity`], [`events`] with [`history`], [`forget`], [`converge`]); [`render`] is
//! how they all show things.

mod apply;
mod args;
pub mod config;
mod converge;
pub mod duration;
pub(crate) mod events;
mod follow;
mod forget;
mod generate;
mod guest;
mod history;
mod identity;
mod inventory;
mod offline;
mod progress;
mod render;
mod serve;

pub use args::{CaKind, Cli, Command, Generated, GuestCommand, Output, ServeArgs, TokenCommand};

use crate::{admin_client, compile, server};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Admin(#[from] admin_client::AdminConnectError),
    #[error("{0}")]
    Rpc(String),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    /// Not every guest converged; the details were printed.
    #[error("{0}")]
    NotConverged(String),
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Rpc(s.message().to_string())
    }
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve::serve(*args, cli.admin_socket).await,
        Command::Token {
            command:
                TokenCommand::Create {
                    guest,
                    ttl,
                    replace,
                },
        } => identity::create_token(&cli.admin_socket, guest, ttl, replace).await,
        Command::Guest {
            command: GuestCommand::Install(args),
        } => guest::install(&cli.admin_socket, args).await,
        Command::Status { output } => inventory::status(&cli.admin_socket, output).await,
        Command::Agents { output } => inventory::agents(&cli.admin_socket, output).await,
        Command::Certs { output } => inventory::certs(&cli.admin_socket, output).await,
        Command::Apply {
            path,
            dry_run,
            timeout,
            no_wait,
            guest,
            wait_all,
            output,
            force,
        } => {
            let run = apply::Run {
                dry_run,
                timeout,
                no_wait,
                output,
                force,
                scope: apply::Scope {
                    guests: guest,
                    wait_all,
                },
            };
            apply::apply(&cli.admin_socket, &path, &run).await
        }
        Command::Plan {
            path,
            timeout,
            guest,
            output,
        } => {
            let run = apply::Run {
                dry_run: true,
                timeout,
                no_wait: false,
                output,
                force: false,
                scope: apply::Scope {
                    guests: guest,
                    wait_all: false,
                },
            };
            apply::apply(&cli.admin_socket, &path, &run).await
        }
        Command::Revoke { guest } => identity::revoke(&cli.admin_socket, guest).await,
        Command::Events {
            follow,
            guest,
            topic,
            since,
            output,
        } => {
            let q = events::Query {
                since,
                follow,
                guests: guest,
                topics: topic,
            };
            events::events(&cli.admin_socket, q, output).await
        }
        Command::History {
            guest,
            limit,
            output,
        } => history::history(&cli.admin_socket, guest, limit, output).await,
        Command::Forget { guest } => forget::forget(&cli.admin_socket, guest).await,
        Command::Converge {
            guest,
            timeout,
            no_wait,
        } => converge::converge(&cli.admin_socket, guest, timeout, no_wait).await,
        Command::Generate { what, dir } => generate::write(what, &dir),
        Command::Schema => {
            println!("{}", compile::schema_json());
            Ok(())
        }
        Command::Validate {
            path,
            show,
            trust_domain,
            output,
        } => offline::validate(&path, show, &trust_domain, output),
    }
}
