//! Unread counts: per conversation, how many received messages came since
//! the user last read it. Counted when a message becomes visible (its
//! signature checked) and cleared when a front end marks the
//! conversation read, in the same store as the messages, so that the
//! counts survive a restart and every front end sees the same ones.

use messenger_proto::name::ScreenName;
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Raw, Store, StoreError, UNREAD};

/// The unread count of one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unread {
    /// The other party.
    pub name: ScreenName,
    /// Received messages not read yet.
    pub count: u64,
}

/// One more message from `name` is visible and not read yet; returns the
/// count now.
pub(super) fn counted(txn: &WriteTransaction, name: &str) -> Result<u64, Raw> {
    let mut table = txn.open_table(UNREAD)?;
    let count = table.get(name)?.map_or(0, |v| v.value()) + 1;
    table.insert(name, count)?;
    Ok(count)
}

/// The conversation with `name` is gone (a declined request).
pub(super) fn forget(txn: &WriteTransaction, name: &str) -> Result<(), Raw> {
    txn.open_table(UNREAD)?.remove(name)?;
    Ok(())
}

impl Store {
    /// How many received messages of `name` are not read yet.
    pub fn unread(&self, name: &ScreenName) -> Result<u64, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(UNREAD)?;
            Ok(table.get(name.as_str())?.map_or(0, |v| v.value()))
        })
    }

    /// Every conversation with messages not read yet, by name.
    pub fn unread_counts(&self) -> Result<Vec<Unread>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(UNREAD)?.iter()? {
                let (name, count) = entry?;
                let name = ScreenName::parse_normal(name.value())
                    .map_err(|e| Raw::Decode(e.to_string()))?;
                out.push(Unread {
                    name,
                    count: count.value(),
                });
            }
            Ok(out)
        })
    }

    /// Marks the conversation with `name` read; returns whether anything
    /// was unread.
    pub fn mark_read(&self, name: &ScreenName) -> Result<bool, StoreError> {
        // Front ends mark a conversation read whenever it is shown: most
        // often nothing is unread, and nothing is written.
        if self.unread(name)? == 0 {
            return Ok(false);
        }
        self.write(|txn| Ok(txn.open_table(UNREAD)?.remove(name.as_str())?.is_some()))
    }
}
