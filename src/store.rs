//! The home's store: contacts with pinned keys, blocked names, and every
//! message sent or received with its state. One redb file, written only by
//! the one process that owns the home; every change is committed durably
//! before it is acted on (a message is stored before it is sent, and before
//! it is acknowledged).

use std::path::Path;

use libp2p::PeerId;
use messenger_proto::chat::{Message, MessageId};
use messenger_proto::codec;
use messenger_proto::name::ScreenName;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

const CONTACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("contacts");
const BLOCKED: TableDefinition<&str, u64> = TableDefinition::new("blocked");
/// (peer name, sequence) → message: one conversation is one key range.
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
/// message id → (peer name, sequence): finds a message, and drops repeats.
const BY_ID: TableDefinition<&[u8], (&str, u64)> = TableDefinition::new("by_id");
/// (recipient, sequence) → (): what is still to be delivered, in order.
const OUTBOX: TableDefinition<(&str, u64), ()> = TableDefinition::new("outbox");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the home's store open.
    #[error(
        "the store {0} is in use by another messenger process (is `messenger online` running on this home?)"
    )]
    InUse(String),
    /// The database failed.
    #[error("store error: {0}")]
    Db(#[from] redb::Error),
    /// A stored value could not be decoded.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

/// A contact: a name whose key we pinned when we added it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The contact's name.
    pub name: ScreenName,
    /// The key the name had when added (or last trusted).
    pub pinned: PeerId,
    /// When added (ms since epoch).
    pub added_at: u64,
    /// Another key the node reported for the name, until the user trusts it.
    pub key_changed_to: Option<PeerId>,
}

/// Where a stored message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// I sent it.
    Out,
    /// I received it.
    In,
}

/// The state of a message in history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    /// Stored, waiting for the recipient to be reachable.
    Queued,
    /// Written to the recipient, not acknowledged yet.
    Sent,
    /// Acknowledged by the recipient.
    Delivered,
    /// Refused by the recipient; will not be retried.
    Failed,
    /// Received from the sender (and acknowledged).
    Received,
}

impl std::fmt::Display for MessageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MessageState::Queued => "queued",
            MessageState::Sent => "sent",
            MessageState::Delivered => "delivered",
            MessageState::Failed => "failed",
            MessageState::Received => "received",
        })
    }
}

/// A message in history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Position in this home's history (grows in the order written/received).
    pub seq: u64,
    /// The message itself, as signed by its sender.
    pub message: Message,
    /// Mine or theirs.
    pub direction: Direction,
    /// Its state.
    pub state: MessageState,
    /// When the state last changed (ms since epoch).
    pub updated_at: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The key at the other end: the verified sender of a received
    /// message, the recipient that acknowledged a delivered one.
    #[serde(default)]
    pub peer_id: Option<PeerId>,
}

impl StoredMessage {
    /// The other party of the conversation.
    pub fn peer(&self) -> &ScreenName {
        match self.direction {
            Direction::Out => &self.message.to,
            Direction::In => &self.message.from,
        }
    }
}

/// The home's store.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

/// Decodes a stored value (a [`Contact`], a [`StoredMessage`]…); a value
/// that does not decode is reported as corruption, never trusted.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    codec::from_cbor(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Opens (or creates) the store file. Fails with [`StoreError::InUse`]
    /// if another process has it open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::InUse(path.display().to_string()));
            }
            Err(e) => return Err(db_err(e)),
        };
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(CONTACTS).map_err(db_err)?;
        txn.open_table(BLOCKED).map_err(db_err)?;
        txn.open_table(HISTORY).map_err(db_err)?;
        txn.open_table(BY_ID).map_err(db_err)?;
        txn.open_table(OUTBOX).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let out = f(&txn)?;
        txn.commit().map_err(db_err)?;
        Ok(out)
    }

    // ---- contacts and blocks ----

    /// Adds or replaces a contact.
    pub fn put_contact(&self, contact: &Contact) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(CONTACTS).map_err(db_err)?;
            t.insert(contact.name.as_str(), codec::to_cbor(contact).as_slice())
                .map_err(db_err)?;
            Ok(())
        })
    }

    /// A contact by name.
    pub fn contact(&self, name: &ScreenName) -> Result<Option<Contact>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(CONTACTS).map_err(db_err)?;
        let v = t.get(name.as_str()).map_err(db_err)?;
        v.map(|v| decode(v.value())).transpose()
    }

    /// Removes a contact; false if it was not one.
    pub fn remove_contact(&self, name: &ScreenName) -> Result<bool, StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(CONTACTS).map_err(db_err)?;
            let removed = t.remove(name.as_str()).map_err(db_err)?.is_some();
            Ok(removed)
        })
    }

    /// Every contact, by name.
    pub fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(CONTACTS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(db_err)? {
            let (_, v) = entry.map_err(db_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Blocks or unblocks a name; returns whether anything changed.
    pub fn set_blocked(
        &self,
        name: &ScreenName,
        blocked: bool,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(BLOCKED).map_err(db_err)?;
            let changed = if blocked {
                t.insert(name.as_str(), now).map_err(db_err)?.is_none()
            } else {
                t.remove(name.as_str()).map_err(db_err)?.is_some()
            };
            Ok(changed)
        })
    }

    /// Whether a name is blocked.
    pub fn is_blocked(&self, name: &ScreenName) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(BLOCKED).map_err(db_err)?;
        Ok(t.get(name.as_str()).map_err(db_err)?.is_some())
    }

    /// Every blocked name.
    pub fn blocked(&self) -> Result<Vec<ScreenName>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(BLOCKED).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(db_err)? {
            let (k, _) = entry.map_err(db_err)?;
            out.push(ScreenName::parse(k.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    // ---- messages ----

    fn next_seq(txn: &WriteTransaction) -> Result<u64, StoreError> {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let seq = meta
            .get(NEXT_SEQ)
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(1);
        meta.insert(NEXT_SEQ, seq + 1).map_err(db_err)?;
        Ok(seq)
    }

    fn put(txn: &WriteTransaction, stored: &StoredMessage) -> Result<(), StoreError> {
        let mut history = txn.open_table(HISTORY).map_err(db_err)?;
        history
            .insert(
                (stored.peer().as_str(), stored.seq),
                codec::to_cbor(stored).as_slice(),
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Stores a message I am sending, queued for delivery.
    pub fn add_outgoing(&self, message: Message, now: u64) -> Result<StoredMessage, StoreError> {
        self.write(|txn| {
            let seq = Self::next_seq(txn)?;
            let stored = StoredMessage {
                seq,
                message,
                direction: Direction::Out,
                state: MessageState::Queued,
                updated_at: now,
                error: None,
                peer_id: None,
            };
            Self::put(txn, &stored)?;
            let to = stored.message.to.as_str();
            txn.open_table(BY_ID)
                .map_err(db_err)?
                .insert(stored.message.id.0.as_slice(), (to, seq))
                .map_err(db_err)?;
            txn.open_table(OUTBOX)
                .map_err(db_err)?
                .insert((to, seq), ())
                .map_err(db_err)?;
            Ok(stored)
        })
    }

    /// Stores a received message unless its id was seen before. Returns
    /// the stored message if it is new.
    pub fn add_incoming(
        &self,
        message: &Message,
        sender: PeerId,
        now: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        self.write(|txn| {
            let mut by_id = txn.open_table(BY_ID).map_err(db_err)?;
            if by_id
                .get(message.id.0.as_slice())
                .map_err(db_err)?
                .is_some()
            {
                return Ok(None);
            }
            let seq = Self::next_seq(txn)?;
            by_id
                .insert(message.id.0.as_slice(), (message.from.as_str(), seq))
                .map_err(db_err)?;
            let stored = StoredMessage {
                seq,
                message: message.clone(),
                direction: Direction::In,
                state: MessageState::Received,
                updated_at: now,
                error: None,
                peer_id: Some(sender),
            };
            Self::put(txn, &stored)?;
            Ok(Some(stored))
        })
    }

    /// A message by id.
    pub fn message(&self, id: &MessageId) -> Result<Option<StoredMessage>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let by_id = txn.open_table(BY_ID).map_err(db_err)?;
        let Some(key) = by_id.get(id.0.as_slice()).map_err(db_err)? else {
            return Ok(None);
        };
        let (name, seq) = key.value();
        let history = txn.open_table(HISTORY).map_err(db_err)?;
        let v = history.get((name, seq)).map_err(db_err)?;
        v.map(|v| decode(v.value())).transpose()
    }

    /// Changes the state of my messages; delivered and failed ones leave
    /// the outbox. Returns the messages whose state changed.
    pub fn set_state(
        &self,
        ids: &[MessageId],
        state: MessageState,
        error: Option<&str>,
        now: u64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.write(|txn| {
            let by_id = txn.open_table(BY_ID).map_err(db_err)?;
            let mut history = txn.open_table(HISTORY).map_err(db_err)?;
            let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
            let mut changed = Vec::new();
            for id in ids {
                let Some(key) = by_id.get(id.0.as_slice()).map_err(db_err)? else {
                    continue;
                };
                let (name, seq) = key.value();
                let Some(bytes) = history
                    .get((name, seq))
                    .map_err(db_err)?
                    .map(|v| v.value().to_vec())
                else {
                    continue;
                };
                let mut stored: StoredMessage = decode(&bytes)?;
                if stored.direction != Direction::Out || stored.state == state {
                    continue;
                }
                // Delivered is final: a late failure report does not undo it.
                if stored.state == MessageState::Delivered {
                    continue;
                }
                stored.state = state;
                stored.updated_at = now;
                stored.error = error.map(str::to_owned);
                history
                    .insert((name, seq), codec::to_cbor(&stored).as_slice())
                    .map_err(db_err)?;
                if matches!(state, MessageState::Delivered | MessageState::Failed) {
                    outbox.remove((name, seq)).map_err(db_err)?;
                }
                changed.push(stored);
            }
            Ok(changed)
        })
    }

    /// What is still to be delivered, in the order it was written; for
    /// one recipient or everyone.
    pub fn outbox(&self, to: Option<&ScreenName>) -> Result<Vec<StoredMessage>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let outbox = txn.open_table(OUTBOX).map_err(db_err)?;
        let history = txn.open_table(HISTORY).map_err(db_err)?;
        let keys: Vec<(String, u64)> = match to {
            Some(name) => outbox
                .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                .map_err(db_err)?
                .map(|e| e.map(|(k, _)| (k.value().0.to_owned(), k.value().1)))
                .collect::<Result<_, _>>()
                .map_err(db_err)?,
            None => outbox
                .iter()
                .map_err(db_err)?
                .map(|e| e.map(|(k, _)| (k.value().0.to_owned(), k.value().1)))
                .collect::<Result<_, _>>()
                .map_err(db_err)?,
        };
        let mut out = Vec::with_capacity(keys.len());
        for (name, seq) in keys {
            if let Some(v) = history.get((name.as_str(), seq)).map_err(db_err)? {
                out.push(decode(v.value())?);
            }
        }
        out.sort_by_key(|m: &StoredMessage| m.seq);
        Ok(out)
    }

    /// The last `limit` messages of the conversation with `peer`, oldest first.
    pub fn history(
        &self,
        peer: &ScreenName,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let history = txn.open_table(HISTORY).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in history
            .range((peer.as_str(), 0)..=(peer.as_str(), u64::MAX))
            .map_err(db_err)?
            .rev()
            .take(limit)
        {
            let (_, v) = entry.map_err(db_err)?;
            out.push(decode(v.value())?);
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ScreenName {
        ScreenName::parse(s).unwrap()
    }

    fn msg(from: &str, to: &str, text: &str) -> Message {
        Message {
            id: MessageId::random(),
            from: name(from),
            to: name(to),
            sent_at: 1,
            text: text.into(),
        }
    }

    #[test]
    fn outbox_keeps_order_and_delivered_messages_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let a = store.add_outgoing(msg("mine", "bob", "1"), 1).unwrap();
        let b = store.add_outgoing(msg("mine", "carol", "x"), 1).unwrap();
        let c = store.add_outgoing(msg("mine", "bob", "2"), 1).unwrap();
        let bob: Vec<_> = store
            .outbox(Some(&name("bob")))
            .unwrap()
            .iter()
            .map(|m| m.message.text.clone())
            .collect();
        assert_eq!(bob, ["1", "2"]);
        assert_eq!(store.outbox(None).unwrap().len(), 3);

        store
            .set_state(&[a.message.id], MessageState::Sent, None, 2)
            .unwrap();
        store
            .set_state(&[a.message.id], MessageState::Delivered, None, 3)
            .unwrap();
        store
            .set_state(
                &[b.message.id],
                MessageState::Failed,
                Some("not delivered"),
                3,
            )
            .unwrap();
        // A late failure does not undo a delivery.
        assert!(
            store
                .set_state(&[a.message.id], MessageState::Failed, None, 4)
                .unwrap()
                .is_empty()
        );
        let left: Vec<_> = store
            .outbox(None)
            .unwrap()
            .iter()
            .map(|m| m.message.id)
            .collect();
        assert_eq!(left, [c.message.id]);
        let h = store.history(&name("bob"), 10).unwrap();
        assert_eq!(
            h.iter().map(|m| m.state).collect::<Vec<_>>(),
            [MessageState::Delivered, MessageState::Queued]
        );
        assert_eq!(
            store
                .message(&b.message.id)
                .unwrap()
                .unwrap()
                .error
                .as_deref(),
            Some("not delivered")
        );
    }

    #[test]
    fn incoming_duplicates_are_dropped_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let m = msg("alice", "mine", "hi");
        {
            let store = Store::open(&path).unwrap();
            assert!(
                store
                    .add_incoming(&m, PeerId::random(), 1)
                    .unwrap()
                    .is_some()
            );
            assert!(
                store
                    .add_incoming(&m, PeerId::random(), 2)
                    .unwrap()
                    .is_none()
            );
            // Only one process may hold the store.
            assert!(matches!(Store::open(&path), Err(StoreError::InUse(_))));
        }
        let store = Store::open(&path).unwrap();
        assert!(
            store
                .add_incoming(&m, PeerId::random(), 3)
                .unwrap()
                .is_none()
        );
        let h = store.history(&name("alice"), 10).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].direction, Direction::In);
    }

    #[test]
    fn history_limit_takes_the_latest_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        for i in 0..5 {
            store
                .add_outgoing(msg("mine", "bob", &format!("out{i}")), 1)
                .unwrap();
            store
                .add_incoming(&msg("bob", "mine", &format!("in{i}")), PeerId::random(), 1)
                .unwrap();
        }
        let h = store.history(&name("bob"), 3).unwrap();
        let texts: Vec<_> = h.iter().map(|m| m.message.text.as_str()).collect();
        assert_eq!(texts, ["in3", "out4", "in4"]);
    }

    #[test]
    fn contacts_and_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let c = Contact {
            name: name("bob"),
            pinned: PeerId::random(),
            added_at: 1,
            key_changed_to: None,
        };
        store.put_contact(&c).unwrap();
        assert_eq!(store.contact(&name("bob")).unwrap(), Some(c));
        assert!(store.remove_contact(&name("bob")).unwrap());
        assert!(store.contacts().unwrap().is_empty());
        assert!(store.set_blocked(&name("eve"), true, 1).unwrap());
        assert!(store.is_blocked(&name("eve")).unwrap());
        assert_eq!(store.blocked().unwrap(), vec![name("eve")]);
        assert!(store.set_blocked(&name("eve"), false, 1).unwrap());
        assert!(!store.is_blocked(&name("eve")).unwrap());
    }
}
