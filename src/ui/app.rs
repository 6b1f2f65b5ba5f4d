//! The window's state and what changes it: keys, the client's events, and
//! the answers to what the window asked. It does no I/O: every change
//! returns the [`Action`]s its runner performs (requests to the agent, the
//! bell), and the runner feeds the answers back with their [`Tag`].

mod keys;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use messenger_proto::chat::MessageId;
use messenger_proto::name::ScreenName;
use messenger_proto::presence::Status;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::buddies::{Buddies, Marks};
use super::conversation::Conversation;
use super::editor::Editor;
use super::theme::Theme;
use crate::api::{Event, Request, Response, SendOutcome};
use crate::chat::{TYPING_REPEAT, TYPING_SHOWN_FOR};
use crate::network::Path;
use crate::peer::PeerInfo;
use crate::store::StoredMessage;

/// Messages loaded when a conversation opens.
pub const HISTORY_SHOWN: usize = 10_000;

/// How long a nudge makes the window flash.
const FLASH: Duration = Duration::from_millis(1500);

/// Nudges I may send: one per 10 s (what a recipient takes).
const NUDGE_EVERY: Duration = Duration::from_secs(10);

/// What an answer from the agent is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tag {
    /// A conversation's history.
    History(ScreenName),
    /// A message I sent to this name.
    Send(ScreenName),
    /// The contact list.
    Contacts,
    /// The message requests.
    Requests,
    /// A contact's details.
    Details(ScreenName),
    /// Something whose answer is shown as a notice, after which the
    /// contact list is read again.
    Notice,
    /// Nothing to show (typing signals).
    Quiet,
    /// What the client shows now: the unread counts kept from before.
    Snapshot,
}

/// What the runner does for the window.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Ask the agent; feed the answer to [`App::on_reply`] with the tag.
    Call(Tag, Request),
    /// Ring the terminal's bell.
    Bell,
    /// Sign in with these (first run).
    SignIn {
        /// The node's address, as typed.
        rendezvous: String,
        /// The screen name, as typed.
        name: String,
    },
    /// Close the window.
    Quit,
}

/// The connection to the node, as the window shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Not online yet.
    Connecting,
    /// Registered and reachable.
    Online,
    /// Lost the node; trying again.
    Reconnecting(String),
}

/// Me, as the top of the buddy list shows.
#[derive(Debug, Clone)]
pub struct Me {
    /// My screen name (none before signing in).
    pub name: Option<ScreenName>,
    /// My status.
    pub status: Status,
    /// My personal message.
    pub text: String,
    /// How I am connected.
    pub connection: Connection,
}

/// The first-run form.
#[derive(Debug, Default)]
pub struct SignIn {
    /// The node's address.
    pub rendezvous: Editor,
    /// The screen name wanted.
    pub name: Editor,
    /// Which field has the cursor (0: node, 1: name).
    pub field: usize,
    /// Why the last try failed.
    pub error: Option<String>,
    /// A try is on its way.
    pub busy: bool,
}

/// A question in a small window over the rest.
#[derive(Debug)]
pub enum Prompt {
    /// The name of a contact to add.
    AddContact(Editor),
    /// My personal message.
    StatusText(Editor),
    /// One of the four statuses, by its key.
    Status,
    /// Yes or no before doing `what` to `name`.
    Confirm {
        /// What.
        what: Confirm,
        /// To whom.
        name: ScreenName,
    },
}

/// What a confirmation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// Remove the contact.
    Remove,
    /// Block the name.
    Block,
    /// Accept messages again.
    Unblock,
    /// Pin the key the name has now.
    Trust,
}

/// What covers the main window, if anything.
#[derive(Debug)]
pub enum Modal {
    /// The keys.
    Help,
    /// A contact's details (once they came).
    Details(ScreenName, Option<(Box<PeerInfo>, Option<Path>)>),
    /// A question.
    Prompt(Prompt),
}

/// Where keys go in the main window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// The buddy list.
    List,
    /// The conversation in front.
    Conversation,
}

/// A line at the bottom for a while: what happened, or what went wrong.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The sentence.
    pub text: String,
    /// Whether it is an error.
    pub error: bool,
}

/// The whole window.
#[derive(Debug)]
pub struct App {
    /// How it is drawn.
    pub theme: Theme,
    /// Me.
    pub me: Me,
    /// The contacts.
    pub buddies: Buddies,
    /// Open conversations, in the order opened.
    pub conversations: Vec<Conversation>,
    /// Which one is in front.
    pub front: Option<usize>,
    /// Where keys go.
    pub focus: Focus,
    /// What covers the window.
    pub modal: Option<Modal>,
    /// The first-run form, while signing in.
    pub sign_in: Option<SignIn>,
    /// The last notice.
    pub notice: Option<Notice>,
    /// Who is typing to me, until when.
    pub typing: HashMap<ScreenName, Instant>,
    /// Whether to ring for messages and nudges.
    pub bell: bool,
    /// Whether to tell others I am typing.
    pub send_typing: bool,
    /// The message requests waiting: people not accepted yet who wrote.
    pub requests: Vec<crate::store::MessageRequest>,
    last_nudge: Option<Instant>,
}

impl App {
    /// The window for `me`; with no name yet, the first-run form, with
    /// `rendezvous` filled in if known.
    pub fn new(me: Me, rendezvous: Option<String>, theme: Theme) -> Self {
        let sign_in = me.name.is_none().then(|| {
            let mut form = SignIn::default();
            if let Some(addr) = rendezvous {
                form.rendezvous.insert(&addr);
                form.field = 1;
            }
            form
        });
        Self {
            theme,
            me,
            buddies: Buddies::default(),
            conversations: Vec::new(),
            front: None,
            focus: Focus::List,
            modal: None,
            sign_in,
            notice: None,
            typing: HashMap::new(),
            bell: true,
            send_typing: true,
            requests: Vec::new(),
            last_nudge: None,
        }
    }

    /// What to ask first once online: the contacts, the message requests.
    pub fn start(&self) -> Vec<Action> {
        vec![
            Action::Call(Tag::Contacts, Request::ContactsList),
            Action::Call(Tag::Requests, Request::Requests),
            Action::Call(Tag::Snapshot, Request::Snapshot),
        ]
    }

    /// Signed in as `name`: the main window from now on.
    pub fn signed_in(&mut self, name: ScreenName) {
        self.me.name = Some(name);
        self.sign_in = None;
    }

    /// Signing in failed; the form says why.
    pub fn sign_in_failed(&mut self, why: String) {
        if let Some(form) = &mut self.sign_in {
            form.busy = false;
            form.error = Some(why);
        }
    }

    fn notify(&mut self, text: impl Into<String>, error: bool) {
        self.notice = Some(Notice {
            text: text.into(),
            error,
        });
    }

    /// The conversation in front.
    pub fn front_conversation(&mut self) -> Option<&mut Conversation> {
        self.front.and_then(|i| self.conversations.get_mut(i))
    }

    fn index_of(&self, name: &ScreenName) -> Option<usize> {
        self.conversations.iter().position(|c| c.with() == name)
    }

    /// The conversation with `name`, opened (its history asked for) if it
    /// was not; in front if `bring`.
    fn open(&mut self, name: &ScreenName, bring: bool, actions: &mut Vec<Action>) -> usize {
        let i = match self.index_of(name) {
            Some(i) => i,
            None => {
                self.conversations.push(Conversation::new(name.clone()));
                actions.push(Action::Call(
                    Tag::History(name.clone()),
                    Request::History {
                        name: name.clone(),
                        limit: HISTORY_SHOWN,
                        before: None,
                    },
                ));
                self.conversations.len() - 1
            }
        };
        if bring || self.front.is_none() {
            self.front = Some(i);
            if bring {
                self.read(i, actions);
            } else {
                // In front because nothing else is, not because the user
                // turned to it: not read yet.
                self.conversations[i].seen();
            }
        }
        i
    }

    /// Marks and counts per contact, for the list.
    pub fn marks(&self, now: Instant) -> HashMap<ScreenName, Marks> {
        let mut marks: HashMap<ScreenName, Marks> = HashMap::new();
        for c in &self.conversations {
            marks.entry(c.with().clone()).or_default().unread = c.unread();
        }
        for (name, until) in &self.typing {
            if *until > now {
                marks.entry(name.clone()).or_default().typing = true;
            }
        }
        marks
    }

    /// Whether `name` is typing to me at `now`.
    pub fn is_typing(&self, name: &ScreenName, now: Instant) -> bool {
        self.typing.get(name).is_some_and(|t| *t > now)
    }

    /// The next moment the window changes by itself (a typing indicator
    /// goes, a flash ends): the runner wakes then, and not before.
    pub fn next_change(&self, now: Instant) -> Option<Instant> {
        let typing = self.typing.values().copied().filter(|t| *t > now);
        let flashes = self.conversations.iter().filter_map(|c| c.flash_ends(now));
        typing.chain(flashes).min()
    }

    /// Forgets what expired.
    pub fn tick(&mut self, now: Instant) {
        self.typing.retain(|_, until| *until > now);
    }

    // ---- the client's events ----

    /// Something happened in the client.
    pub fn on_event(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Online { name, first, .. } => {
                self.me.name = Some(name);
                self.me.connection = Connection::Online;
                if !first {
                    self.notify("connected to the rendezvous node again", false);
                    // Presence may have changed meanwhile.
                    actions.push(Action::Call(Tag::Contacts, Request::ContactsList));
                }
            }
            Event::Reconnecting { reason } => {
                self.me.connection = Connection::Reconnecting(reason);
            }
            Event::RegistrationRefused { reason } => {
                self.notify(format!("the node refused my registration: {reason}"), true);
            }
            Event::Message { message, .. } => {
                let from = message.peer().clone();
                self.typing.remove(&from);
                let i = self.open(&from, false, &mut actions);
                let in_front = self.front == Some(i) && self.focus == Focus::Conversation;
                let conversation = &mut self.conversations[i];
                let fresh = conversation.upsert(message);
                if fresh && !(in_front && conversation.at_bottom()) {
                    conversation.mark_unread();
                    if self.bell {
                        actions.push(Action::Bell);
                    }
                }
            }
            Event::Sent(m) | Event::Delivered(m) => self.update(m),
            Event::Failed(m) => {
                self.notify(
                    format!(
                        "not delivered to {}: {}",
                        m.message.to,
                        m.error.as_deref().unwrap_or("refused")
                    ),
                    true,
                );
                self.update(m);
            }
            Event::Presence(info) => self.buddies.presence(&info),
            Event::KeyChanged { name, current, .. } => {
                self.buddies.key_changed(&name, current);
                self.notify(
                    format!(
                        "KEY CHANGED: {name} now has another key; messages are refused until you trust it (select it, press t)"
                    ),
                    true,
                );
            }
            Event::Typing { name, active } => {
                if active {
                    self.typing.insert(name, now + TYPING_SHOWN_FOR);
                } else {
                    self.typing.remove(&name);
                }
            }
            Event::Transfer(t) => self.on_transfer(&t),
            Event::TransferWaiting { reason, .. } => self.notify(reason, false),
            // Whoever reaches a port of mine, and how it ended.
            Event::Tunnel(log) => self.notify(log.to_string(), false),
            Event::Requests { requests } => self.requests = requests,
            Event::Contacts { contacts } => self.buddies.set(contacts),
            Event::MyStatus { status, text } => {
                self.me.status = status;
                self.me.text = text;
            }
            Event::Settings(settings) => {
                self.bell = settings.bell;
                self.send_typing = settings.send_typing;
            }
            Event::Unread(unread) => self.on_unread(unread, &mut actions),
            // Mine, from another front end: shown where it belongs.
            Event::Queued(m) => self.update(m),
            Event::Nudge { name } => {
                let i = self.open(&name, false, &mut actions);
                let in_front = self.front == Some(i);
                let conversation = &mut self.conversations[i];
                conversation.note(format!("{name} sent you a nudge"));
                conversation.flash(now + FLASH);
                if !in_front {
                    conversation.mark_unread();
                }
                if self.bell {
                    actions.push(Action::Bell);
                }
            }
            _ => {}
        }
        actions
    }

    /// The client's unread count of a conversation: shown, unless the
    /// conversation is read right now (then it is marked read).
    fn on_unread(&mut self, unread: crate::store::Unread, actions: &mut Vec<Action>) {
        if unread.count == 0 {
            if let Some(i) = self.index_of(&unread.name) {
                self.conversations[i].seen();
            }
            return;
        }
        let i = self.open(&unread.name, false, actions);
        let conversation = &self.conversations[i];
        let reading =
            self.front == Some(i) && self.focus == Focus::Conversation && conversation.at_bottom();
        if reading {
            actions.push(Action::Call(
                Tag::Quiet,
                Request::MarkRead {
                    name: unread.name.clone(),
                },
            ));
        } else {
            self.conversations[i].set_unread(unread.count);
        }
    }

    /// A transfer finished (or failed): said in its conversation and as
    /// a notice.
    fn on_transfer(&mut self, t: &crate::store::Transfer) {
        use crate::store::{Direction, TransferState};
        // What the other side or the network did; my own answers and
        // offers are already in the conversation.
        let told = matches!(
            (t.state, t.direction),
            (TransferState::Completed | TransferState::Failed, _)
                | (TransferState::Declined, Direction::Out)
                | (TransferState::Accepted, Direction::In)
        );
        if !told {
            return;
        }
        let said = t.describe();
        let failed = t.state == TransferState::Failed;
        if let Some(i) = self.index_of(&t.peer) {
            self.conversations[i].note(said.clone());
        }
        self.notify(said, failed);
    }

    /// A message of mine changed state.
    fn update(&mut self, m: StoredMessage) {
        if let Some(i) = self.index_of(m.peer()) {
            self.conversations[i].upsert(m);
        }
    }

    // ---- answers ----

    /// The answer to an [`Action::Call`].
    pub fn on_reply(&mut self, tag: Tag, response: Response) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Response::Failed(failure) = &response {
            if tag != Tag::Quiet {
                self.notify(failure.message.clone(), true);
            }
            if let Tag::Send(name) = &tag
                && let Some(i) = self.index_of(name)
            {
                self.conversations[i].note(format!("not sent: {}", failure.message));
            }
            if let Tag::Details(_) = tag {
                self.modal = None;
            }
            return actions;
        }
        match (tag, response) {
            (Tag::History(name), Response::Messages { messages }) => {
                if let Some(i) = self.index_of(&name) {
                    self.conversations[i].load(messages);
                }
            }
            (Tag::Send(_), Response::Sent(outcome)) => {
                let message = match outcome {
                    SendOutcome::Delivered { message, .. } => message,
                    SendOutcome::Queued { message, .. } => message,
                };
                self.update(message);
            }
            (Tag::Contacts, Response::Contacts { contacts }) => self.buddies.set(contacts),
            (Tag::Requests, Response::Requests { requests }) => self.requests = requests,
            (Tag::Snapshot, Response::Snapshot(snapshot)) => {
                for unread in snapshot.unread {
                    self.on_unread(unread, &mut actions);
                }
            }
            (Tag::Details(name), Response::Peer { peer, path }) => {
                if matches!(&self.modal, Some(Modal::Details(n, _)) if *n == name) {
                    self.modal = Some(Modal::Details(name, Some((Box::new(peer), path))));
                }
            }
            (Tag::Notice, Response::Done { message }) => {
                self.notify(message, false);
                actions.push(Action::Call(Tag::Contacts, Request::ContactsList));
            }
            _ => {}
        }
        actions
    }
}
