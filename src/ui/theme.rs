//! Colours that read on light and dark terminals alike: only the terminal's
//! own named colours (which each terminal's palette adapts), used for
//! accents, never for the text itself; bold, dim and reverse carry the rest.
//! With `NO_COLOR` set, no colour at all.

use ratatui::style::{Color, Modifier, Style};

/// The styles of the window.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    color: bool,
}

impl Theme {
    /// With colours, or without.
    pub fn new(color: bool) -> Self {
        Self { color }
    }

    /// From the environment: `NO_COLOR` set (to anything) turns colours off.
    pub fn from_env() -> Self {
        Self::new(std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
    }

    fn fg(&self, color: Color) -> Style {
        if self.color {
            Style::new().fg(color)
        } else {
            Style::new()
        }
    }

    /// Plain text.
    pub fn text(&self) -> Style {
        Style::new()
    }

    /// Less important text: times, hints, last seen.
    pub fn dim(&self) -> Style {
        Style::new().add_modifier(Modifier::DIM)
    }

    /// Headings and names.
    pub fn strong(&self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    /// The selected row.
    pub fn selected(&self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }

    /// Online.
    pub fn online(&self) -> Style {
        self.fg(Color::Green)
    }

    /// Away or busy.
    pub fn away(&self) -> Style {
        self.fg(Color::Yellow)
    }

    /// Something wrong: a changed key, a message not delivered, an error.
    pub fn alert(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    /// My own name in a conversation.
    pub fn me(&self) -> Style {
        self.fg(Color::Blue).add_modifier(Modifier::BOLD)
    }

    /// The other party's name in a conversation.
    pub fn them(&self) -> Style {
        self.fg(Color::Magenta).add_modifier(Modifier::BOLD)
    }

    /// The frame around what has focus.
    pub fn focused(&self) -> Style {
        self.fg(Color::Cyan)
    }
}
