//! The buddy list: my contacts, grouped Online and Offline, kept live by
//! presence pushes; the selection follows a name, not a row, so that a
//! contact going offline does not move the cursor to someone else.

use std::collections::HashMap;

use libp2p::PeerId;
use messenger_proto::name::ScreenName;
use messenger_proto::presence::Presence;
use ratatui::text::{Line, Span};
use unicode_width::UnicodeWidthStr;

use super::theme::Theme;
use crate::api::ContactView;
use crate::peer::PeerInfo;

/// What the list shows of a contact besides the contact itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Marks {
    /// Messages not read yet.
    pub unread: usize,
    /// Typing to me now.
    pub typing: bool,
}

/// One row of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// "Online (2)" or "Offline (1)".
    Group {
        /// The group's title.
        title: &'static str,
        /// How many are in it.
        count: usize,
    },
    /// A contact.
    Contact(ScreenName),
}

/// My contacts and the selection.
#[derive(Debug, Default)]
pub struct Buddies {
    contacts: Vec<ContactView>,
    selected: Option<ScreenName>,
    loaded: bool,
    /// The last push for each name: a list read before a push may be
    /// answered after it, and must not undo it.
    pushed: HashMap<ScreenName, PeerInfo>,
}

impl Buddies {
    /// Replaces the list with what the client says now.
    pub fn set(&mut self, mut contacts: Vec<ContactView>) {
        contacts.sort_by(|a, b| a.name.cmp(&b.name));
        self.contacts = contacts;
        self.loaded = true;
        let pushed: Vec<PeerInfo> = self.pushed.values().cloned().collect();
        for info in pushed {
            self.apply(&info);
        }
        if self.selected.as_ref().is_none_or(|s| self.get(s).is_none()) {
            self.selected = self.order().into_iter().next();
        }
    }

    /// Whether the list came from the client yet.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// A contact by name.
    pub fn get(&self, name: &ScreenName) -> Option<&ContactView> {
        self.contacts.iter().find(|c| &c.name == name)
    }

    /// Whether `name` is a contact.
    pub fn contains(&self, name: &ScreenName) -> bool {
        self.get(name).is_some()
    }

    /// A presence push.
    pub fn presence(&mut self, info: &PeerInfo) {
        self.pushed.insert(info.name.clone(), info.clone());
        self.apply(info);
    }

    fn apply(&mut self, info: &PeerInfo) {
        if let Some(c) = self.contacts.iter_mut().find(|c| c.name == info.name) {
            c.presence = Some(info.presence);
            c.status_text = if info.online() {
                info.status_text.clone()
            } else {
                String::new()
            };
            if info.last_seen.is_some() {
                c.last_seen = info.last_seen;
            }
            if info.peer_id != c.pinned {
                c.key_changed_to = Some(info.peer_id);
            }
        }
    }

    /// A contact's name now has another key than the pinned one.
    pub fn key_changed(&mut self, name: &ScreenName, current: PeerId) {
        if let Some(c) = self.contacts.iter_mut().find(|c| &c.name == name) {
            c.key_changed_to = Some(current);
        }
    }

    fn is_online(c: &ContactView) -> bool {
        c.presence.is_some_and(Presence::is_online)
    }

    /// The contacts in the order shown: online ones, then the others.
    fn order(&self) -> Vec<ScreenName> {
        let online = self.contacts.iter().filter(|c| Self::is_online(c));
        let offline = self.contacts.iter().filter(|c| !Self::is_online(c));
        online.chain(offline).map(|c| c.name.clone()).collect()
    }

    /// The rows shown, groups included.
    pub fn rows(&self) -> Vec<Row> {
        let online: Vec<&ContactView> = self
            .contacts
            .iter()
            .filter(|c| Self::is_online(c))
            .collect();
        let offline: Vec<&ContactView> = self
            .contacts
            .iter()
            .filter(|c| !Self::is_online(c))
            .collect();
        let mut rows = vec![Row::Group {
            title: "Online",
            count: online.len(),
        }];
        rows.extend(online.iter().map(|c| Row::Contact(c.name.clone())));
        rows.push(Row::Group {
            title: "Offline",
            count: offline.len(),
        });
        rows.extend(offline.iter().map(|c| Row::Contact(c.name.clone())));
        rows
    }

    /// The selected contact.
    pub fn selected(&self) -> Option<&ScreenName> {
        self.selected.as_ref()
    }

    /// Selects `name` (if it is a contact).
    pub fn select(&mut self, name: &ScreenName) {
        if self.contains(name) {
            self.selected = Some(name.clone());
        }
    }

    /// Moves the selection by `by` contacts (down when positive).
    pub fn move_selection(&mut self, by: isize) {
        let order = self.order();
        if order.is_empty() {
            self.selected = None;
            return;
        }
        let at = self
            .selected
            .as_ref()
            .and_then(|s| order.iter().position(|n| n == s))
            .unwrap_or(0);
        let to = at.saturating_add_signed(by).min(order.len() - 1);
        self.selected = Some(order[to].clone());
    }

    /// The lines of the list, `width` columns wide, with each contact's
    /// marks; the index of the selected line, if any.
    pub fn lines(
        &self,
        width: u16,
        marks: &HashMap<ScreenName, Marks>,
        theme: &Theme,
    ) -> (Vec<Line<'static>>, Option<usize>) {
        let mut lines = Vec::new();
        let mut selected = None;
        for row in self.rows() {
            match row {
                Row::Group { title, count } => {
                    lines.push(Line::styled(format!("{title} ({count})"), theme.strong()));
                }
                Row::Contact(name) => {
                    let Some(c) = self.get(&name) else { continue };
                    if self.selected.as_ref() == Some(&name) {
                        selected = Some(lines.len());
                    }
                    let m = marks.get(&name).copied().unwrap_or_default();
                    lines.push(contact_line(c, m, usize::from(width), theme));
                }
            }
        }
        (lines, selected)
    }
}

/// The presence's symbol and style.
pub(super) fn presence_mark(presence: Option<Presence>, theme: &Theme) -> Span<'static> {
    match presence {
        Some(Presence::Online) => Span::styled("●", theme.online()),
        Some(Presence::Away) => Span::styled("◐", theme.away()),
        Some(Presence::Busy) => Span::styled("⊖", theme.away()),
        Some(Presence::Offline) => Span::styled("○", theme.dim()),
        None => Span::styled("?", theme.dim()),
    }
}

/// "● bob (2) ✎ at lunch", cut to `width` columns.
fn contact_line(c: &ContactView, m: Marks, width: usize, theme: &Theme) -> Line<'static> {
    let mut spans = vec![
        Span::raw(" "),
        presence_mark(c.presence, theme),
        Span::raw(" "),
    ];
    let name_style = if m.unread > 0 {
        theme.strong()
    } else {
        theme.text()
    };
    spans.push(Span::styled(c.name.to_string(), name_style));
    if c.key_changed_to.is_some() {
        spans.push(Span::styled(" !key", theme.alert()));
    }
    if c.blocked {
        spans.push(Span::styled(" blocked", theme.dim()));
    }
    if m.unread > 0 {
        spans.push(Span::styled(format!(" ({})", m.unread), theme.strong()));
    }
    if m.typing {
        spans.push(Span::styled(" ✎", theme.away()));
    }
    let detail = match c.presence {
        Some(p) if p.is_online() => {
            let mut d = match p {
                Presence::Away => "away".to_owned(),
                Presence::Busy => "busy".to_owned(),
                _ => String::new(),
            };
            if !c.status_text.is_empty() {
                if !d.is_empty() {
                    d.push_str(": ");
                }
                d.push_str(&c.status_text);
            }
            d
        }
        _ => c.last_seen.map(crate::time::ago).unwrap_or_default(),
    };
    if !detail.is_empty() {
        spans.push(Span::styled(format!(" {detail}"), theme.dim()));
    }
    cut(spans, width)
}

/// Cuts spans to `width` columns, ending in "…" if anything was cut.
pub(super) fn cut(spans: Vec<Span<'static>>, width: usize) -> Line<'static> {
    let total: usize = spans.iter().map(|s| s.content.width()).sum();
    if total <= width {
        return Line::from(spans);
    }
    let mut out = Vec::new();
    let mut used = 0;
    let room = width.saturating_sub(1);
    for span in spans {
        let mut content = String::new();
        for g in unicode_segmentation::UnicodeSegmentation::graphemes(span.content.as_ref(), true) {
            let w = g.width();
            if used + w > room {
                break;
            }
            used += w;
            content.push_str(g);
        }
        let done = content.len() < span.content.len();
        out.push(Span::styled(content, span.style));
        if done {
            break;
        }
    }
    out.push(Span::raw("…"));
    Line::from(out)
}
