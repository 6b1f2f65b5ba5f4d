//! The command set, written once: what a front end asks the home's client
//! ([`Request`]) and what it answers ([`Response`]), whether in process
//! ([`crate::agent::Agent::call`]) or over the control socket
//! ([`crate::control`]), where they travel as JSON (docs/protocol.md §7),
//! and the [`Snapshot`] a front end starts from. What the client tells its
//! front ends as things happen ([`Event`]) is [`crate::events`]'.

use libp2p::{Multiaddr, PeerId};
use messenger_proto::chat::MessageId;
use messenger_proto::name::ScreenName;
use messenger_proto::presence::Status;
use serde::{Deserialize, Serialize};

pub use crate::events::{ContactView, Event, SettingsView};
use crate::network::Path;
use crate::peer::PeerInfo;
use crate::store::{Invitation, InvitedMe, MessageRequest, StoredMessage, Transfer, Unread};

/// What a front end asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// Store a message and deliver it (or queue it). The id is chosen by
    /// the caller: a request repeated with the same id (after its client
    /// died, say) stores the message once and reports its state.
    Send {
        /// The message's id.
        id: MessageId,
        /// The recipient, any case.
        #[serde(deserialize_with = "any_case")]
        to: ScreenName,
        /// The text.
        text: String,
    },
    /// Store a message and hand it to delivery, answering as soon as it is
    /// stored (its outcome follows as an event): what `chat` does for each
    /// line. Like `send`, the id decides whether it is stored again.
    Enqueue {
        /// The message's id.
        id: MessageId,
        /// The recipient, any case.
        #[serde(deserialize_with = "any_case")]
        to: ScreenName,
        /// The text.
        text: String,
    },
    /// Change my status (remembered for the next time I go online).
    Status {
        /// The status.
        status: Status,
        /// Its text.
        text: String,
    },
    /// Add a contact, pinning the key its name has now.
    ContactsAdd {
        /// The name.
        #[serde(deserialize_with = "any_case")]
        name: ScreenName,
    },
    /// Remove a contact.
    ContactsRemove {
        /// The name.
        #[serde(deserialize_with = "any_case")]
        name: ScreenName,
    },
    /// Pin the key a contact's name has now.
    ContactsTrust {
        /// The name.
        #[serde(deserialize_with = "any_case")]
        name: ScreenName,
    },
    /// Every contact with its presence.
    ContactsList,
    /// Refuse messages from a name.
    Block {
        /// The name.
        #[serde(deserialize_with = "any_case")]
        name: ScreenName,
    },
    /// Accept messages from a name again.
    Unblock {
        /// The name.
        #[serde(deserialize_with = "any_case")]
        name: ScreenName,
    },
    /// The last messages with a name, oldest first.
    History {
        /// The other party.
        #[serde(deserialize_with = "any_case")]
        name: ScreenName,
        /// How many of the latest.
        limit: usize,
        /// Only messages older than this one (its `seq`): to page back
        /// through a whole conversation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
    },
    /// What waits to be delivered, oldest first.
    Outbox,
    /// A stored message by id.
    Message {
        /// Its id.
        id: MessageId,
    },
    /// Look a name up (verified).
    Whois {
        /// The name.
        #[serde(deserialize_with = "any_case")]
        name: ScreenName,
    },
    /// Claim a name (or confirm I own it) and remember it.
    Register {
        /// The name.
        #[serde(deserialize_with = "any_case")]
        name: ScreenName,
    },
    /// Give a name up.
    Release {
        /// The name.
        #[serde(deserialize_with = "any_case")]
        name: ScreenName,
    },
    /// Tell a contact I am typing (or stopped): ephemeral, dropped if the
    /// contact cannot be reached now. Sent only while the setting allows.
    Typing {
        /// The name.
        #[serde(deserialize_with = "any_case")]
        to: ScreenName,
        /// Typing, or stopped.
        active: bool,
    },
    /// Nudge someone: their window shakes or rings. Ephemeral.
    Nudge {
        /// The name.
        #[serde(deserialize_with = "any_case")]
        to: ScreenName,
    },
    /// Change settings (each one given), remembered in the home.
    Settings {
        /// Whether others are told while I type.
        send_typing: Option<bool>,
        /// Whether the window rings the bell.
        bell: Option<bool>,
        /// Where accepted files go when no directory is given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        downloads: Option<std::path::PathBuf>,
        /// The largest file I accept, in bytes (0: no limit but the
        /// disk's room).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_file_size: Option<u64>,
    },
    /// Offer the file at `path` (absolute) to `to`, in a message stored
    /// under `id`; replies once the offer is stored (as `enqueue` does).
    FileSend {
        /// The offer's message id, chosen by the caller.
        id: MessageId,
        /// The recipient.
        #[serde(deserialize_with = "any_case")]
        to: ScreenName,
        /// The file.
        path: std::path::PathBuf,
    },
    /// Accept an offer: fetch the file into `dir` (else the downloads
    /// directory). Also resumes a transfer that stopped on a full disk.
    FileAccept {
        /// The offer's message id.
        id: MessageId,
        /// Where to save it.
        dir: Option<std::path::PathBuf>,
    },
    /// Decline an offer (the sender is told if reachable).
    FileDecline {
        /// The offer's message id.
        id: MessageId,
    },
    /// Every transfer, with what was received so far.
    Files,
    /// Let a contact's offers up to `below` bytes in without asking
    /// (`None`: always ask).
    AutoAccept {
        /// The contact.
        #[serde(deserialize_with = "any_case")]
        name: ScreenName,
        /// The largest size accepted unasked.
        below: Option<u64>,
    },
    /// Let a contact (the key pinned for them now) open TCP connections to
    /// `127.0.0.1:port` here, through my client; with `revoke`, withdraw
    /// that (and close its open tunnels). The contact is told in a message.
    Invite {
        /// The contact.
        #[serde(deserialize_with = "any_case")]
        name: ScreenName,
        /// The port.
        port: u16,
        /// Withdraw instead.
        revoke: bool,
    },
    /// My invitations, open and withdrawn, and the ones others told me
    /// of.
    Invitations,
    /// Open a tunnel to `to`: a TCP connection to a port they invited me
    /// to (`connect`), the question whether they would (`check`), or a
    /// pipe. Only over the control socket, which then carries the
    /// tunnel's bytes (answered [`Response::TunnelOpened`]); in process,
    /// [`crate::agent::Agent::open_tunnel`].
    Tunnel {
        /// Their name.
        #[serde(deserialize_with = "any_case")]
        to: ScreenName,
        /// What to ask for.
        request: messenger_proto::tunnel::TunnelRequest,
    },
    /// Wait for the next pipe from `from` (any contact when absent). Only
    /// over the control socket: answered first when waiting, then
    /// [`Response::TunnelOpened`] when a pipe came, after which the
    /// socket carries its bytes; in process,
    /// [`crate::agent::Agent::listen_pipe`].
    PipeListen {
        /// Whose pipe.
        #[serde(default, deserialize_with = "any_case_or_none")]
        from: Option<ScreenName>,
    },
    /// The message requests waiting: senders not accepted yet (not
    /// contacts, nobody I wrote to), with what each has stored.
    Requests,
    /// Decline the message request of `name` (everyone's when absent):
    /// what they sent is removed.
    RequestsDecline {
        /// Whose (`null`: everyone's; required, so that a misspelt field
        /// declines nobody's).
        #[serde(deserialize_with = "any_case_or_none")]
        name: Option<ScreenName>,
    },
    /// Mark the conversation with `name` read: its unread count goes to 0.
    MarkRead {
        /// The other party.
        #[serde(deserialize_with = "any_case")]
        name: ScreenName,
    },
    /// Everything a front end shows, at once, with the number of the last
    /// event it includes: follow from there (`follow`) to miss nothing.
    Snapshot,
    /// The events after number `after` of run `run` (both from a
    /// snapshot), as they happen. Only over the control socket, which then
    /// carries one [`Response::Event`] per line until the caller goes; in
    /// process, [`crate::agent::Agent::follow`].
    Follow {
        /// The run of the client the number belongs to.
        run: String,
        /// The last event already seen.
        after: u64,
    },
}

/// A screen name as a front end gives it: in any case, normalised here
/// (on the wire between peers only the normal form is taken).
fn any_case<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ScreenName, D::Error> {
    let raw = String::deserialize(d)?;
    ScreenName::parse(&raw).map_err(serde::de::Error::custom)
}

/// [`any_case`], for a name that may be absent.
fn any_case_or_none<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<ScreenName>, D::Error> {
    let raw = Option::<String>::deserialize(d)?;
    raw.map(|raw| ScreenName::parse(&raw).map_err(serde::de::Error::custom))
        .transpose()
}

/// A transfer as shown: its record and how many bytes have arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    /// The transfer.
    #[serde(flatten)]
    pub transfer: Transfer,
    /// Bytes received (theirs: the partial file; mine: all once completed).
    pub received: u64,
}

/// What the client answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    /// A send's outcome.
    Sent(SendOutcome),
    /// Done; a sentence saying what.
    Done {
        /// What was done.
        message: String,
    },
    /// Contacts.
    Contacts {
        /// Every contact.
        contacts: Vec<ContactView>,
    },
    /// Messages, oldest first.
    Messages {
        /// The messages.
        messages: Vec<StoredMessage>,
    },
    /// Transfers, with the bytes that have arrived of each.
    Transfers {
        /// The transfers.
        transfers: Vec<TransferView>,
    },
    /// Invitations of mine, and the ones others told me of.
    Invitations {
        /// Every invitation of mine, by name and port.
        invitations: Vec<Invitation>,
        /// Others' last word on each port they invited me to.
        #[serde(default)]
        invited_me: Vec<InvitedMe>,
    },
    /// A tunnel is open: from here on, the control socket carries its
    /// bytes.
    TunnelOpened {
        /// The other side.
        peer: ScreenName,
        /// Their key.
        peer_id: PeerId,
    },
    /// One stored message, if it is stored.
    Message {
        /// The message.
        message: Option<StoredMessage>,
    },
    /// What the node says of a name (verified), and how we are connected
    /// to it now.
    Peer {
        /// The answer.
        peer: PeerInfo,
        /// The path of our open connection to it: `None` when there is none.
        path: Option<Path>,
    },
    /// A name is mine.
    Registered {
        /// The name.
        name: ScreenName,
        /// Whether this request claimed it (false: it was mine already).
        new_claim: bool,
        /// My key.
        peer_id: PeerId,
        /// The node, remembered in the home.
        rendezvous: Multiaddr,
    },
    /// A name is given up.
    Released {
        /// The name.
        name: ScreenName,
    },
    /// The message requests waiting, oldest first.
    Requests {
        /// One per sender.
        requests: Vec<MessageRequest>,
    },
    /// Everything a front end shows (see [`Snapshot`]).
    Snapshot(Box<Snapshot>),
    /// One event of a `follow`, with its number.
    Event {
        /// Its number in this run's journal.
        seq: u64,
        /// What happened.
        event: Event,
    },
    /// It failed.
    Failed(Failure),
}

/// How a send ended, for now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SendOutcome {
    /// The recipient acknowledged it.
    Delivered {
        /// The message as stored.
        message: StoredMessage,
        /// The recipient's key.
        peer_id: PeerId,
        /// Whether the connection that carried it was direct or relayed.
        path: Option<Path>,
        /// Resolving the name, in ms (0 when it was known).
        resolve_ms: f64,
        /// Dialling and opening the stream, in ms (0 when one was open).
        dial_ms: f64,
        /// Writing until the acknowledgement, in ms.
        deliver_ms: f64,
    },
    /// Stored in the outbox; delivered when the recipient is reachable.
    Queued {
        /// The message as stored.
        message: StoredMessage,
        /// Why it was not delivered now.
        reason: String,
    },
}

/// Who I am and how I am shown, as every front end shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeView {
    /// My screen name, once registered.
    pub name: Option<ScreenName>,
    /// My key.
    pub peer_id: PeerId,
    /// My status.
    pub status: Status,
    /// My personal message.
    pub text: String,
    /// Whether the client is online (registered, or reconnecting).
    pub online: bool,
}

/// Everything a front end shows, read at once: what a new front end
/// starts from before it follows events from `seq` on.
///
/// `seq` is taken before the state is read, so an event after it may
/// already be reflected here: events carry whole values (a list, a count,
/// a message by id), and applying one twice changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The run of the client the numbers belong to.
    pub run: String,
    /// The number of the last event included.
    pub seq: u64,
    /// Me.
    pub me: MeView,
    /// My contacts, by name.
    pub contacts: Vec<ContactView>,
    /// Every name I block (contacts or not).
    pub blocked: Vec<ScreenName>,
    /// My settings.
    pub settings: SettingsView,
    /// The conversations with messages not read yet.
    pub unread: Vec<Unread>,
    /// What waits to be delivered, oldest first.
    pub outbox: Vec<StoredMessage>,
    /// My invitations to connect, open and withdrawn.
    pub invitations: Vec<Invitation>,
    /// Others' last word on each port they invited me to.
    pub invited_me: Vec<InvitedMe>,
    /// The message requests waiting.
    pub requests: Vec<MessageRequest>,
    /// Every transfer, with what arrived so far.
    pub transfers: Vec<TransferView>,
}

/// A request that failed: what kind of failure (stable, for programs and
/// exit statuses) and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// What kind.
    pub kind: FailureKind,
    /// What went wrong and what is allowed.
    pub message: String,
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: FailureKind, message: impl std::fmt::Display) -> Self {
        Self {
            kind,
            message: message.to_string(),
        }
    }
}

/// Kinds of failure, stable on the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// Bad input: a name, a text, a status.
    Invalid,
    /// Nobody owns the name.
    NoSuchName,
    /// Another key owns the name.
    NameTaken,
    /// The recipient refused the message, for good.
    NotDelivered,
    /// A contact's key is not the pinned one.
    KeyChanged,
    /// There is no screen name to act as yet.
    NoName,
    /// The rendezvous node cannot be reached or refused us.
    Unreachable,
    /// The disk holding the home is full.
    DiskFull,
    /// The home's store is damaged.
    StoreDamaged,
    /// Another process holds the home's store.
    StoreInUse,
    /// The other side refused: a tunnel not invited, withdrawn, busy.
    Refused,
    /// A follower missed events (it fell behind, or the client
    /// restarted): take a new snapshot and follow from there.
    EventsMissed,
    /// The name is not a contact, and only a contact may be (invited, let
    /// in unasked).
    NotAContact,
    /// It needs the client online (serving tunnels, fetching files), and
    /// it is not.
    NotOnline,
    /// Over a limit the user set (the largest file accepted).
    OverLimit,
    /// No rendezvous node is known to reach.
    NoNode,
    /// Anything else.
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::screen_name;

    /// The examples of docs/protocol.md §7, as the code writes them; the
    /// document must hold each line as it is here.
    #[test]
    fn the_control_socket_speaks_as_documented() {
        let id = MessageId([0xab; 16]);
        let requests = [
            (
                Request::Send {
                    id,
                    to: screen_name("bob"),
                    text: "hi".into(),
                },
                r#"{"op":"send","id":"abababababababababababababababab","to":"bob","text":"hi"}"#,
            ),
            (
                Request::Status {
                    status: Status::Away,
                    text: "lunch".into(),
                },
                r#"{"op":"status","status":"away","text":"lunch"}"#,
            ),
            (Request::ContactsList, r#"{"op":"contacts_list"}"#),
            (
                Request::History {
                    name: screen_name("bob"),
                    limit: 20,
                    before: None,
                },
                r#"{"op":"history","name":"bob","limit":20}"#,
            ),
            (
                Request::Settings {
                    send_typing: Some(false),
                    bell: None,
                    downloads: None,
                    max_file_size: None,
                },
                r#"{"op":"settings","send_typing":false,"bell":null}"#,
            ),
            (
                Request::Invite {
                    name: screen_name("bob"),
                    port: 8080,
                    revoke: false,
                },
                r#"{"op":"invite","name":"bob","port":8080,"revoke":false}"#,
            ),
            (
                Request::Tunnel {
                    to: screen_name("alice"),
                    request: messenger_proto::tunnel::TunnelRequest::Connect { port: 8080 },
                },
                r#"{"op":"tunnel","to":"alice","request":{"connect":{"port":8080}}}"#,
            ),
            (
                Request::MarkRead {
                    name: screen_name("bob"),
                },
                r#"{"op":"mark_read","name":"bob"}"#,
            ),
            (Request::Snapshot, r#"{"op":"snapshot"}"#),
            (
                Request::Follow {
                    run: "5f1c0a7e9d2b4c61".into(),
                    after: 41,
                },
                r#"{"op":"follow","run":"5f1c0a7e9d2b4c61","after":41}"#,
            ),
        ];
        let responses = [
            (
                Response::Done {
                    message: "added bob".into(),
                },
                r#"{"reply":"done","message":"added bob"}"#,
            ),
            (
                Response::Message { message: None },
                r#"{"reply":"message","message":null}"#,
            ),
            (
                Response::Failed(Failure::new(
                    FailureKind::DiskFull,
                    "no space left on the device holding /home/me/.messenger",
                )),
                r#"{"reply":"failed","kind":"disk_full","message":"no space left on the device holding /home/me/.messenger"}"#,
            ),
            (
                Response::Event {
                    seq: 42,
                    event: Event::MyStatus {
                        status: Status::Away,
                        text: "lunch".into(),
                    },
                },
                r#"{"reply":"event","seq":42,"event":{"event":"my_status","status":"away","text":"lunch"}}"#,
            ),
            (
                Response::Event {
                    seq: 43,
                    event: Event::Unread(Unread {
                        name: ScreenName::parse("bob").unwrap(),
                        count: 0,
                    }),
                },
                r#"{"reply":"event","seq":43,"event":{"event":"unread","name":"bob","count":0}}"#,
            ),
        ];
        let doc = include_str!("../docs/protocol.md");
        for (request, json) in requests {
            assert_eq!(serde_json::to_string(&request).unwrap(), json);
            assert_eq!(serde_json::from_str::<Request>(json).unwrap(), request);
            assert!(doc.contains(json), "docs/protocol.md §7 shows {json}");
        }
        for (response, json) in responses {
            assert_eq!(serde_json::to_string(&response).unwrap(), json);
            assert_eq!(serde_json::from_str::<Response>(json).unwrap(), response);
            assert!(doc.contains(json), "docs/protocol.md §7 shows {json}");
        }
        // Names in any case are taken (and normalised); a name that is no
        // name is refused when the request is read, with the reason.
        let any_case =
            r#"{"op":"send","id":"abababababababababababababababab","to":"Bob","text":"hi"}"#;
        assert!(matches!(
            serde_json::from_str::<Request>(any_case).unwrap(),
            Request::Send { to, .. } if to.as_str() == "bob"
        ));
        let no_name = r#"{"op":"contacts_add","name":"no spaces please"}"#;
        let refused = serde_json::from_str::<Request>(no_name)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("no spaces please"), "{refused}");
    }
}
