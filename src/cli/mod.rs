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
    /// The recipient refused the message; it will not be retried.
    pub const NOT_DELIVERED: u8 = 6;
    /// Not delivered now but kept in the outbox: delivered when the
    /// recipient is reachable while `messenger online` runs on this home.
    pub const QUEUED: u8 = 7;
    /// The recipient is a contact whose key changed: nothing was sent.
    pub const KEY_CHANGED: u8 = 8;
}

const EXIT_CODES: &str = "\
Exit status:
  0  success (send: the recipient acknowledged the message)
  1  failure, e.g. the rendezvous node is unreachable
  2  invalid input: bad screen name, empty or oversized text, bad flags
  3  no such name
  4  name taken by another key
  6  not delivered: the recipient refused the message (it will not be retried)
  7  queued: kept in the outbox, delivered once the recipient is reachable
     while `messenger online` runs on this home
  8  the recipient's key changed since you added them: nothing was sent";

/// A peer-to-peer messenger: register a screen name with a rendezvous node,
/// then message people by name. Messages go directly between peers over
/// libp2p, signed with your ed25519 key; the rendezvous node only maps
/// names to keys and addresses.
///
/// While `online` or `chat` runs, the other commands on the same home
/// (send, status, contacts, block, unblock, history, outbox) go through it.
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
    ///
    /// The rendezvous node dials back to tell whether you are reachable
    /// directly; if not, you are reachable through its relay and peers
    /// switch to a direct connection by hole punching where the NATs allow.
    Online {
        /// Address to accept peers on (repeatable).
        /// [default: /ip4/0.0.0.0/tcp/0 and /ip4/0.0.0.0/udp/0/quic-v1]
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<Multiaddr>,
    },
    /// Send a message directly and wait for the recipient's acknowledgement.
    ///
    /// The message is stored first. If the recipient is offline or cannot be
    /// reached, it stays in the outbox (exit status 7) and is delivered, in
    /// order, as soon as the recipient is reachable while `messenger online`
    /// runs on this home.
    #[command(after_help = EXIT_CODES)]
    Send {
        /// The recipient's screen name.
        name: String,
        /// The text (1 byte to 64 KiB of UTF-8); `-` reads it from stdin.
        text: String,
    },
    /// Set my status while online: online, away, busy or invisible
    /// (appear offline; contacts can still deliver to me), with an
    /// optional text. Remembered for the next time I go online.
    Status {
        /// online, away, busy or invisible.
        status: String,
        /// A short note shown with it (at most 128 characters).
        #[arg(default_value = "")]
        text: String,
    },
    /// Manage contacts: names whose presence I see and whose key is pinned.
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Refuse messages from a name (the sender only sees "not delivered").
    Block {
        /// The name.
        name: String,
    },
    /// Accept messages from a blocked name again.
    Unblock {
        /// The name.
        name: String,
    },
    /// Show the conversation with a name, oldest first, with each message's
    /// state (queued, sent, delivered, failed, received).
    History {
        /// The other person's screen name.
        name: String,
        /// Show only the last N messages.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// List the messages waiting to be delivered.
    Outbox,
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

#[derive(Debug, Subcommand)]
enum ContactsCommand {
    /// Add a contact, pinning the key its name has now (trust on first use).
    Add {
        /// The name.
        name: String,
    },
    /// List contacts with their presence and status text.
    List,
    /// Remove a contact.
    Remove {
        /// The name.
        name: String,
    },
    /// Accept the key a contact's name has now, after it changed.
    Trust {
        /// The name.
        name: String,
    },
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
            if !failure.shown {
                out.error(failure.code, &failure.error);
            }
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
    /// Whether the command already told the user (no second error line).
    pub shown: bool,
}

impl Failure {
    fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
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
