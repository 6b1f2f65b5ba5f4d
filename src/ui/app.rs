//! The window's state and what changes it: keys, the client's events, and
//! the answers to what the window asked. It does no I/O: every change
//! returns the [`Action`]s its runner performs (requests to the agent, the
//! bell), and the runner feeds the answers back with their [`Tag`].

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

    // ---- keys ----

    /// A paste (bracketed): into whatever is being edited.
    pub fn on_paste(&mut self, text: &str, now: Instant) -> Vec<Action> {
        if let Some(editor) = self.editing() {
            editor.insert(text);
            return self.after_edit(now);
        }
        Vec::new()
    }

    /// The editor keys go to now, if any.
    fn editing(&mut self) -> Option<&mut Editor> {
        if self.sign_in.is_some() {
            let form = self.sign_in.as_mut()?;
            return Some(if form.field == 0 {
                &mut form.rendezvous
            } else {
                &mut form.name
            });
        }
        if self.modal.is_some() {
            return match &mut self.modal {
                Some(Modal::Prompt(Prompt::AddContact(e) | Prompt::StatusText(e))) => Some(e),
                _ => None,
            };
        }
        if self.focus != Focus::Conversation {
            return None;
        }
        let front = self.front?;
        self.conversations.get_mut(front).map(|c| &mut c.input)
    }

    /// A key.
    pub fn on_key(&mut self, key: KeyEvent, now: Instant) -> Vec<Action> {
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && key.code == KeyCode::Char('c') {
            return vec![Action::Quit];
        }
        if self.sign_in.is_some() {
            return self.sign_in_key(key);
        }
        if key.code == KeyCode::F(1) {
            self.modal = match self.modal {
                Some(Modal::Help) => None,
                _ => Some(Modal::Help),
            };
            return Vec::new();
        }
        if self.modal.is_some() {
            return self.modal_key(key);
        }
        // Switching conversations works from anywhere.
        if ctrl && matches!(key.code, KeyCode::Char('n') | KeyCode::Char('p')) {
            return self.cycle(if key.code == KeyCode::Char('n') {
                1
            } else {
                -1
            });
        }
        match self.focus {
            Focus::List => self.list_key(key),
            Focus::Conversation => self.conversation_key(key, now),
        }
    }

    fn cycle(&mut self, by: isize) -> Vec<Action> {
        let mut actions = Vec::new();
        let n = self.conversations.len();
        if n == 0 {
            return actions;
        }
        let at = self.front.unwrap_or(0) as isize;
        let next = (at + by).rem_euclid(n as isize) as usize;
        self.front = Some(next);
        self.read(next, &mut actions);
        self.focus = Focus::Conversation;
        actions
    }

    /// Conversation `i` is read: its count goes, here and (if it had one)
    /// in the client, for every front end.
    fn read(&mut self, i: usize, actions: &mut Vec<Action>) {
        let conversation = &mut self.conversations[i];
        // Asked even when nothing shows as unread here: the client's count
        // is the one that matters (a count this window missed, say).
        actions.push(Action::Call(
            Tag::Quiet,
            Request::MarkRead {
                name: conversation.with().clone(),
            },
        ));
        conversation.seen();
    }

    fn sign_in_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let Some(form) = &mut self.sign_in else {
            return Vec::new();
        };
        if form.busy {
            return Vec::new();
        }
        match key.code {
            KeyCode::Esc => return vec![Action::Quit],
            KeyCode::Tab | KeyCode::Down | KeyCode::BackTab | KeyCode::Up => {
                form.field = 1 - form.field;
            }
            KeyCode::Enter => {
                let rendezvous = form.rendezvous.text().trim().to_owned();
                let name = form.name.text().trim().to_owned();
                if rendezvous.is_empty() {
                    form.error = Some("the rendezvous node's address is needed: one of the lines `rendezvous` prints, ending in /p2p/<id>".into());
                    form.field = 0;
                } else if name.is_empty() {
                    form.error = Some("choose a screen name: 3 to 32 of a-z, 0-9, '.', '_', '-', starting with a letter".into());
                    form.field = 1;
                } else {
                    form.busy = true;
                    form.error = None;
                    return vec![Action::SignIn { rendezvous, name }];
                }
            }
            _ => {
                let editor = if form.field == 0 {
                    &mut form.rendezvous
                } else {
                    &mut form.name
                };
                edit(editor, key);
            }
        }
        Vec::new()
    }

    fn modal_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let Some(modal) = self.modal.take() else {
            return Vec::new();
        };
        match modal {
            Modal::Help | Modal::Details(..) => {
                // Any of these closes it; others leave it up.
                if !matches!(
                    key.code,
                    KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') | KeyCode::Char('?')
                ) {
                    self.modal = Some(modal);
                }
                Vec::new()
            }
            Modal::Prompt(prompt) => self.prompt_key(prompt, key),
        }
    }

    fn prompt_key(&mut self, prompt: Prompt, key: KeyEvent) -> Vec<Action> {
        let notice = |request| vec![Action::Call(Tag::Notice, request)];
        match prompt {
            Prompt::Status => {
                let status = match key.code {
                    KeyCode::Char('o') => Status::Online,
                    KeyCode::Char('a') => Status::Away,
                    KeyCode::Char('b') => Status::Busy,
                    KeyCode::Char('i') => Status::Invisible,
                    KeyCode::Esc => return Vec::new(),
                    _ => {
                        self.modal = Some(Modal::Prompt(Prompt::Status));
                        return Vec::new();
                    }
                };
                self.me.status = status;
                notice(Request::Status {
                    status,
                    text: self.me.text.clone(),
                })
            }
            Prompt::AddContact(mut editor) => match key.code {
                KeyCode::Esc => Vec::new(),
                KeyCode::Enter => {
                    let name = editor.text().trim().to_owned();
                    if name.is_empty() {
                        return Vec::new();
                    }
                    match ScreenName::parse(&name) {
                        Ok(name) => notice(Request::ContactsAdd { name }),
                        Err(e) => {
                            self.notify(e.to_string(), true);
                            Vec::new()
                        }
                    }
                }
                _ => {
                    edit(&mut editor, key);
                    self.modal = Some(Modal::Prompt(Prompt::AddContact(editor)));
                    Vec::new()
                }
            },
            Prompt::StatusText(mut editor) => match key.code {
                KeyCode::Esc => Vec::new(),
                KeyCode::Enter => {
                    let text = editor.text().replace('\n', " ").trim().to_owned();
                    self.me.text = text.clone();
                    notice(Request::Status {
                        status: self.me.status,
                        text,
                    })
                }
                _ => {
                    edit(&mut editor, key);
                    self.modal = Some(Modal::Prompt(Prompt::StatusText(editor)));
                    Vec::new()
                }
            },
            Prompt::Confirm { what, name } => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => notice(match what {
                    Confirm::Remove => Request::ContactsRemove { name },
                    Confirm::Block => Request::Block { name },
                    Confirm::Unblock => Request::Unblock { name },
                    Confirm::Trust => Request::ContactsTrust { name },
                }),
                KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => Vec::new(),
                _ => {
                    self.modal = Some(Modal::Prompt(Prompt::Confirm { what, name }));
                    Vec::new()
                }
            },
        }
    }

    fn list_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let selected = self.buddies.selected().cloned();
        let confirm = |what| {
            selected
                .clone()
                .map(|name| Modal::Prompt(Prompt::Confirm { what, name }))
        };
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.buddies.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.buddies.move_selection(1),
            KeyCode::PageUp => self.buddies.move_selection(-10),
            KeyCode::PageDown => self.buddies.move_selection(10),
            KeyCode::Enter | KeyCode::Right => {
                if let Some(name) = selected {
                    let mut actions = Vec::new();
                    self.open(&name, true, &mut actions);
                    self.focus = Focus::Conversation;
                    return actions;
                }
            }
            KeyCode::Tab if self.front.is_some() => {
                self.focus = Focus::Conversation;
                let mut actions = Vec::new();
                if let Some(i) = self.front {
                    self.read(i, &mut actions);
                }
                return actions;
            }
            KeyCode::Char('a') => {
                self.modal = Some(Modal::Prompt(Prompt::AddContact(Editor::default())));
            }
            KeyCode::Char('d') | KeyCode::Delete => self.modal = confirm(Confirm::Remove),
            KeyCode::Char('x') => {
                let blocked = selected
                    .as_ref()
                    .and_then(|n| self.buddies.get(n))
                    .is_some_and(|c| c.blocked);
                self.modal = confirm(if blocked {
                    Confirm::Unblock
                } else {
                    Confirm::Block
                });
            }
            KeyCode::Char('t') => {
                let changed = selected
                    .as_ref()
                    .and_then(|n| self.buddies.get(n))
                    .is_some_and(|c| c.key_changed_to.is_some());
                if changed {
                    self.modal = confirm(Confirm::Trust);
                } else {
                    self.notify(
                        "t trusts a contact's changed key; this one's key has not changed",
                        false,
                    );
                }
            }
            KeyCode::Char('i') => {
                if let Some(name) = selected {
                    self.modal = Some(Modal::Details(name.clone(), None));
                    return vec![Action::Call(
                        Tag::Details(name.clone()),
                        Request::Whois { name: name.clone() },
                    )];
                }
            }
            KeyCode::Char('s') => self.modal = Some(Modal::Prompt(Prompt::Status)),
            KeyCode::Char('m') => {
                let mut editor = Editor::default();
                editor.insert(&self.me.text);
                self.modal = Some(Modal::Prompt(Prompt::StatusText(editor)));
            }
            KeyCode::Char('?') => self.modal = Some(Modal::Help),
            KeyCode::Char('q') => return vec![Action::Quit],
            _ => {}
        }
        Vec::new()
    }

    fn conversation_key(&mut self, key: KeyEvent, now: Instant) -> Vec<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        let shift = key.modifiers.contains(KeyModifiers::SHIFT);
        let Some(c) = self.front_conversation() else {
            self.focus = Focus::List;
            return Vec::new();
        };
        match key.code {
            KeyCode::Esc | KeyCode::Tab => {
                self.focus = Focus::List;
                return Vec::new();
            }
            KeyCode::Enter if alt || shift || ctrl => c.input.newline(),
            KeyCode::Char('j') if ctrl => c.input.newline(),
            KeyCode::Enter => return self.send(now),
            KeyCode::Char('g') if ctrl => return self.nudge(now),
            KeyCode::Char('x') if ctrl => {
                self.close_front();
                return Vec::new();
            }
            KeyCode::PageUp => c.page(true),
            KeyCode::PageDown => c.page(false),
            KeyCode::Home if ctrl || c.input.is_empty() => c.top(),
            KeyCode::End if ctrl || c.input.is_empty() => c.bottom(),
            KeyCode::Up if c.input.on_first_line() => c.input.recall_older(),
            KeyCode::Down if c.input.on_last_line() => c.input.recall_newer(),
            _ => {
                edit(&mut c.input, key);
            }
        }
        self.after_edit(now)
    }

    /// After the input changed: tell the other side I type (or stopped),
    /// at most every few seconds.
    fn after_edit(&mut self, now: Instant) -> Vec<Action> {
        if !self.send_typing || self.focus != Focus::Conversation || self.modal.is_some() {
            return Vec::new();
        }
        let Some(c) = self.front_conversation() else {
            return Vec::new();
        };
        let to = c.with().clone();
        let typing = !c.input.is_empty() && !c.input.text().starts_with('/');
        match (typing, c.typing_sent) {
            (true, Some(at)) if now.duration_since(at) < TYPING_REPEAT => Vec::new(),
            (true, _) => {
                c.typing_sent = Some(now);
                vec![Action::Call(
                    Tag::Quiet,
                    Request::Typing { to, active: true },
                )]
            }
            (false, Some(_)) => {
                c.typing_sent = None;
                vec![Action::Call(
                    Tag::Quiet,
                    Request::Typing { to, active: false },
                )]
            }
            (false, None) => Vec::new(),
        }
    }

    fn close_front(&mut self) {
        let Some(i) = self.front else { return };
        self.conversations.remove(i);
        self.front = if self.conversations.is_empty() {
            self.focus = Focus::List;
            None
        } else {
            Some(i.min(self.conversations.len() - 1))
        };
    }

    fn nudge(&mut self, now: Instant) -> Vec<Action> {
        if let Some(at) = self.last_nudge
            && now.duration_since(at) < NUDGE_EVERY
        {
            let wait = NUDGE_EVERY - now.duration_since(at);
            self.notify(
                format!("one nudge per 10 s: wait {} s", wait.as_secs() + 1),
                false,
            );
            return Vec::new();
        }
        let Some(c) = self.front_conversation() else {
            return Vec::new();
        };
        let to = c.with().clone();
        c.note(format!("you sent {to} a nudge"));
        self.last_nudge = Some(now);
        vec![Action::Call(Tag::Quiet, Request::Nudge { to: to.clone() })]
    }

    /// Enter in a conversation: a message, or a /command.
    fn send(&mut self, now: Instant) -> Vec<Action> {
        let Some(c) = self.front_conversation() else {
            return Vec::new();
        };
        if c.input.text().trim().is_empty() {
            return Vec::new();
        }
        let text = c.input.take();
        let had_typing = c.typing_sent.take().is_some();
        c.bottom();
        let to = c.with().clone();
        if let Some(command) = text.strip_prefix('/') {
            let mut actions = self.command(command.trim(), &to, now);
            if had_typing {
                actions.push(Action::Call(
                    Tag::Quiet,
                    Request::Typing {
                        to: to.clone(),
                        active: false,
                    },
                ));
            }
            return actions;
        }
        vec![Action::Call(
            Tag::Send(to.clone()),
            Request::Enqueue {
                id: MessageId::random(),
                to: to.clone(),
                text,
            },
        )]
    }

    /// `/nudge`, `/close`, `/send PATH`, `/accept`, `/decline`,
    /// `/typing on|off`, `/bell on|off`, `/help`, `/quit`.
    fn command(&mut self, command: &str, to: &ScreenName, now: Instant) -> Vec<Action> {
        let (word, rest) = command.split_once(' ').unwrap_or((command, ""));
        let switch = match rest.trim() {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        };
        match (word, switch) {
            ("nudge", _) => self.nudge(now),
            ("close", _) => {
                self.close_front();
                Vec::new()
            }
            ("typing", Some(on)) => {
                self.send_typing = on;
                vec![Action::Call(
                    Tag::Notice,
                    Request::Settings {
                        send_typing: Some(on),
                        bell: None,
                        downloads: None,
                        max_file_size: None,
                    },
                )]
            }
            ("bell", Some(on)) => {
                self.bell = on;
                vec![Action::Call(
                    Tag::Notice,
                    Request::Settings {
                        send_typing: None,
                        bell: Some(on),
                        downloads: None,
                        max_file_size: None,
                    },
                )]
            }
            ("help", _) => {
                self.modal = Some(Modal::Help);
                Vec::new()
            }
            ("send", _) if !rest.trim().is_empty() => vec![Action::Call(
                Tag::Send(to.clone()),
                Request::FileSend {
                    id: MessageId::random(),
                    to: to.clone(),
                    path: expand_home(rest.trim()),
                },
            )],
            ("accept" | "decline", _) => {
                let offer = self
                    .index_of(to)
                    .and_then(|i| self.conversations[i].latest_offer())
                    .map(|m| m.message.id);
                let Some(id) = offer else {
                    self.notify(format!("{to} has offered you no file here"), true);
                    return Vec::new();
                };
                let request = if word == "accept" {
                    Request::FileAccept { id, dir: None }
                } else {
                    Request::FileDecline { id }
                };
                vec![Action::Call(Tag::Notice, request)]
            }
            ("quit", _) => vec![Action::Quit],
            _ => {
                self.notify(
                    format!("unknown command /{word} (to {to}); commands: /nudge /close /send PATH /accept /decline /typing on|off /bell on|off /help /quit"),
                    true,
                );
                Vec::new()
            }
        }
    }
}

/// A path typed in the window: `~/` is the home directory; relative
/// paths are taken from where the window was started.
fn expand_home(typed: &str) -> std::path::PathBuf {
    let path = match typed.strip_prefix("~/") {
        Some(rest) => match std::env::var_os("HOME") {
            Some(home) => std::path::PathBuf::from(home).join(rest),
            None => std::path::PathBuf::from(typed),
        },
        None => std::path::PathBuf::from(typed),
    };
    std::path::absolute(&path).unwrap_or(path)
}

/// The editing keys every text field shares.
fn edit(editor: &mut Editor, key: KeyEvent) {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let alt = key.modifiers.contains(KeyModifiers::ALT);
    match key.code {
        KeyCode::Char('w') if ctrl => editor.delete_word(),
        KeyCode::Backspace if alt || ctrl => editor.delete_word(),
        KeyCode::Char('u') if ctrl => editor.delete_to_line_start(),
        KeyCode::Char('k') if ctrl => editor.delete_to_line_end(),
        KeyCode::Char('a') if ctrl => editor.home(),
        KeyCode::Char('e') if ctrl => editor.end(),
        KeyCode::Char('b') if alt => editor.word_left(),
        KeyCode::Char('f') if alt => editor.word_right(),
        KeyCode::Left if ctrl || alt => editor.word_left(),
        KeyCode::Right if ctrl || alt => editor.word_right(),
        KeyCode::Left => editor.left(),
        KeyCode::Right => editor.right(),
        KeyCode::Home => editor.home(),
        KeyCode::End => editor.end(),
        KeyCode::Up => editor.up(),
        KeyCode::Down => editor.down(),
        KeyCode::Backspace => editor.backspace(),
        KeyCode::Delete => editor.delete(),
        KeyCode::Char(c) if !ctrl => {
            let mut buf = [0u8; 4];
            editor.insert(c.encode_utf8(&mut buf));
        }
        _ => {}
    }
}
