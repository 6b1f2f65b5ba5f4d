//! The one stream of [`Event`]s and its journal.
//!
//! Every task of the client that changes what a user sees (the core, the
//! inbox, the delivery workers, transfers) tells it through an
//! [`EventSender`]. Each event goes to the front end that started the
//! client (a bounded queue it must read) and into a [`Journal`], where it
//! gets a sequence number: any other front end (a command following over
//! the control socket, a window attached to the running client) asks for
//! a snapshot of the state, then follows the journal from the snapshot's
//! number, missing nothing in between.
//!
//! The journal keeps the last [`JOURNAL_LEN`] events. A follower that
//! falls further behind, or that asks with the number of another run of
//! the client, is told it missed events and asks for a snapshot again:
//! memory stays bounded whatever a slow follower does.

mod event;
mod journal;

pub use event::{ContactView, Event, SettingsView};
pub use journal::{EventSender, Follower, JOURNAL_BYTES, JOURNAL_LEN, Journal, Missed};
