//! The input line of a conversation: ordinary editing over graphemes (so
//! a cursor never lands inside a combining sequence or a wide character),
//! several lines, word moves and deletions, and the history of one's own
//! lines.

use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

/// Lines of one's own kept for recall, per conversation.
const HISTORY: usize = 100;

/// A multi-line text being edited, with its cursor.
#[derive(Debug, Default, Clone)]
pub struct Editor {
    text: String,
    /// A byte offset on a grapheme boundary.
    cursor: usize,
    /// What was sent before, oldest first, and which one is recalled.
    history: Vec<String>,
    recalled: Option<usize>,
    /// What was being written when recall began.
    draft: String,
}

impl Editor {
    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether there is nothing written.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The cursor, as a byte offset into [`Editor::text`].
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Inserts typed or pasted text at the cursor (a paste's `\r\n` and
    /// `\r` become `\n`; other control characters are dropped).
    pub fn insert(&mut self, text: &str) {
        let clean: String = text
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .chars()
            .filter(|c| *c == '\n' || *c == '\t' || !c.is_control())
            .map(|c| if c == '\t' { ' ' } else { c })
            .collect();
        self.text.insert_str(self.cursor, &clean);
        self.cursor += clean.len();
        self.recalled = None;
    }

    /// Starts a new line at the cursor.
    pub fn newline(&mut self) {
        self.insert("\n");
    }

    fn prev_boundary(&self, from: usize) -> usize {
        self.text[..from]
            .grapheme_indices(true)
            .next_back()
            .map_or(0, |(i, _)| i)
    }

    fn next_boundary(&self, from: usize) -> usize {
        self.text[from..]
            .graphemes(true)
            .next()
            .map_or(from, |g| from + g.len())
    }

    /// Where the word before `from` starts (spaces skipped first).
    fn word_start(&self, from: usize) -> usize {
        let before = &self.text[..from];
        let trimmed = before.trim_end_matches(|c: char| c.is_whitespace());
        trimmed.rfind(|c: char| c.is_whitespace()).map_or(0, |i| {
            i + trimmed[i..].chars().next().map_or(1, char::len_utf8)
        })
    }

    /// Where the word after `from` ends (spaces skipped first).
    fn word_end(&self, from: usize) -> usize {
        let after = &self.text[from..];
        let skipped = after.len() - after.trim_start_matches(|c: char| c.is_whitespace()).len();
        let rest = &after[skipped..];
        from + skipped + rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len())
    }

    fn line_start(&self) -> usize {
        self.text[..self.cursor].rfind('\n').map_or(0, |i| i + 1)
    }

    fn line_end(&self) -> usize {
        self.text[self.cursor..]
            .find('\n')
            .map_or(self.text.len(), |i| self.cursor + i)
    }

    /// Deletes the grapheme before the cursor.
    pub fn backspace(&mut self) {
        let start = self.prev_boundary(self.cursor);
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    /// Deletes the grapheme under the cursor.
    pub fn delete(&mut self) {
        let end = self.next_boundary(self.cursor);
        self.text.replace_range(self.cursor..end, "");
    }

    /// Deletes the word before the cursor.
    pub fn delete_word(&mut self) {
        let start = self.word_start(self.cursor);
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    /// Deletes from the start of the line to the cursor.
    pub fn delete_to_line_start(&mut self) {
        let start = self.line_start();
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    /// Deletes from the cursor to the end of the line.
    pub fn delete_to_line_end(&mut self) {
        let end = self.line_end();
        self.text.replace_range(self.cursor..end, "");
    }

    /// Moves one grapheme left.
    pub fn left(&mut self) {
        self.cursor = self.prev_boundary(self.cursor);
    }

    /// Moves one grapheme right.
    pub fn right(&mut self) {
        self.cursor = self.next_boundary(self.cursor);
    }

    /// Moves to the start of the word before.
    pub fn word_left(&mut self) {
        self.cursor = self.word_start(self.cursor);
    }

    /// Moves past the end of the word after.
    pub fn word_right(&mut self) {
        self.cursor = self.word_end(self.cursor);
    }

    /// Moves to the start of the line.
    pub fn home(&mut self) {
        self.cursor = self.line_start();
    }

    /// Moves to the end of the line.
    pub fn end(&mut self) {
        self.cursor = self.line_end();
    }

    /// Whether the cursor is on the first line (up recalls history there).
    pub fn on_first_line(&self) -> bool {
        !self.text[..self.cursor].contains('\n')
    }

    /// Whether the cursor is on the last line.
    pub fn on_last_line(&self) -> bool {
        !self.text[self.cursor..].contains('\n')
    }

    /// Moves up a line, keeping the column as far as it goes.
    pub fn up(&mut self) {
        let start = self.line_start();
        if start == 0 {
            return;
        }
        let column = self.text[start..self.cursor].graphemes(true).count();
        let prev_start = self.text[..start - 1].rfind('\n').map_or(0, |i| i + 1);
        self.cursor = advance(&self.text, prev_start, start - 1, column);
    }

    /// Moves down a line, keeping the column as far as it goes.
    pub fn down(&mut self) {
        let end = self.line_end();
        if end == self.text.len() {
            return;
        }
        let column = self.text[self.line_start()..self.cursor]
            .graphemes(true)
            .count();
        let next_start = end + 1;
        let next_end = self.text[next_start..]
            .find('\n')
            .map_or(self.text.len(), |i| next_start + i);
        self.cursor = advance(&self.text, next_start, next_end, column);
    }

    /// Recalls the line sent before the one shown (or the last one).
    pub fn recall_older(&mut self) {
        if self.history.is_empty() {
            return;
        }
        let index = match self.recalled {
            None => {
                self.draft = std::mem::take(&mut self.text);
                self.history.len() - 1
            }
            Some(0) => 0,
            Some(i) => i - 1,
        };
        self.show_recalled(Some(index));
    }

    /// Recalls the line sent after the one shown, then the draft again.
    pub fn recall_newer(&mut self) {
        match self.recalled {
            None => {}
            Some(i) if i + 1 < self.history.len() => self.show_recalled(Some(i + 1)),
            Some(_) => self.show_recalled(None),
        }
    }

    fn show_recalled(&mut self, index: Option<usize>) {
        self.text = match index {
            Some(i) => self.history[i].clone(),
            None => std::mem::take(&mut self.draft),
        };
        self.cursor = self.text.len();
        self.recalled = index;
    }

    /// Takes the text out (it is being sent), keeping it for recall.
    pub fn take(&mut self) -> String {
        let text = std::mem::take(&mut self.text);
        self.cursor = 0;
        self.recalled = None;
        self.draft.clear();
        if !text.trim().is_empty() && self.history.last() != Some(&text) {
            self.history.push(text.clone());
            if self.history.len() > HISTORY {
                self.history.remove(0);
            }
        }
        text
    }

    /// The text wrapped to `width` columns, as lines, and where the cursor
    /// falls in them (row, column).
    pub fn layout(&self, width: u16) -> (Vec<String>, (u16, u16)) {
        let width = usize::from(width.max(1));
        let mut rows = Vec::new();
        let mut cursor = (0u16, 0u16);
        let mut offset = 0;
        for line in self.text.split('\n') {
            let mut row = String::new();
            let mut row_width = 0;
            let mut at = offset;
            for g in line.graphemes(true) {
                let w = g.width();
                if row_width + w > width && !row.is_empty() {
                    rows.push(std::mem::take(&mut row));
                    row_width = 0;
                }
                if at == self.cursor {
                    cursor = (rows.len() as u16, row_width as u16);
                }
                row.push_str(g);
                row_width += w;
                at += g.len();
            }
            if at == self.cursor {
                if row_width >= width {
                    rows.push(std::mem::take(&mut row));
                    row_width = 0;
                }
                cursor = (rows.len() as u16, row_width as u16);
            }
            rows.push(row);
            offset += line.len() + 1;
        }
        (rows, cursor)
    }
}

/// The byte offset `column` graphemes into `text[start..end]`, or `end`.
fn advance(text: &str, start: usize, end: usize, column: usize) -> usize {
    text[start..end]
        .grapheme_indices(true)
        .nth(column)
        .map_or(end, |(i, _)| start + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(text: &str) -> Editor {
        let mut e = Editor::default();
        e.insert(text);
        e
    }

    #[test]
    fn graphemes_are_never_split() {
        // "e" + combining acute, a wide CJK character, a flag (two code
        // points).
        let mut e = typed("ae\u{301}日🇫🇷");
        e.backspace();
        assert_eq!(e.text(), "ae\u{301}日");
        e.left();
        e.left();
        e.insert("x");
        assert_eq!(e.text(), "axe\u{301}日");
        e.right();
        e.delete();
        assert_eq!(e.text(), "axe\u{301}");
    }

    #[test]
    fn words_and_lines() {
        let mut e = typed("hello big world");
        e.delete_word();
        assert_eq!(e.text(), "hello big ");
        e.word_left();
        assert_eq!(e.cursor(), "hello ".len());
        e.delete_to_line_end();
        assert_eq!(e.text(), "hello ");
        e.newline();
        e.insert("second");
        assert!(!e.on_first_line() && e.on_last_line());
        e.up();
        assert_eq!(e.cursor(), "hello ".len());
        e.home();
        e.delete_to_line_end();
        assert_eq!(e.text(), "\nsecond");
    }

    #[test]
    fn pasted_text_is_cleaned() {
        let e = typed("one\r\ntwo\rthree\u{1b}[31m\tend");
        assert_eq!(e.text(), "one\ntwo\nthree[31m end");
    }

    #[test]
    fn recall_walks_the_lines_sent_and_back_to_the_draft() {
        let mut e = typed("first");
        e.take();
        e.insert("second");
        e.take();
        e.insert("draft");
        e.recall_older();
        assert_eq!(e.text(), "second");
        e.recall_older();
        assert_eq!(e.text(), "first");
        e.recall_older();
        assert_eq!(e.text(), "first");
        e.recall_newer();
        e.recall_newer();
        assert_eq!(e.text(), "draft");
    }

    #[test]
    fn layout_wraps_by_display_width_and_places_the_cursor() {
        let e = typed("日本語のテキスト");
        // Each character is two columns wide: four fit in 9 columns.
        let (rows, cursor) = e.layout(9);
        assert_eq!(rows, ["日本語の", "テキスト"]);
        // Cursor at the end, after the last wide character.
        assert_eq!(cursor, (1, 8));
        let e = typed("abcd");
        let (rows, cursor) = e.layout(4);
        assert_eq!(rows, ["abcd", ""]);
        assert_eq!(cursor, (1, 0));
    }
}
