//! Message requests: what people I have not accepted may store here.
//!
//! Anyone who knows my screen name can write to me, and names cost
//! nothing. So a sender I have not accepted (not a contact, nobody I wrote
//! to) gets a small allowance, counted in messages and bytes, until I
//! accept them; all such senders together get another; and below a floor
//! of free space on the disk only the people I accepted are taken in.
//! Over an allowance a message is refused (the sender is told
//! `requests_full`) and nothing of it is stored. Accepting someone (adding
//! them as a contact, or writing to them) takes them out of the requests;
//! declining removes what they sent.

use std::collections::BTreeMap;

use messenger_proto::codec;
use messenger_proto::name::ScreenName;
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    BY_ID, CONTACTS, HISTORY, META, REQUESTS, Raw, Store, StoreError, UNVERIFIED, WROTE_TO, decode,
};

/// What people I have not accepted may store here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Messages one of them may have stored.
    pub per_sender_messages: u32,
    /// Bytes of message text one of them may have stored.
    pub per_sender_bytes: u64,
    /// Messages all of them together may have stored.
    pub all_messages: u32,
    /// Bytes of text all of them together may have stored.
    pub all_bytes: u64,
    /// Below this much free space on the store's disk, only the people I
    /// accepted are taken in.
    pub free_space_floor: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            per_sender_messages: 50,
            per_sender_bytes: 1 << 20,
            all_messages: 500,
            all_bytes: 32 << 20,
            free_space_floor: 256 << 20,
        }
    }
}

/// Why a request was not taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestRefusal {
    /// This sender has as many messages or bytes waiting as it may.
    #[error("this sender has as much waiting as someone not accepted may")]
    Sender,
    /// All senders not accepted together have as much waiting as they may.
    #[error("as much is waiting from people not accepted as is kept")]
    All,
    /// The disk is nearly full: only people accepted are taken in.
    #[error("the disk is nearly full: only people accepted are taken in")]
    Disk,
}

/// What one sender not accepted has stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RequestCount {
    /// Messages.
    pub messages: u32,
    /// Bytes of their text.
    pub bytes: u64,
    /// When the first came (ms since epoch).
    pub since: u64,
}

/// One sender's message request, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRequest {
    /// Who.
    pub name: ScreenName,
    /// What they have stored.
    #[serde(flatten)]
    pub count: RequestCount,
}

/// Marks in META: the people I wrote to were collected from the history
/// (once, for a store from before requests).
const WROTE_TO_FILLED: &str = "wrote_to_filled";

/// Whether `name` is accepted: a contact, or someone I wrote to.
pub(super) fn accepted(txn: &WriteTransaction, name: &ScreenName) -> Result<bool, Raw> {
    Ok(txn.open_table(CONTACTS)?.get(name.as_str())?.is_some()
        || txn.open_table(WROTE_TO)?.get(name.as_str())?.is_some())
}

/// Someone I wrote to (or added) is accepted: no longer a request.
pub(super) fn accept(txn: &WriteTransaction, name: &ScreenName, now: u64) -> Result<(), Raw> {
    let mut wrote_to = txn.open_table(WROTE_TO)?;
    if wrote_to.get(name.as_str())?.is_none() {
        wrote_to.insert(name.as_str(), now)?;
    }
    txn.open_table(REQUESTS)?.remove(name.as_str())?;
    Ok(())
}

/// Counts a message of `bytes` from `name` (not accepted) as a request, if
/// the limits allow; `free` is the room left on the disk, if known.
pub(super) fn admit(
    txn: &WriteTransaction,
    name: &ScreenName,
    bytes: u64,
    now: u64,
    limits: &RequestLimits,
    free: Option<u64>,
) -> Result<Result<(), RequestRefusal>, Raw> {
    if free.is_some_and(|free| free < limits.free_space_floor) {
        return Ok(Err(RequestRefusal::Disk));
    }
    let mut table = txn.open_table(REQUESTS)?;
    let mut mine = RequestCount {
        since: now,
        ..RequestCount::default()
    };
    let (mut all_messages, mut all_bytes) = (0u64, 0u64);
    for entry in table.iter()? {
        let (key, value) = entry?;
        let count: RequestCount = decode(value.value())?;
        all_messages += u64::from(count.messages);
        all_bytes += count.bytes;
        if key.value() == name.as_str() {
            mine = count;
        }
    }
    if mine.messages >= limits.per_sender_messages
        || mine.bytes.saturating_add(bytes) > limits.per_sender_bytes
    {
        return Ok(Err(RequestRefusal::Sender));
    }
    if all_messages >= u64::from(limits.all_messages)
        || all_bytes.saturating_add(bytes) > limits.all_bytes
    {
        return Ok(Err(RequestRefusal::All));
    }
    mine.messages += 1;
    mine.bytes += bytes;
    table.insert(name.as_str(), codec::to_cbor(&mine).as_slice())?;
    Ok(Ok(()))
}

/// A request's message was dropped (its signature did not verify): it
/// no longer counts.
pub(super) fn forget_one(txn: &WriteTransaction, name: &str, bytes: u64) -> Result<(), Raw> {
    let mut table = txn.open_table(REQUESTS)?;
    let Some(count) = table
        .get(name)?
        .map(|v| decode::<RequestCount>(v.value()))
        .transpose()?
    else {
        return Ok(());
    };
    let left = RequestCount {
        messages: count.messages.saturating_sub(1),
        bytes: count.bytes.saturating_sub(bytes),
        ..count
    };
    if left.messages == 0 {
        table.remove(name)?;
    } else {
        table.insert(name, codec::to_cbor(&left).as_slice())?;
    }
    Ok(())
}

/// Collects the people I wrote to from the history, once (a store from
/// before requests knew nothing of them).
pub(super) fn fill_wrote_to(txn: &WriteTransaction) -> Result<(), Raw> {
    let mut meta = txn.open_table(META)?;
    if meta.get(WROTE_TO_FILLED)?.is_some() {
        return Ok(());
    }
    let mut names: BTreeMap<String, u64> = BTreeMap::new();
    for entry in txn.open_table(HISTORY)?.iter()? {
        let (key, value) = entry?;
        let record: super::StoredRecord = decode(value.value())?;
        if record.direction == super::Direction::Out {
            names
                .entry(key.value().0.to_owned())
                .or_insert(record.updated_at);
        }
    }
    let mut wrote_to = txn.open_table(WROTE_TO)?;
    for (name, at) in names {
        wrote_to.insert(name.as_str(), at)?;
    }
    meta.insert(WROTE_TO_FILLED, 1)?;
    Ok(())
}

impl Store {
    /// The requests waiting: who, how many messages and bytes, since when.
    pub fn requests(&self) -> Result<Vec<MessageRequest>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(REQUESTS)?.iter()? {
                let (key, value) = entry?;
                out.push(MessageRequest {
                    name: ScreenName::parse_normal(key.value())
                        .map_err(|e| Raw::Decode(e.to_string()))?,
                    count: decode(value.value())?,
                });
            }
            out.sort_by_key(|r| r.count.since);
            Ok(out)
        })
    }

    /// Declines the request of `name` (everyone's, if none): what they
    /// sent is removed from the history, as if it had never come. Returns
    /// the names declined.
    pub fn decline_requests(
        &self,
        name: Option<&ScreenName>,
    ) -> Result<Vec<ScreenName>, StoreError> {
        self.write(|txn| {
            let names: Vec<String> = match name {
                Some(name) => txn
                    .open_table(REQUESTS)?
                    .get(name.as_str())?
                    .map(|_| vec![name.as_str().to_owned()])
                    .unwrap_or_default(),
                None => {
                    let mut all = Vec::new();
                    for entry in txn.open_table(REQUESTS)?.iter()? {
                        all.push(entry?.0.value().to_owned());
                    }
                    all
                }
            };
            let mut declined = Vec::new();
            for name in names {
                let mut messages: Vec<(u64, Vec<u8>)> = Vec::new();
                for entry in txn
                    .open_table(HISTORY)?
                    .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))?
                {
                    let (key, value) = entry?;
                    let record: super::StoredRecord = decode(value.value())?;
                    if record.direction == super::Direction::In {
                        messages.push((key.value().1, value.value().to_vec()));
                    }
                }
                for (seq, _) in &messages {
                    let stored = Self::load_record(txn, &name, *seq)?;
                    if let Some(stored) = stored {
                        txn.open_table(BY_ID)?
                            .remove(stored.message.id.0.as_slice())?;
                    }
                    txn.open_table(UNVERIFIED)?.remove((name.as_str(), *seq))?;
                    Self::remove(txn, &name, *seq)?;
                }
                super::unread::forget(txn, &name)?;
                txn.open_table(REQUESTS)?.remove(name.as_str())?;
                declined
                    .push(ScreenName::parse_normal(&name).map_err(|e| Raw::Decode(e.to_string()))?);
            }
            Ok(declined)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Contact, Received};
    use libp2p::PeerId;
    use messenger_proto::Identity;
    use messenger_proto::chat::{Message, MessageId};
    use messenger_proto::signed::{MESSAGE_CONTEXT, Signed};

    fn name(s: &str) -> ScreenName {
        ScreenName::parse(s).unwrap()
    }

    struct Sender(Identity);

    impl Sender {
        fn new() -> Self {
            Self(Identity::generate().unwrap())
        }

        /// Added by `store`'s user as the contact `as_name`.
        fn is_contact_of(&self, store: &Store, as_name: &str) {
            store
                .put_contact(&Contact {
                    name: name(as_name),
                    pinned: self.0.peer_id(),
                    added_at: 1,
                    key_changed_to: None,
                    auto_accept_below: None,
                })
                .unwrap();
        }

        /// Receives a message of `len` bytes from `from` into `store`.
        fn send(&self, store: &Store, from: &str, len: usize, limits: &RequestLimits) -> Received {
            let m = Message {
                id: MessageId::random(),
                from: name(from),
                to: name("alice"),
                sent_at: 1,
                text: "x".repeat(len),
                file: None,
                invite: None,
            };
            let signed = Signed::sign(&self.0, MESSAGE_CONTEXT, &m);
            let received = store
                .receive(&m, signed, self.0.peer_id(), 1, Some(limits))
                .unwrap();
            if let Received::Kept { .. } = received {
                store.settle_incoming(&m.id, true, 2).unwrap();
            }
            received
        }
    }

    fn kept(r: &Received) -> Option<bool> {
        match r {
            Received::Kept { request, .. } => Some(*request),
            _ => None,
        }
    }

    fn limits() -> RequestLimits {
        RequestLimits {
            per_sender_messages: 3,
            per_sender_bytes: 1_000,
            all_messages: 5,
            all_bytes: 10_000,
            free_space_floor: 0,
        }
    }

    #[test]
    fn strangers_get_an_allowance_each_and_together_and_contacts_none() {
        let store = Store::in_memory().unwrap();
        let (mallory, eve, bob) = (Sender::new(), Sender::new(), Sender::new());
        let limits = limits();
        for _ in 0..3 {
            assert_eq!(
                kept(&mallory.send(&store, "mallory", 10, &limits)),
                Some(true)
            );
        }
        assert!(matches!(
            mallory.send(&store, "mallory", 10, &limits),
            Received::Refused(RequestRefusal::Sender)
        ));
        // Bytes count too: one message near the bound, then no more.
        assert_eq!(kept(&eve.send(&store, "eve", 700, &limits)), Some(true));
        assert!(matches!(
            eve.send(&store, "eve", 700, &limits),
            Received::Refused(RequestRefusal::Sender)
        ));
        assert_eq!(kept(&eve.send(&store, "eve", 10, &limits)), Some(true));
        // Five in all, whoever they come from.
        assert!(matches!(
            Sender::new().send(&store, "trudy", 10, &limits),
            Received::Refused(RequestRefusal::All)
        ));
        // A contact is never a request, however full the requests are.
        bob.is_contact_of(&store, "bob");
        for _ in 0..10 {
            assert_eq!(kept(&bob.send(&store, "bob", 900, &limits)), Some(false));
        }
        let mut waiting: Vec<(String, u32)> = store
            .requests()
            .unwrap()
            .into_iter()
            .map(|r| (r.name.to_string(), r.count.messages))
            .collect();
        waiting.sort();
        assert_eq!(waiting, [("eve".to_owned(), 2), ("mallory".to_owned(), 3)]);
    }

    #[test]
    fn accepting_takes_a_sender_out_and_declining_removes_what_it_sent() {
        let store = Store::in_memory().unwrap();
        let (carol, dave) = (Sender::new(), Sender::new());
        let limits = RequestLimits {
            all_messages: 100,
            ..limits()
        };
        for _ in 0..3 {
            carol.send(&store, "carol", 10, &limits);
            dave.send(&store, "dave", 10, &limits);
        }
        // Writing to carol accepts her: no longer a request, no bound.
        let reply = Message {
            id: MessageId::random(),
            from: name("alice"),
            to: name("carol"),
            sent_at: 1,
            text: "hi carol".into(),
            file: None,
            invite: None,
        };
        store.add_outgoing(reply, 3).unwrap();
        assert_eq!(store.requests().unwrap().len(), 1);
        assert_eq!(kept(&carol.send(&store, "carol", 10, &limits)), Some(false));
        // Declining dave removes what he sent, and his count.
        assert_eq!(store.history(&name("dave"), 10, None).unwrap().len(), 3);
        assert_eq!(
            store.decline_requests(Some(&name("dave"))).unwrap(),
            [name("dave")]
        );
        assert!(store.history(&name("dave"), 10, None).unwrap().is_empty());
        assert!(store.requests().unwrap().is_empty());
        assert_eq!(kept(&dave.send(&store, "dave", 10, &limits)), Some(true));
        assert_eq!(store.decline_requests(None).unwrap(), [name("dave")]);
    }

    #[test]
    fn below_the_free_space_floor_only_the_accepted_are_taken_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), false).unwrap();
        let limits = RequestLimits {
            free_space_floor: u64::MAX,
            ..limits()
        };
        assert!(matches!(
            Sender::new().send(&store, "mallory", 10, &limits),
            Received::Refused(RequestRefusal::Disk)
        ));
        let bob = Sender::new();
        bob.is_contact_of(&store, "bob");
        assert_eq!(kept(&bob.send(&store, "bob", 10, &limits)), Some(false));
    }

    #[test]
    fn a_forged_request_does_not_count() {
        let store = Store::in_memory().unwrap();
        let mallory = Sender::new();
        let limits = limits();
        let m = Message {
            id: MessageId::random(),
            from: name("mallory"),
            to: name("alice"),
            sent_at: 1,
            text: "forged".into(),
            file: None,
            invite: None,
        };
        let signed = Signed::sign(&mallory.0, MESSAGE_CONTEXT, &m);
        store
            .receive(&m, signed, PeerId::random(), 1, Some(&limits))
            .unwrap();
        assert_eq!(store.requests().unwrap().len(), 1);
        store.settle_incoming(&m.id, false, 2).unwrap();
        assert!(store.requests().unwrap().is_empty());
    }
}
