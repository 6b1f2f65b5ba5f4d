//! Drawing the window: the buddy list on the left, the conversation in
//! front on the right with the open ones as tabs above it, a help or
//! notice line at the bottom, and whatever covers them (help, details, a
//! question). Below 80×24 it says so instead.

use std::time::Instant;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use super::app::{App, Confirm, Connection, Focus, Modal, Prompt, SignIn};
use super::buddies::{cut, presence_mark};
use super::editor::Editor;

/// The smallest terminal the window is laid out for.
pub const MIN_WIDTH: u16 = 80;
/// See [`MIN_WIDTH`].
pub const MIN_HEIGHT: u16 = 24;

/// Columns of the buddy list.
const LIST_WIDTH: u16 = 30;

/// Lines of the input at most (more scroll within it).
const INPUT_LINES: u16 = 5;

/// Draws the whole window.
pub fn draw(app: &mut App, frame: &mut Frame, now: Instant) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = format!(
            "The window needs a terminal of at least {MIN_WIDTH}×{MIN_HEIGHT}; this one is {}×{}. Make it larger, or press Ctrl-C to quit.",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    if let Some(form) = &app.sign_in {
        draw_sign_in(app, form, frame, area);
        return;
    }
    let [body, bottom] = Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(area);
    let [left, right] =
        Layout::horizontal([Constraint::Length(LIST_WIDTH), Constraint::Min(0)]).areas(body);
    draw_list(app, frame, left, now);
    let cursor = draw_conversation(app, frame, right, now);
    draw_bottom(app, frame, bottom);
    match &app.modal {
        None => {
            if let Some(cursor) = cursor {
                frame.set_cursor_position(cursor);
            }
        }
        Some(modal) => draw_modal(app, modal, frame, area),
    }
}

fn border(app: &App, focused: bool) -> Style {
    if focused {
        app.theme.focused()
    } else {
        app.theme.dim()
    }
}

fn draw_list(app: &App, frame: &mut Frame, area: Rect, now: Instant) {
    let theme = &app.theme;
    let block = Block::bordered()
        .title(" Messenger ")
        .border_style(border(app, app.focus == Focus::List && app.modal.is_none()));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = usize::from(inner.width);
    let name = app
        .me
        .name
        .as_ref()
        .map_or_else(|| "(signing in)".to_owned(), |n| n.to_string());
    let status = match &app.me.connection {
        Connection::Online => app.me.status.to_string(),
        Connection::Connecting => "connecting…".to_owned(),
        Connection::Reconnecting(_) => "reconnecting…".to_owned(),
    };
    let mark = match app.me.connection {
        Connection::Online => presence_mark(Some(app.me.status.into()), theme),
        _ => Span::styled("…", theme.dim()),
    };
    let mut header = vec![
        cut(
            vec![
                mark,
                Span::raw(" "),
                Span::styled(name, theme.strong()),
                Span::styled(format!(" ({status})"), theme.dim()),
            ],
            width,
        ),
        if app.me.text.is_empty() {
            Line::styled("(m: set a personal message)", theme.dim())
        } else {
            cut(vec![Span::raw(format!("“{}”", app.me.text))], width)
        },
    ];
    if !app.requests.is_empty() {
        let messages: u32 = app.requests.iter().map(|r| r.count.messages).sum();
        let names: Vec<&str> = app.requests.iter().map(|r| r.name.as_str()).collect();
        header.push(cut(
            vec![
                Span::styled(format!("✉ {messages} message request(s)"), theme.strong()),
                Span::styled(format!(": {}", names.join(", ")), theme.dim()),
            ],
            width,
        ));
    }
    header.push(Line::styled("─".repeat(width), theme.dim()));
    let marks = app.marks(now);
    let (lines, selected) = app.buddies.lines(inner.width, &marks, theme);
    let room = usize::from(inner.height).saturating_sub(header.len());
    if app.buddies.is_loaded() && lines.len() <= 2 {
        header.push(Line::styled("No contacts: a adds one.", theme.dim()));
    }
    // Keep the selection in view.
    let skip = selected.map_or(0, |s| (s + 1).saturating_sub(room));
    let mut shown = header;
    for (i, line) in lines.into_iter().enumerate().skip(skip).take(room) {
        if Some(i) == selected {
            let focused = app.focus == Focus::List;
            let style = if focused {
                theme.selected()
            } else {
                theme.strong()
            };
            shown.push(line.patch_style(style));
        } else {
            shown.push(line);
        }
    }
    frame.render_widget(Paragraph::new(shown), inner);
}

/// Draws the conversation pane; returns where the cursor goes.
fn draw_conversation(
    app: &mut App,
    frame: &mut Frame,
    area: Rect,
    now: Instant,
) -> Option<Position> {
    let theme = app.theme;
    let Some(front) = app.front else {
        let block = Block::bordered().border_style(theme.dim());
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let hint = vec![
            Line::raw(""),
            Line::raw("Select a contact and press Enter to start a conversation."),
            Line::styled(
                "Tab switches between the list and the conversation; F1 shows every key.",
                theme.dim(),
            ),
        ];
        frame.render_widget(Paragraph::new(hint).wrap(Wrap { trim: true }), inner);
        return None;
    };
    let [tabs, rest] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    // The open conversations, as tabs.
    let mut spans = Vec::new();
    for (i, c) in app.conversations.iter().enumerate() {
        let mut label = format!(" {} ", c.with());
        if c.unread() > 0 {
            label = format!(" {} ({}) ", c.with(), c.unread());
        }
        let style = if i == front {
            theme.selected()
        } else if c.unread() > 0 {
            theme.strong()
        } else {
            theme.dim()
        };
        spans.push(Span::styled(label, style));
        spans.push(Span::raw(" "));
    }
    frame.render_widget(Paragraph::new(cut(spans, usize::from(tabs.width))), tabs);

    let me = app
        .me
        .name
        .as_ref()
        .map(|n| n.to_string())
        .unwrap_or_default();
    let focused = app.focus == Focus::Conversation && app.modal.is_none();
    let name = app.conversations[front].with().clone();
    let contact = app.buddies.get(&name).cloned();
    let typing = app.is_typing(&name, now);
    let c = &mut app.conversations[front];
    let flashing = c.is_flashing(now);
    let presence = match &contact {
        Some(contact) => match contact.presence {
            Some(p) if !contact.status_text.is_empty() && p.is_online() => {
                format!("{p}: {}", contact.status_text)
            }
            Some(p) => p.to_string(),
            None => "presence unknown".to_owned(),
        },
        None => "not a contact (a adds)".to_owned(),
    };
    let border_style = if flashing {
        theme.alert()
    } else if focused {
        theme.focused()
    } else {
        theme.dim()
    };
    let block = Block::bordered()
        .title(Line::from(vec![
            Span::styled(format!(" {name} "), theme.strong()),
            Span::styled(format!("{presence} "), theme.dim()),
        ]))
        .border_style(border_style);
    let inner = block.inner(rest);
    frame.render_widget(block, rest);
    let (rows, cursor) = c.input.layout(inner.width.saturating_sub(2));
    let input_height = (rows.len() as u16).clamp(1, INPUT_LINES);
    let [messages, status_line, input] = Layout::vertical([
        Constraint::Min(1),
        Constraint::Length(1),
        Constraint::Length(input_height + 1),
    ])
    .areas(inner);
    if c.is_empty() && c.is_loaded() {
        frame.render_widget(
            Paragraph::new(Line::styled(
                format!("No messages with {name} yet. Type below and press Enter."),
                theme.dim(),
            )),
            messages,
        );
    } else {
        c.render(messages, frame.buffer_mut(), &theme, &me);
    }
    let status = if typing {
        Line::styled(format!("{name} is typing…"), theme.away())
    } else if !c.at_bottom() {
        Line::styled(
            "scrolled up — End (or Ctrl-End) returns to the newest",
            theme.dim(),
        )
    } else {
        Line::raw("")
    };
    frame.render_widget(Paragraph::new(status), status_line);
    let [rule, text] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(input);
    frame.render_widget(
        Paragraph::new(Line::styled(
            "─".repeat(usize::from(rule.width)),
            theme.dim(),
        )),
        rule,
    );
    // Show the rows around the cursor.
    let first = usize::from(cursor.0).saturating_sub(usize::from(input_height) - 1);
    let shown: Vec<Line> = rows
        .iter()
        .skip(first)
        .take(usize::from(input_height))
        .enumerate()
        .map(|(i, r)| {
            let prompt = if first + i == 0 { "> " } else { "  " };
            Line::from(vec![
                Span::styled(prompt, theme.dim()),
                Span::raw(r.clone()),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(shown), text);
    focused.then(|| Position {
        x: text.x + 2 + cursor.1,
        y: text.y + (cursor.0 - first as u16),
    })
}

fn draw_bottom(app: &App, frame: &mut Frame, area: Rect) {
    let theme = &app.theme;
    let line = match &app.notice {
        Some(n) if n.error => Line::styled(n.text.clone(), theme.alert()),
        Some(n) => Line::raw(n.text.clone()),
        None => {
            let keys = match app.focus {
                Focus::List => {
                    "↑↓ select · Enter open · a add · d remove · x block · i info · s status · m message · F1 keys"
                }
                Focus::Conversation => {
                    "Enter send · Alt-Enter new line · PgUp/PgDn scroll · Ctrl-G nudge · Ctrl-N/P switch · Tab list · F1 help"
                }
            };
            Line::styled(keys, theme.dim())
        }
    };
    frame.render_widget(
        Paragraph::new(cut(line.spans, usize::from(area.width))),
        area,
    );
}

/// A box of `width`×`height` in the middle of `area`.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

/// One line of an editor in a box, and where its cursor goes; scrolled
/// so that the cursor shows when `focused`, from its start otherwise.
fn field(editor: &Editor, area: Rect, focused: bool) -> (Line<'static>, Position) {
    let (rows, cursor) = editor.layout(u16::MAX);
    let text = rows.join(" ");
    let skip = if focused {
        cursor.1.saturating_sub(area.width.saturating_sub(1))
    } else {
        0
    };
    let shown: String = {
        let mut out = String::new();
        let mut col = 0u16;
        for g in unicode_segmentation::UnicodeSegmentation::graphemes(text.as_str(), true) {
            let w = unicode_width::UnicodeWidthStr::width(g) as u16;
            if col >= skip && col + w - skip <= area.width {
                out.push_str(g);
            }
            col += w;
        }
        out
    };
    (
        Line::raw(shown),
        Position {
            x: area.x + cursor.1 - skip,
            y: area.y,
        },
    )
}

fn draw_sign_in(app: &App, form: &SignIn, frame: &mut Frame, area: Rect) {
    let theme = &app.theme;
    let popup = centered(area, 72, 15);
    frame.render_widget(Clear, popup);
    let block = Block::bordered()
        .title(" Sign in to Messenger ")
        .border_style(theme.focused());
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    let rows = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .split(inner);
    frame.render_widget(
        Paragraph::new(
            "Choose a screen name: people reach you by it, wherever you connect from. The rendezvous node ties it to your key.",
        )
        .wrap(Wrap { trim: true }),
        rows[0],
    );
    let label = |text: &str, active: bool| {
        Line::styled(
            text.to_owned(),
            if active { theme.strong() } else { theme.dim() },
        )
    };
    frame.render_widget(
        Paragraph::new(label(
            "Rendezvous node (a line `rendezvous` prints):",
            form.field == 0,
        )),
        rows[1],
    );
    let (node, node_cursor) = field(&form.rendezvous, rows[2], form.field == 0);
    frame.render_widget(Paragraph::new(node), rows[2]);
    frame.render_widget(
        Paragraph::new(label("Screen name:", form.field == 1)),
        rows[4],
    );
    let (name, name_cursor) = field(&form.name, rows[5], form.field == 1);
    frame.render_widget(Paragraph::new(name), rows[5]);
    let message = match (&form.error, form.busy) {
        (_, true) => Line::styled("Signing in…", theme.dim()),
        (Some(e), false) => Line::styled(e.clone(), theme.alert()),
        (None, false) => Line::raw(""),
    };
    frame.render_widget(Paragraph::new(message).wrap(Wrap { trim: true }), rows[6]);
    frame.render_widget(
        Paragraph::new(Line::styled(
            "Tab next field · Enter sign in · Esc quit",
            theme.dim(),
        )),
        rows[7],
    );
    if !form.busy {
        frame.set_cursor_position(if form.field == 0 {
            node_cursor
        } else {
            name_cursor
        });
    }
}

fn draw_modal(app: &App, modal: &Modal, frame: &mut Frame, area: Rect) {
    let theme = &app.theme;
    match modal {
        Modal::Help => {
            let keys: &[(&str, &str)] = &[
                ("Tab / Esc", "between the list and the conversation"),
                ("↑ ↓  j k", "select a contact"),
                ("Enter", "open the conversation (in one: send)"),
                ("Alt-Enter, Ctrl-J", "a new line in a message"),
                ("PgUp PgDn", "scroll the conversation"),
                ("Home End", "oldest / newest (Ctrl- while typing)"),
                ("↑ ↓ in the input", "your earlier lines"),
                ("Ctrl-W, Ctrl-U, Ctrl-K", "delete word / to start / to end"),
                ("Ctrl-N Ctrl-P", "next / previous conversation"),
                ("Ctrl-X", "close the conversation"),
                ("Ctrl-G", "nudge (at most every 10 s)"),
                ("a d x t", "add, remove, block/unblock, trust a new key"),
                ("i", "a contact's details"),
                ("s m", "my status, my personal message"),
                ("/send PATH", "offer a file to this contact"),
                ("/accept, /decline", "answer the newest file offered here"),
                ("/typing off, /bell off", "stop showing I type / the bell"),
                ("q, Ctrl-C", "quit"),
            ];
            let lines: Vec<Line> = keys
                .iter()
                .map(|(k, what)| {
                    Line::from(vec![
                        Span::styled(format!("{k:<24}"), theme.strong()),
                        Span::raw(*what),
                    ])
                })
                .collect();
            let popup = centered(area, 70, lines.len() as u16 + 2);
            frame.render_widget(Clear, popup);
            frame.render_widget(
                Paragraph::new(lines).block(
                    Block::bordered()
                        .title(" Keys (Esc closes) ")
                        .border_style(theme.focused()),
                ),
                popup,
            );
        }
        Modal::Details(name, details) => {
            let mut lines = vec![Line::styled(name.to_string(), theme.strong())];
            match details {
                None => lines.push(Line::styled("asking the rendezvous node…", theme.dim())),
                Some((peer, path)) => {
                    lines.push(Line::raw(format!("peer id:   {}", peer.peer_id)));
                    let presence = if peer.status_text.is_empty() {
                        peer.presence.to_string()
                    } else {
                        format!("{}: {}", peer.presence, peer.status_text)
                    };
                    lines.push(Line::raw(format!("presence:  {presence}")));
                    if let Some(ms) = peer.last_seen.filter(|_| !peer.online()) {
                        lines.push(Line::raw(format!(
                            "last seen: {}",
                            crate::time::describe(ms)
                        )));
                    }
                    let path = match path {
                        Some(p) => format!("connected, {p}"),
                        None => "not connected now".to_owned(),
                    };
                    lines.push(Line::raw(format!("path:      {path}")));
                    if peer.addrs.is_empty() {
                        lines.push(Line::raw("addresses: (none: offline)"));
                    }
                    for (i, addr) in peer.addrs.iter().enumerate() {
                        let label = if i == 0 { "addresses: " } else { "           " };
                        lines.push(Line::raw(format!("{label}{addr}")));
                    }
                    if let Some(contact) = app.buddies.get(name) {
                        lines.push(Line::raw(format!("pinned:    {}", contact.pinned)));
                        if let Some(new) = contact.key_changed_to {
                            lines.push(Line::styled(
                                format!("KEY CHANGED to {new}: t trusts it"),
                                theme.alert(),
                            ));
                        }
                    }
                }
            }
            let popup = centered(area, 76, lines.len() as u16 + 2);
            frame.render_widget(Clear, popup);
            frame.render_widget(
                Paragraph::new(lines).wrap(Wrap { trim: false }).block(
                    Block::bordered()
                        .title(" Details (Esc closes) ")
                        .border_style(theme.focused()),
                ),
                popup,
            );
        }
        Modal::Prompt(prompt) => {
            let (title, editor, hint) = match prompt {
                Prompt::AddContact(e) => (
                    " Add a contact ",
                    Some(e),
                    "their screen name, then Enter (Esc cancels)",
                ),
                Prompt::StatusText(e) => (
                    " Personal message ",
                    Some(e),
                    "shown next to your name, then Enter (Esc cancels)",
                ),
                Prompt::Status => (
                    " Status ",
                    None,
                    "o online · a away · b busy · i invisible (Esc cancels)",
                ),
                Prompt::Confirm { what, .. } => {
                    let title = match what {
                        Confirm::Remove => " Remove the contact? ",
                        Confirm::Block => " Block? ",
                        Confirm::Unblock => " Unblock? ",
                        Confirm::Trust => " Trust the new key? ",
                    };
                    (title, None, "y yes · n no")
                }
            };
            let popup = centered(area, 60, 5);
            frame.render_widget(Clear, popup);
            let block = Block::bordered().title(title).border_style(theme.focused());
            let inner = block.inner(popup);
            frame.render_widget(block, popup);
            let [top, bottom] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)])
                .areas(Rect {
                    y: inner.y + 1,
                    height: 2,
                    ..inner
                });
            if let Some(editor) = editor {
                let (line, cursor) = field(editor, top, true);
                frame.render_widget(Paragraph::new(line), top);
                frame.set_cursor_position(cursor);
            } else if let Prompt::Confirm { what, name } = prompt {
                let text = match what {
                    Confirm::Remove => format!("Remove {name} from your contacts?"),
                    Confirm::Block => format!("Refuse messages from {name}?"),
                    Confirm::Unblock => format!("Accept messages from {name} again?"),
                    Confirm::Trust => format!("Pin the key {name} has now?"),
                };
                frame.render_widget(Paragraph::new(text), top);
            }
            frame.render_widget(Paragraph::new(Line::styled(hint, theme.dim())), bottom);
        }
    }
}
