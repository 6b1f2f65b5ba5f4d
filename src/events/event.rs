//! What happens, as every front end is told: the [`Event`]s and the views
//! of state they carry.

use libp2p::{Multiaddr, PeerId};
use messenger_proto::chat::MessageId;
use messenger_proto::name::ScreenName;
use messenger_proto::presence::{Presence, Status};
use serde::{Deserialize, Serialize};

use crate::network::{Path, Reachability};
use crate::peer::PeerInfo;
use crate::store::{Invitation, InvitedMe, MessageRequest, StoredMessage, Transfer, Unread};
use crate::tunnels::TunnelLog;

/// A contact as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactView {
    /// The name.
    pub name: ScreenName,
    /// The pinned key.
    pub pinned: PeerId,
    /// A different key the node reported, until trusted.
    pub key_changed_to: Option<PeerId>,
    /// Presence, if known (the node was reachable).
    pub presence: Option<Presence>,
    /// Status text while online.
    pub status_text: String,
    /// Last seen (ms since epoch).
    pub last_seen: Option<u64>,
    /// Whether the name is also blocked.
    pub blocked: bool,
    /// Files from them up to this size are accepted without asking.
    #[serde(default)]
    pub auto_accept_below: Option<u64>,
}

/// My settings as every front end shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsView {
    /// Whether others are told while I type.
    pub send_typing: bool,
    /// Whether the window rings the bell.
    pub bell: bool,
    /// Where accepted files go when no directory is given (unset: the
    /// user's downloads directory).
    pub downloads: Option<std::path::PathBuf>,
    /// The largest file accepted, in bytes (unset: no limit but the disk's
    /// room).
    pub max_file_size: Option<u64>,
}

/// Something the user should see, as it happens: every change of what a
/// front end shows is one. Every front end (the command line's output,
/// the terminal window, one following over the control socket) gets these
/// from one stream ([`crate::events`]). Those that carry state carry all
/// of it (a whole list, a count), so that applying one twice does no
/// harm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// Registered and reachable (again, after a reconnect).
    Online {
        /// My name.
        name: ScreenName,
        /// My registered addresses.
        addrs: Vec<Multiaddr>,
        /// False after a reconnect.
        first: bool,
        /// Directly, or through the node's relay.
        reachability: Reachability,
    },
    /// My registered addresses changed (moved, NAT mapping, relay).
    Addresses {
        /// The addresses now registered.
        addrs: Vec<Multiaddr>,
        /// Directly, or through the node's relay.
        reachability: Reachability,
    },
    /// How a peer is reached changed (hole punching).
    Path {
        /// The peer's name, if known.
        name: Option<ScreenName>,
        /// The peer.
        peer: PeerId,
        /// The path now.
        path: Path,
        /// Why hole punching failed, if it did.
        detail: Option<String>,
    },
    /// Lost the node; reconnecting.
    Reconnecting {
        /// Why.
        reason: String,
    },
    /// The node refused my registration; I stay offline.
    RegistrationRefused {
        /// Why.
        reason: String,
    },
    /// A message arrived (stored), over this path.
    Message {
        /// The message as stored.
        message: StoredMessage,
        /// How its sender is connected.
        path: Option<Path>,
    },
    /// A watched name's presence changed.
    Presence(PeerInfo),
    /// Someone is typing to me (or stopped).
    Typing {
        /// Who.
        name: ScreenName,
        /// Typing, or stopped.
        active: bool,
    },
    /// Someone nudged me.
    Nudge {
        /// Who.
        name: ScreenName,
    },
    /// A message of mine was written to its recipient (not acknowledged
    /// yet).
    Sent(StoredMessage),
    /// A transfer changed state.
    Transfer(Transfer),
    /// A tunnel someone opened to me opened, was refused, or closed.
    Tunnel(TunnelLog),
    /// Bytes of a transfer went through (at most a few times a second).
    Progress {
        /// The offer's id.
        id: MessageId,
        /// Bytes so far.
        done: u64,
        /// The file's size.
        size: u64,
    },
    /// A fetch started receiving bytes, from `offset` (a resumed one from
    /// what it had).
    Receiving {
        /// The offer's id.
        id: MessageId,
        /// Where the bytes start.
        offset: u64,
        /// The file's size.
        size: u64,
    },
    /// A fetch is waiting (the sender is unreachable, or the connection
    /// is relayed and hole punching is tried) and will try again.
    TransferWaiting {
        /// The offer's id.
        id: MessageId,
        /// Why.
        reason: String,
    },
    /// A message of mine was acknowledged.
    Delivered(StoredMessage),
    /// A message of mine was refused for good.
    Failed(StoredMessage),
    /// The message requests waiting changed: a message came from someone
    /// not accepted yet, or requests were accepted or declined.
    Requests {
        /// One per sender, oldest first.
        requests: Vec<MessageRequest>,
    },
    /// A contact's key is not the pinned one.
    KeyChanged {
        /// The contact.
        name: ScreenName,
        /// The pinned key.
        pinned: PeerId,
        /// The key seen now.
        current: PeerId,
    },
    /// My contacts changed: one added, removed, re-pinned, blocked or
    /// unblocked, a key change seen, files let in unasked.
    Contacts {
        /// Every contact now, by name.
        contacts: Vec<ContactView>,
    },
    /// The names I block changed.
    Blocked {
        /// Every name blocked now.
        names: Vec<ScreenName>,
    },
    /// My status or personal message changed.
    MyStatus {
        /// The status.
        status: Status,
        /// The personal message.
        text: String,
    },
    /// My settings changed.
    Settings(SettingsView),
    /// The unread count of a conversation changed (a message came, or it
    /// was read).
    Unread(Unread),
    /// A message of mine was stored and waits to be delivered (from any
    /// front end).
    Queued(StoredMessage),
    /// My invitations to connect, or the ones others told me of, changed.
    Invitations {
        /// Every invitation of mine, by name and port.
        invitations: Vec<Invitation>,
        /// Others' last word on each port they invited me to.
        invited_me: Vec<InvitedMe>,
    },
}
