//! The `messenger` command line: argument parsing, then one function per
//! command in [`commands`], printing through [`output`].

mod commands;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use tracing_subscriber::EnvFilter;

pub use output::Output;

/// Exit status of every command: what scripts can rely on.
pub mod exit {
    /// Success (for `send`: the recipient acknowledged).
    pub const OK: u8 = 0;
    /// Any other failure, e.g. the rendezvous node is unreachable.
    pub const FAILURE: u8 = 1;
    /// Invalid input: bad name, empty or oversized text, bad flags.
    pub const INVALID: u8 = 2;
    /// The name is not registered by anyone.
    pub const NO_SUCH_NAME: u8 = 3;
    /// The name is owned by another key.
    pub const NAME_TAKEN: u8 = 4;
    /// The recipient is offline; nothing was sent.
    pub const OFFLINE: u8 = 5;
    /// The recipient is online but could not be reached, or did not
    /// acknowledge the message.
    pub const NOT_DELIVERED: u8 = 6;
}

const EXIT_CODES: &str = "\
Exit status:
  0  success (send: the recipient acknowledged the message)
  1  failure, e.g. the rendezvous node is unreachable
  2  invalid input: bad screen name, empty or oversized text, bad flags
  3  no such name
  4  name taken by another key
  5  recipient offline: nothing was sent
  6  recipient unreachable, or the message was not acknowledged";

/// A peer-to-peer messenger: register a screen name with a rendezvous node,
/// then message people by name. Messages go directly between peers over
/// libp2p, signed with your ed25519 key; the rendezvous node only maps
/// names to keys and addresses.
#[derive(Debug, Parser)]
#[command(version, after_help = EXIT_CODES)]
pub struct Args {
    /// Directory holding your key, config and local data.
    /// [default: the per-user data directory, e.g. ~/.local/share/messenger]
    #[arg(long, global = true, env = "MESSENGER_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    /// The rendezvous node, as printed by `rendezvous` (ends in /p2p/<id>).
    /// Remembered in the home after the first successful register.
    #[arg(
        long,
        global = true,
        env = "MESSENGER_RENDEZVOUS",
        value_name = "MULTIADDR"
    )]
    rendezvous: Option<Multiaddr>,

    /// Machine-readable output: one JSON object per line.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show my peer id, and my screen name if registered.
    Id,
    /// Claim a screen name (succeeds if I already own it).
    ///
    /// Names are case-insensitive: 3-32 characters of a-z, 0-9, '.', '_'
    /// or '-', starting with a letter.
    Register {
        /// The name to claim.
        name: String,
    },
    /// Give up a screen name I own; anyone may claim it afterwards.
    Release {
        /// The name to give up.
        name: String,
    },
    /// Look up a name: peer id, addresses, online or offline, last seen.
    Whois {
        /// The name to look up.
        name: String,
    },
    /// Stay online: keep the registration live, accept direct connections,
    /// and print each incoming message as `[HH:MM:SS] name: text`.
    Online {
        /// Address to accept peers on (repeatable).
        /// [default: /ip4/0.0.0.0/tcp/0 and /ip4/0.0.0.0/udp/0/quic-v1]
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<Multiaddr>,
    },
    /// Send a message directly and wait for the recipient's acknowledgement.
    #[command(after_help = EXIT_CODES)]
    Send {
        /// The recipient's screen name.
        name: String,
        /// The text (1 byte to 64 KiB of UTF-8); `-` reads it from stdin.
        text: String,
    },
    /// Talk with someone: typed lines are sent, incoming messages printed,
    /// while staying online. End with Ctrl-D.
    Chat {
        /// The other person's screen name.
        name: String,
        /// Address to accept peers on (repeatable).
        /// [default: /ip4/0.0.0.0/tcp/0 and /ip4/0.0.0.0/udp/0/quic-v1]
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<Multiaddr>,
    },
    /// Try it out: a rendezvous node and two users on 127.0.0.1 in one
    /// process, exchanging messages both ways, with measured times.
    Demo,
}

/// Runs the command line and returns the process exit status.
pub fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
            out.error(failure.code, &failure.error);
            failure.code
        }
    };
    // Background tasks (network loops) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    ExitCode::from(code)
}

/// A failed command: the error to show and the exit status to return.
#[derive(Debug)]
pub struct Failure {
    /// Exit status, one of [`exit`].
    pub code: u8,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl Failure {
    fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Self::new(exit::FAILURE, error)
    }
}
