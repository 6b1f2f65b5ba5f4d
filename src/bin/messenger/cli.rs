//! The command line: what `messenger` accepts, with its help texts.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use libp2p::Multiaddr;

pub(crate) const EXIT_CODES: &str = "\
Exit status:
  0  success (send: the recipient acknowledged the message)
  1  failure, e.g. the rendezvous node is unreachable
  2  invalid input: bad screen name, empty or oversized text, bad flags
  3  no such name
  4  name taken by another key
  6  not delivered: the recipient refused the message (it will not be retried)
  7  queued: kept in the outbox, delivered once the recipient is reachable
     while `messenger online` runs on this home
  8  the recipient's key changed since you added them: nothing was sent
  9  no space left on the device holding the home: nothing new was stored
 10  the home's store is damaged: nothing in it was changed
 11  refused by the other side: a tunnel or pipe they did not invite you to,
     withdrew, or cannot take now";

/// A peer-to-peer messenger: register a screen name with a rendezvous node,
/// then message people by name. Messages go directly between peers over
/// libp2p, signed with your ed25519 key; the rendezvous node only maps
/// names to keys and addresses.
///
/// While `online` or `chat` runs, the other commands on the same home
/// (send, status, contacts, block, unblock, history, outbox, files,
/// invite, connect, pipe) go through it; `file send`, `accept` and
/// `decline` need it, and it serves the ports you invite contacts to.
#[derive(Debug, Parser)]
#[command(version, after_help = EXIT_CODES)]
pub(crate) struct Args {
    /// Directory holding your key, config and local data.
    /// [default: the per-user data directory, e.g. ~/.local/share/messenger]
    #[arg(long, global = true, env = "MESSENGER_HOME", value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,

    /// The rendezvous node, as printed by `rendezvous` (ends in /p2p/<id>).
    /// Repeat it (or separate addresses with commas) to give several nodes
    /// of one cluster: the client uses the first it reaches and fails over
    /// to the next when that one dies. Remembered in the home after the
    /// first successful register.
    #[arg(
        long,
        global = true,
        env = "MESSENGER_RENDEZVOUS",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub(crate) rendezvous: Vec<Multiaddr>,

    /// Machine-readable output: one JSON object per line.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// What to do; with none, in a terminal, the window (`ui`).
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// What to do with message requests.
#[derive(Debug, Subcommand)]
pub(crate) enum RequestsCommand {
    /// Decline a request: what they sent is removed from the history.
    Decline {
        /// Whose request.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Every request.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
        /// 127.0.0.1:9465; port 0 picks one, told as `metrics http://…`):
        /// connections, messages sent, delivered and received, reconnects.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Also serve the web window at http://ADDR/ (e.g. 127.0.0.1:0,
        /// port 0 picks one), told as `web http://…/#TOKEN`: open that
        /// address, once, in your browser. Loopback addresses only, unless
        /// named explicitly.
        #[arg(long, value_name = "ADDR")]
        web: Option<std::net::SocketAddr>,
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
    /// List the message requests: people who wrote to me whom I have not
    /// accepted yet (not contacts, nobody I wrote to).
    ///
    /// Until I accept them, each may keep only a few messages here (50,
    /// 1 MiB), all of them together 500 messages or 32 MiB, and none when
    /// less than 256 MiB is free on the disk: beyond that they are told
    /// their messages are not taken in. Accept someone by adding them
    /// (`messenger contacts add NAME`) or writing to them.
    Requests {
        #[command(subcommand)]
        action: Option<RequestsCommand>,
    },
    /// Follow the running client (`online`, `chat` or the window on this
    /// home): first what it shows now (me, contacts, blocks, settings,
    /// unread counts, outbox, invitations, requests, transfers), then every
    /// change as it happens, whichever front end made it, until Ctrl-C.
    ///
    /// With --json, the control socket's own lines (docs/protocol.md §7):
    /// the snapshot, then one numbered event per line. Falling too far
    /// behind prints a new snapshot, and the events go on from there; it
    /// ends when the client stops.
    Events,
    /// Send a file directly, and answer files offered to me.
    ///
    /// Files go over the direct connection (never through the rendezvous
    /// node), are checked against the BLAKE3 hash the sender signed before
    /// they are saved, and resume where they stopped after a lost
    /// connection or a restart. Needs the running client (`messenger
    /// online` or the window) on this home: it serves and fetches them.
    #[command(subcommand)]
    File(FileCommand),
    /// List the files offered by me and to me, with their state.
    Files {
        /// Remember DIR as where accepted files go when no `--to` is given
        /// (and where a contact's files accepted unasked go).
        /// [default: your downloads directory]
        #[arg(long, value_name = "DIR")]
        downloads: Option<PathBuf>,
        /// Remember SIZE (e.g. 2GiB, 500MiB) as the largest file you
        /// accept, asked or not; 0 for no limit but the disk's room.
        /// [default: no limit]
        #[arg(long, value_name = "SIZE")]
        max_size: Option<String>,
    },
    /// Let a contact reach a TCP port on this machine, by your name.
    ///
    /// NAME (a contact: the key pinned for them, and only it) may then run
    /// `messenger connect YOUR_NAME PORT`; each TCP connection they make
    /// to their local end is carried over the direct connection to your
    /// client, which connects it to 127.0.0.1:PORT here. They are told in
    /// a message. Served while your client runs (`messenger online` or the
    /// window); every tunnel is logged there.
    Invite {
        /// The contact.
        name: String,
        /// The port on 127.0.0.1 they may reach.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// Withdraw the invitation instead (open tunnels to it close).
        #[arg(long)]
        revoke: bool,
    },
    /// List whom I invited to which port (and what I withdrew), and who
    /// invited me to which of theirs.
    Invites,
    /// Reach a port a contact invited me to: listen on 127.0.0.1 here and
    /// carry each connection to their 127.0.0.1:PORT over the direct
    /// connection, until interrupted.
    ///
    /// Asks them first, so that a port you are not invited to is refused at
    /// once (exit status 11). Goes through this home's running client, or
    /// runs one (online) while it lasts.
    #[command(after_help = EXIT_CODES)]
    Connect {
        /// Who invited me.
        name: String,
        /// Their port.
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// The local port to listen on [default: any free port, printed].
        #[arg(long, value_name = "LOCAL_PORT", default_value_t = 0)]
        local: u16,
    },
    /// Connect stdin and stdout to a contact's `messenger pipe --listen`,
    /// or, with --listen, wait for one pipe from a contact: netcat by name.
    ///
    /// The end of stdin is passed on; it ends when both sides have
    /// finished sending (reading from a terminal: once the other side has).
    /// With --listen, the waiting is said on stderr; only contacts may open
    /// a pipe.
    #[command(after_help = EXIT_CODES)]
    Pipe {
        /// Whom to pipe to; with --listen, the only contact accepted
        /// [default with --listen: any contact].
        #[arg(required_unless_present = "listen")]
        name: Option<String>,
        /// Wait for a pipe instead of opening one.
        #[arg(long)]
        listen: bool,
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
    /// The buddy-list window in this terminal: contacts by presence,
    /// conversations, typing indicators, delivery marks. Also what plain
    /// `messenger` opens in a terminal. While it runs it is this home's
    /// client, like `online`. Signs in (asks for the node and a name) on
    /// first run. F1 in the window lists the keys.
    Ui {
        /// Address to accept peers on (repeatable).
        /// [default: /ip4/0.0.0.0/tcp/0 and /ip4/0.0.0.0/udp/0/quic-v1]
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<Multiaddr>,
    },
    /// The Messenger window in your browser: serves it on 127.0.0.1 and
    /// opens it.
    ///
    /// Prints one line, `web http://127.0.0.1:PORT/#TOKEN`: the address to
    /// open (the token after `#` works once, and changes with every start).
    /// Runs the home's client, as `online` does (a fresh home signs in from
    /// the page), or serves the one already running on the home. Stays until
    /// Ctrl-C or SIGTERM.
    Web {
        /// Where to serve the page [default: 127.0.0.1 on a free port].
        /// An address beyond this machine is served only when named here,
        /// with a warning: anyone who can reach it may try the page's door.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Do not open the browser; only print the address.
        #[arg(long)]
        no_open: bool,
        /// Address to accept peers on (repeatable).
        /// [default: /ip4/0.0.0.0/tcp/0 and /ip4/0.0.0.0/udp/0/quic-v1]
        #[arg(long, value_name = "MULTIADDR")]
        peer_listen: Vec<Multiaddr>,
    },
    /// Try it out: a rendezvous node and two users on 127.0.0.1 in one
    /// process, exchanging messages both ways, with measured times.
    Demo,
    /// Print a shell completion script, e.g.
    /// `messenger completions bash > ~/.local/share/bash-completion/completions/messenger`.
    Completions {
        /// bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g.
    /// `messenger man > ~/.local/share/man/man1/messenger.1`.
    Man,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ContactsCommand {
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
    /// Accept files from a contact without asking, up to a size.
    AutoAccept {
        /// The contact.
        name: String,
        /// The largest file accepted unasked, e.g. 10MiB, 500k, 2G.
        #[arg(long, value_name = "SIZE", required_unless_present = "off")]
        below: Option<String>,
        /// Ask again for every file from them.
        #[arg(long, conflicts_with = "below")]
        off: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum FileCommand {
    /// Offer a file to NAME and follow its transfer (progress on stderr)
    /// until they have it whole and checked.
    Send {
        /// The recipient's screen name.
        name: String,
        /// The file.
        path: PathBuf,
        /// Return once the offer is stored; the running client serves it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Accept a file offered to me (the id `messenger files` shows) and
    /// follow its transfer until it is saved. Also resumes one that
    /// stopped (a full disk, say).
    Accept {
        /// The offer's id.
        id: String,
        /// Where to save it [default: your downloads directory].
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// Return at once; the running client fetches it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Decline a file offered to me.
    Decline {
        /// The offer's id.
        id: String,
    },
}
