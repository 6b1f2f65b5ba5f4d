//! One conversation: its messages (from the store, then as they come and
//! change state), what the other side is doing, and the input line; drawn
//! bottom-up, wrapping only what is on screen, so a conversation of any
//! length opens and scrolls at once.

use std::time::Instant;

use messenger_proto::name::ScreenName;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget};

use super::editor::Editor;
use super::theme::Theme;
use crate::store::{Direction, MessageState, StoredMessage};

/// What a conversation shows, in order. (Messages are most of it: not
/// boxed.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
enum Entry {
    Message(StoredMessage),
    /// A line of the window's own, not stored: a nudge, a warning.
    Note(String),
}

/// Columns the text of a message is indented by.
const INDENT: usize = 2;

/// One conversation.
#[derive(Debug)]
pub struct Conversation {
    with: ScreenName,
    entries: Vec<Entry>,
    /// Each entry's height at `width`, computed when first needed.
    heights: Vec<Option<u16>>,
    width: u16,
    /// Lines scrolled up from the bottom (0: following new messages).
    scroll: usize,
    /// How many lines the last drawing showed (a page).
    page: usize,
    unread: usize,
    /// Until when the window flashes for a nudge.
    flash_until: Option<Instant>,
    loaded: bool,
    /// What I am writing to them.
    pub input: Editor,
    /// When I last told them I was typing.
    pub typing_sent: Option<Instant>,
}

impl Conversation {
    /// An empty conversation with `with`, its history not loaded yet.
    pub fn new(with: ScreenName) -> Self {
        Self {
            with,
            entries: Vec::new(),
            heights: Vec::new(),
            width: 0,
            scroll: 0,
            page: 1,
            unread: 0,
            flash_until: None,
            loaded: false,
            input: Editor::default(),
            typing_sent: None,
        }
    }

    /// The other party.
    pub fn with(&self) -> &ScreenName {
        &self.with
    }

    /// Messages not seen yet (arrived while another was in front).
    pub fn unread(&self) -> usize {
        self.unread
    }

    /// Marks everything seen.
    pub fn seen(&mut self) {
        self.unread = 0;
    }

    /// The newest file offered to me here: what `/accept` and `/decline`
    /// answer.
    pub fn latest_offer(&self) -> Option<&StoredMessage> {
        self.entries.iter().rev().find_map(|e| match e {
            Entry::Message(m) if m.direction == Direction::In && m.message.file.is_some() => {
                Some(m)
            }
            _ => None,
        })
    }

    /// Whether the history was loaded from the store.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// How many messages it holds.
    pub fn len(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e, Entry::Message(_)))
            .count()
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored history (oldest first) arrived: it goes before whatever
    /// came meanwhile.
    pub fn load(&mut self, history: Vec<StoredMessage>) {
        let known: std::collections::HashSet<_> = history.iter().map(|m| m.message.id).collect();
        let later: Vec<Entry> = std::mem::take(&mut self.entries)
            .into_iter()
            .filter(|e| match e {
                Entry::Message(m) => !known.contains(&m.message.id),
                Entry::Note(_) => true,
            })
            .collect();
        self.entries = history.into_iter().map(Entry::Message).collect();
        self.entries.extend(later);
        self.heights = vec![None; self.entries.len()];
        self.loaded = true;
    }

    /// A message arrived, or one of mine changed state: added, or updated
    /// in place (a state never goes back: a late "queued" does not undo
    /// "delivered"). Returns whether it is new.
    pub fn upsert(&mut self, message: StoredMessage) -> bool {
        let found = self.entries.iter_mut().rev().find_map(|e| match e {
            Entry::Message(m) if m.message.id == message.message.id => Some(m),
            _ => None,
        });
        match found {
            Some(existing) => {
                if rank(message.state) >= rank(existing.state) {
                    *existing = message;
                }
                false
            }
            None => {
                self.entries.push(Entry::Message(message));
                self.heights.push(None);
                true
            }
        }
    }

    /// Counts one more unread message.
    pub fn mark_unread(&mut self) {
        self.unread += 1;
    }

    /// The client's count of unread messages (kept across restarts).
    pub fn set_unread(&mut self, count: u64) {
        self.unread = usize::try_from(count).unwrap_or(usize::MAX);
    }

    /// Adds a line of the window's own.
    pub fn note(&mut self, text: impl Into<String>) {
        self.entries.push(Entry::Note(text.into()));
        self.heights.push(None);
    }

    /// Flashes the window until `until` (a nudge).
    pub fn flash(&mut self, until: Instant) {
        self.flash_until = Some(until);
    }

    /// Whether it flashes at `now`.
    pub fn is_flashing(&self, now: Instant) -> bool {
        self.flash_until.is_some_and(|t| t > now)
    }

    /// When the flash ends, if it is on at `now`.
    pub fn flash_ends(&self, now: Instant) -> Option<Instant> {
        self.flash_until.filter(|t| *t > now)
    }

    /// Scrolls up by `lines` (down when negative), within the history.
    pub fn scroll_by(&mut self, lines: isize) {
        let wanted = self.scroll.saturating_add_signed(lines);
        self.scroll = wanted.min(self.max_scroll());
    }

    /// Scrolls a page up (`up`) or down.
    pub fn page(&mut self, up: bool) {
        let page = self.page.max(2) as isize - 1;
        self.scroll_by(if up { page } else { -page });
    }

    /// To the oldest message.
    pub fn top(&mut self) {
        self.scroll = self.max_scroll();
    }

    /// To the newest, following what comes.
    pub fn bottom(&mut self) {
        self.scroll = 0;
    }

    /// Whether it follows new messages (scrolled to the bottom).
    pub fn at_bottom(&self) -> bool {
        self.scroll == 0
    }

    fn max_scroll(&mut self) -> usize {
        let total: usize = (0..self.entries.len())
            .map(|i| usize::from(self.height(i)))
            .sum();
        total.saturating_sub(self.page)
    }

    fn set_width(&mut self, width: u16) {
        if width != self.width {
            self.width = width;
            self.heights = vec![None; self.entries.len()];
        }
    }

    fn height(&mut self, i: usize) -> u16 {
        if let Some(h) = self.heights[i] {
            return h;
        }
        let width = self.text_width();
        let h = match &self.entries[i] {
            Entry::Note(text) => textwrap::wrap(&format!("* {text}"), width).len(),
            Entry::Message(m) => 1 + textwrap::wrap(&m.message.text, body_options(width)).len(),
        };
        let h = u16::try_from(h).unwrap_or(u16::MAX);
        self.heights[i] = Some(h);
        h
    }

    fn text_width(&self) -> usize {
        usize::from(self.width).max(INDENT + 1)
    }

    /// The lines of entry `i` at the current width.
    fn lines_of(&self, i: usize, theme: &Theme, me: &str) -> Vec<Line<'static>> {
        let width = self.text_width();
        match &self.entries[i] {
            Entry::Note(text) => textwrap::wrap(&format!("* {text}"), width)
                .into_iter()
                .map(|l| Line::styled(l.into_owned(), theme.dim()))
                .collect(),
            Entry::Message(m) => {
                let mut lines = vec![header(m, theme, me)];
                for line in textwrap::wrap(&m.message.text, body_options(width)) {
                    lines.push(Line::from(line.into_owned()));
                }
                lines
            }
        }
    }

    /// Draws the messages that fit in `area`, the newest at the bottom
    /// unless scrolled up. `me` is my own name, shown on my messages.
    pub fn render(&mut self, area: Rect, buf: &mut Buffer, theme: &Theme, me: &str) {
        self.set_width(area.width);
        self.page = usize::from(area.height);
        let height = usize::from(area.height);
        // Skip, from the newest back, the entries wholly below the window:
        // scrolled far up, only what is on screen is wrapped and styled.
        let mut below = 0;
        let mut last = self.entries.len();
        while last > 0 {
            let h = usize::from(self.height(last - 1));
            if below + h > self.scroll {
                break;
            }
            below += h;
            last -= 1;
        }
        // Lines of the entries kept that still lie below the window.
        let cut = self.scroll - below;
        let want = cut + height;
        let mut covered = 0;
        let mut first = last;
        while first > 0 && covered < want {
            first -= 1;
            covered += usize::from(self.height(first));
        }
        let mut lines: Vec<Line<'static>> = Vec::with_capacity(covered);
        for i in first..last {
            lines.extend(self.lines_of(i, theme, me));
        }
        let end = lines.len().saturating_sub(cut);
        let start = end.saturating_sub(height);
        let shown: Vec<Line<'static>> = lines.drain(start..end).collect();
        // Short conversations sit at the bottom, as chats do.
        let pad = usize::from(area.height).saturating_sub(shown.len()) as u16;
        let area = Rect {
            y: area.y + pad,
            height: area.height - pad,
            ..area
        };
        Paragraph::new(shown).render(area, buf);
    }
}

/// How a message's text wraps in `width` columns, indented.
fn body_options(width: usize) -> textwrap::Options<'static> {
    textwrap::Options::new(width)
        .break_words(true)
        .initial_indent("  ")
        .subsequent_indent("  ")
}

/// The first line of a message: who, when, and for mine, how far it got.
fn header(m: &StoredMessage, theme: &Theme, me: &str) -> Line<'static> {
    let time = crate::time::clock(m.message.sent_at);
    let time = time.get(..5).unwrap_or(&time).to_owned();
    let mut spans = match m.direction {
        Direction::In => vec![Span::styled(m.message.from.to_string(), theme.them())],
        Direction::Out => {
            let me = if me.is_empty() {
                m.message.from.to_string()
            } else {
                me.to_owned()
            };
            vec![Span::styled(me, theme.me())]
        }
    };
    spans.push(Span::styled(format!("  {time}"), theme.dim()));
    if m.direction == Direction::Out {
        let state = match m.state {
            MessageState::Queued => Span::styled("  queued", theme.dim()),
            MessageState::Sent => Span::styled("  sent", theme.dim()),
            MessageState::Delivered => Span::styled("  ✓ delivered", theme.online()),
            MessageState::Failed => Span::styled(
                format!(
                    "  ✗ NOT delivered ({})",
                    m.error.as_deref().unwrap_or("refused")
                ),
                theme.alert(),
            ),
            MessageState::Received | MessageState::Unverified => Span::raw(""),
        };
        spans.push(state);
    }
    Line::from(spans)
}

/// How far a message of mine got: a later state wins.
fn rank(state: MessageState) -> u8 {
    match state {
        MessageState::Queued => 0,
        MessageState::Sent => 1,
        MessageState::Unverified | MessageState::Received => 2,
        MessageState::Delivered | MessageState::Failed => 3,
    }
}
