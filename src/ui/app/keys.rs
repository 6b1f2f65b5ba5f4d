//! What keys do in the window: signing in, the list, prompts and
//! confirmations, and the conversation in front (its editor, its slash
//! commands, sending and nudging).

use super::*;

impl App {
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
    pub(super) fn read(&mut self, i: usize, actions: &mut Vec<Action>) {
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
