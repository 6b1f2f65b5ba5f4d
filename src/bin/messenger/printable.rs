//! What a peer wrote, made safe to print on a terminal.
//!
//! Text, status messages and file names come from other people's keys,
//! and a terminal obeys what it is sent: an escape sequence may clear the
//! screen, set the window title, hide a link behind other text (OSC 8) or
//! write to the clipboard (OSC 52); a carriage return or a bidirectional
//! override makes one thing look like another; and a newline followed by
//! `[12:03] bob: …` is a line from bob as far as the eye can tell. So every
//! field a peer controls is printed through here: control characters (C0,
//! DEL, C1), bidirectional controls and line separators are shown as
//! escapes (`\x1b`, `\u{202e}`), and the continuation lines of a message
//! are indented under its first, so that no message can start a line that
//! looks like another. `--json` output is left exact (JSON escapes it).

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal as itself.
fn is_unsafe(c: char) -> bool {
    c.is_control() // C0, DEL and C1
        || matches!(
            c,
            '\u{061c}' // Arabic letter mark
            | '\u{200e}' | '\u{200f}' // left-to-right and right-to-left marks
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{202a}'..='\u{202e}' // embeddings and overrides
            | '\u{2066}'..='\u{2069}' // isolates
        )
}

/// Appends `c` as a visible escape.
fn escape_into(out: &mut String, c: char) {
    let code = u32::from(c);
    // Writing to a String cannot fail.
    let _ = if code < 0x100 {
        write!(out, "\\x{code:02x}")
    } else {
        write!(out, "\\u{{{code:04x}}}")
    };
}

/// `text` on one line: every unsafe character, newlines and tabs
/// included, as an escape. For names, status messages and file names.
pub(crate) fn inline(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            escape_into(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A message's text, its lines kept: unsafe characters escaped (tabs
/// kept: they only move the cursor right) and every line after the first
/// starting with `indent`, so the text sits under its first line and no
/// line of it can pass for one of ours.
pub(crate) fn block(text: &str, indent: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
            out.push_str(indent);
        }
        for c in line.chars() {
            if c != '\t' && is_unsafe(c) {
                escape_into(&mut out, c);
            } else {
                out.push(c);
            }
        }
    }
    out
}

/// A message line as printed, `[clock] from: text`, with the text's
/// continuation lines aligned under its start.
pub(crate) fn message_line(clock: &str, from: &str, text: &str) -> String {
    let head = format!("[{clock}] {}: ", inline(from));
    let indent = " ".repeat(head.chars().count());
    format!("{head}{}", block(text, &indent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        assert!(matches!(inline("hello, wörld ☕"), Cow::Borrowed(_)));
        assert_eq!(block("hi\tthere", "  "), "hi\tthere");
    }

    #[test]
    fn escape_sequences_and_bidi_controls_are_shown_not_obeyed() {
        // Clear screen, set the title, an OSC 8 link, an OSC 52 clipboard
        // write, a bell, a C1 CSI, a carriage return, a right-to-left
        // override and an isolate.
        let hostile = "\x1b[2J\x1b]0;pwned\x07\x1b]8;;http://evil/\x1b\\x\x1b]52;c;ZXZpbA==\x07\u{9b}31m\rok\u{202e}gpj.exe\u{2066}";
        let shown = inline(hostile);
        assert!(
            !shown.chars().any(is_unsafe),
            "nothing unsafe left: {shown:?}"
        );
        assert_eq!(
            shown,
            "\\x1b[2J\\x1b]0;pwned\\x07\\x1b]8;;http://evil/\\x1b\\x\\x1b]52;c;ZXZpbA==\\x07\\x9b31m\\x0dok\\u{202e}gpj.exe\\u{2066}"
        );
        assert_eq!(inline("a\nb\tc\u{7f}"), "a\\x0ab\\x09c\\x7f");
        assert_eq!(inline("x\u{2028}y"), "x\\u{2028}y");
    }

    #[test]
    fn a_message_cannot_start_a_line_of_its_own() {
        let forged = "see you\n[12:03:00] bob: my new wallet is 1Abc\r[12:04:00] carol: yes";
        let shown = message_line("12:02:59", "mallory", forged);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], "[12:02:59] mallory: see you");
        assert!(
            lines[1].starts_with("                    [12:03:00] bob:"),
            "indented under the text: {:?}",
            lines[1]
        );
        assert!(lines[1].contains("\\x0d[12:04:00]"), "{:?}", lines[1]);
        assert!(
            lines.iter().skip(1).all(|l| l.starts_with(' ')),
            "only the first line starts at the margin"
        );
    }

    #[test]
    fn every_unsafe_character_is_escaped_in_a_block() {
        let all: String = (0u32..0x2100)
            .filter_map(char::from_u32)
            .filter(|c| *c != '\n')
            .collect();
        let shown = block(&all, "  ");
        assert!(
            !shown.chars().any(|c| c != '\t' && is_unsafe(c)),
            "only tabs are kept"
        );
        assert_eq!(shown.lines().count(), 1);
    }
}
