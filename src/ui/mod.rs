//! The buddy-list window in a terminal: its state ([`App`]) and its drawing
//! ([`draw`]), over the agent's requests and events. No I/O here: the
//! `messenger` binary runs it in a real terminal (raw mode, keys, the
//! agent), and the tests draw it into ratatui's test backend.
//!
//! The window is Windows Messenger's: me and my contacts (Online, then
//! Offline) on the left, live by presence pushes; the conversations I have
//! open on the right, one in front, each with its history, every message's
//! state (queued, sent, delivered, not delivered) as it changes, who is
//! typing, and nudges.

mod app;
mod buddies;
mod conversation;
mod editor;
mod theme;
mod view;

#[cfg(test)]
mod tests;

pub use app::{
    Action, App, Confirm, Connection, Focus, HISTORY_SHOWN, Me, Modal, Notice, Prompt, SignIn, Tag,
};
pub use buddies::{Buddies, Marks, Row};
pub use conversation::Conversation;
pub use editor::Editor;
pub use theme::Theme;
pub use view::{MIN_HEIGHT, MIN_WIDTH, draw};
