//! `messenger`: the command-line front end of the messenger library.
//!
//! - [`cli`]: the arguments and their help texts.
//! - [`commands`]: one function per command; the commands that need the
//!   home's client go through the running one's control socket, or run
//!   their own for the one request.
//! - [`render`]: how replies and events read, for people and as JSON.
//! - [`output`]: where they are printed.
//! - [`printable`]: what peers wrote, made safe for a terminal.
//! - [`exit`]: exit statuses, mapped from the library's failure kinds.
//! - [`demo`]: a node and two users in one process.
//! - [`running`]: the home's running client (`online`, `chat`, the window).
//! - [`window`]: the buddy-list window in the terminal.
//! - [`transfer`]: following a file transfer, with a progress bar.
//! - [`tunnel`]: `connect` and `pipe`, tunnels by name.

mod cli;
mod commands;
mod demo;
mod exit;
mod output;
mod printable;
mod render;
mod running;
mod transfer;
mod tunnel;
mod web;
mod window;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::output::Output;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    // The window owns the terminal: its logs go to a file in the home.
    match window_log(&args) {
        Some(file) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .init(),
        None => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let out = Output::new(args.json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            out.error(
                exit::FAILURE,
                &anyhow::anyhow!("cannot start the runtime: {e}"),
            );
            return ExitCode::from(exit::FAILURE);
        }
    };
    let code = match runtime.block_on(commands::run(args, &out)) {
        Ok(()) => exit::OK,
        Err(failure) => {
            if !failure.shown {
                out.error(failure.code, &failure.error);
            }
            failure.code
        }
    };
    // Everything was shut down by the command; nothing may keep the
    // process alive beyond this.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    ExitCode::from(code)
}

/// When the command is the window: the file its logs go to,
/// `<home>/messenger.log` (appended to).
fn window_log(args: &cli::Args) -> Option<std::fs::File> {
    use std::io::IsTerminal;
    let window = matches!(&args.command, Some(cli::Command::Ui { .. }) | None)
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal();
    if !window {
        return None;
    }
    let dir = args
        .home
        .clone()
        .or_else(messenger::home::Home::default_dir)?;
    // Made as private as the home always is.
    let home = messenger::home::Home::open(&dir).ok()?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.dir().join("messenger.log"))
        .ok()
}

/// A failed command: the error to show and the exit status to return.
#[derive(Debug)]
pub(crate) struct Failure {
    /// Exit status, one of [`exit`].
    pub(crate) code: u8,
    /// What went wrong.
    pub(crate) error: anyhow::Error,
    /// Whether the command already told the user (no second error line).
    pub(crate) shown: bool,
}

impl Failure {
    pub(crate) fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: error.into(),
            shown: false,
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Self::new(exit::FAILURE, error)
    }
}

impl Failure {
    /// A failure the library reported, with the exit status of its kind
    /// and what to run about it (the library says what is wrong; which
    /// command puts it right is this front end's to say).
    pub(crate) fn of(failure: messenger::api::Failure) -> Self {
        let message = match exit::hint(failure.kind) {
            Some(hint) => format!("{} ({hint})", failure.message),
            None => failure.message,
        };
        Self::new(exit::of(failure.kind), anyhow::anyhow!(message))
    }
}
