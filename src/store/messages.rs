//! Messages: one conversation per key range of the history, bodies kept
//! apart in pieces, the outbox, and received messages until their
//! signature is checked.

use libp2p::PeerId;
use messenger_proto::chat::{Message, MessageId};
use messenger_proto::codec;
use messenger_proto::name::ScreenName;
use messenger_proto::signed::Signed;
use redb::{ReadableTable, WriteTransaction};

use super::{
    BODIES, BODY_PIECE, BY_ID, Direction, HISTORY, META, MessageState, NEXT_SEQ, OUTBOX, Raw,
    Received, RequestLimits, Store, StoreError, StoredMessage, StoredRecord, UNVERIFIED, decode,
    invitations, read_body, requests, transfers, unread,
};

impl Store {
    pub(super) fn next_seq(txn: &WriteTransaction) -> Result<u64, Raw> {
        let mut meta = txn.open_table(META)?;
        let seq = meta.get(NEXT_SEQ)?.map(|v| v.value()).unwrap_or(1);
        meta.insert(NEXT_SEQ, seq + 1)?;
        Ok(seq)
    }

    /// Keeps a new message: its body in pieces, then its record.
    pub(super) fn put(txn: &WriteTransaction, stored: &StoredMessage) -> Result<(), Raw> {
        let body = match &stored.signed {
            Some(signed) => std::borrow::Cow::Borrowed(signed.payload.as_slice()),
            None => std::borrow::Cow::Owned(codec::to_cbor(&stored.message)),
        };
        let len = u32::try_from(body.len())
            .map_err(|_| Raw::Decode("a message body of more than 4 GiB".into()))?;
        let mut bodies = txn.open_table(BODIES)?;
        for (i, piece) in body.chunks(BODY_PIECE).enumerate() {
            bodies.insert((stored.seq, i as u32), piece)?;
        }
        Self::put_record(txn, stored.peer(), &StoredRecord::of(stored, len))
    }

    /// Writes a message's record (its body, kept apart, is not touched).
    pub(super) fn put_record(
        txn: &WriteTransaction,
        peer: &ScreenName,
        record: &StoredRecord,
    ) -> Result<(), Raw> {
        txn.open_table(HISTORY)?.insert(
            (peer.as_str(), record.seq),
            codec::to_cbor(record).as_slice(),
        )?;
        Ok(())
    }

    /// Removes a message's record and its body.
    pub(super) fn remove(txn: &WriteTransaction, peer: &str, seq: u64) -> Result<(), Raw> {
        txn.open_table(HISTORY)?.remove((peer, seq))?;
        txn.open_table(BODIES)?
            .retain_in((seq, 0)..=(seq, u32::MAX), |_, _| false)?;
        Ok(())
    }

    pub(super) fn by_id(
        txn: &WriteTransaction,
        id: &MessageId,
    ) -> Result<Option<StoredMessage>, Raw> {
        let by_id = txn.open_table(BY_ID)?;
        let Some(key) = by_id.get(id.0.as_slice())? else {
            return Ok(None);
        };
        let (name, seq) = key.value();
        let history = txn.open_table(HISTORY)?;
        let bodies = txn.open_table(BODIES)?;
        let v = history.get((name, seq))?;
        v.map(|v| decode::<StoredRecord>(v.value())?.load(|seq, len| read_body(&bodies, seq, len)))
            .transpose()
    }

    /// Stores a message I am sending, queued for delivery. The id decides:
    /// a message whose id is stored already is not stored again, and the
    /// stored one is returned with `false` (a command retried after its
    /// client died stores its message once).
    pub fn add_outgoing(
        &self,
        message: Message,
        now: u64,
    ) -> Result<(StoredMessage, bool), StoreError> {
        self.write(|txn| Self::add_outgoing_in(txn, message, now))
    }

    pub(super) fn add_outgoing_in(
        txn: &WriteTransaction,
        message: Message,
        now: u64,
    ) -> Result<(StoredMessage, bool), Raw> {
        {
            if let Some(existing) = Self::by_id(txn, &message.id)? {
                return Ok((existing, false));
            }
            let seq = Self::next_seq(txn)?;
            let stored = StoredMessage {
                seq,
                message,
                direction: Direction::Out,
                state: MessageState::Queued,
                updated_at: now,
                error: None,
                peer_id: None,
                signed: None,
            };
            Self::put(txn, &stored)?;
            // Someone I write to is accepted.
            requests::accept(txn, &stored.message.to, now)?;
            let to = stored.message.to.as_str();
            txn.open_table(BY_ID)?
                .insert(stored.message.id.0.as_slice(), (to, seq))?;
            txn.open_table(OUTBOX)?.insert((to, seq), ())?;
            Ok((stored, true))
        }
    }

    /// Stores a received message, signature not yet checked, unless its
    /// id was seen before. Returns the stored message if it is new; it is
    /// not shown (history leaves it out) until [`Store::settle_incoming`].
    /// Counts nothing as a request (see [`Store::receive`]).
    pub fn add_incoming(
        &self,
        message: &Message,
        signed: Signed,
        sender: PeerId,
        now: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        match self.receive(message, signed, sender, now, None)? {
            Received::Kept { stored, .. } => Ok(Some(*stored)),
            Received::Repeat | Received::Refused(_) => Ok(None),
        }
    }

    /// Stores a received message as [`Store::add_incoming`] does; with
    /// `limits`, one from a sender not accepted (not a contact, nobody I
    /// wrote to) is a request, taken in only within those limits.
    pub fn receive(
        &self,
        message: &Message,
        signed: Signed,
        sender: PeerId,
        now: u64,
        limits: Option<&RequestLimits>,
    ) -> Result<Received, StoreError> {
        self.write(|txn| {
            let mut by_id = txn.open_table(BY_ID)?;
            if by_id.get(message.id.0.as_slice())?.is_some() {
                return Ok(Received::Repeat);
            }
            let request = match limits {
                Some(limits) if !requests::accepted(txn, &message.from)? => {
                    let bytes = signed.payload.len() as u64;
                    // The disk's room is asked only for a request.
                    let free = self.free_space();
                    if let Err(refusal) =
                        requests::admit(txn, &message.from, bytes, now, limits, free)?
                    {
                        return Ok(Received::Refused(refusal));
                    }
                    true
                }
                _ => false,
            };
            let seq = Self::next_seq(txn)?;
            let from = message.from.as_str();
            by_id.insert(message.id.0.as_slice(), (from, seq))?;
            let stored = StoredMessage {
                seq,
                message: message.clone(),
                direction: Direction::In,
                state: MessageState::Unverified,
                updated_at: now,
                error: None,
                peer_id: Some(sender),
                signed: Some(signed),
            };
            Self::put(txn, &stored)?;
            txn.open_table(UNVERIFIED)?.insert((from, seq), ())?;
            Ok(Received::Kept {
                stored: Box::new(stored),
                request,
            })
        })
    }

    /// Message `seq` of the conversation with `peer`, read within `txn`.
    pub(super) fn load_record(
        txn: &WriteTransaction,
        peer: &str,
        seq: u64,
    ) -> Result<Option<StoredMessage>, Raw> {
        let history = txn.open_table(HISTORY)?;
        let bodies = txn.open_table(BODIES)?;
        let v = history.get((peer, seq))?;
        v.map(|v| decode::<StoredRecord>(v.value())?.load(|seq, len| read_body(&bodies, seq, len)))
            .transpose()
    }

    /// The verdict on a received message's signature: a good one makes it
    /// received (and returns it, to be shown); a bad one removes it, as if
    /// it had never come. `None` when there is nothing (left) to settle.
    ///
    /// Not waited for on disk (the message's own write was): a crash that
    /// undoes a verdict leaves the message to be checked again.
    pub fn settle_incoming(
        &self,
        id: &MessageId,
        good: bool,
        now: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        self.write_lazily(|txn| {
            let mut by_id = txn.open_table(BY_ID)?;
            let Some((name, seq)) = by_id.get(id.0.as_slice())?.map(|k| {
                let (name, seq) = k.value();
                (name.to_owned(), seq)
            }) else {
                return Ok(None);
            };
            let mut unverified = txn.open_table(UNVERIFIED)?;
            if unverified.remove((name.as_str(), seq))?.is_none() {
                return Ok(None);
            }
            if !good {
                let body_len = txn
                    .open_table(HISTORY)?
                    .get((name.as_str(), seq))?
                    .map(|v| decode::<StoredRecord>(v.value()))
                    .transpose()?
                    .and_then(|r| r.body_len);
                if let Some(len) = body_len {
                    requests::forget_one(txn, &name, u64::from(len))?;
                }
                Self::remove(txn, &name, seq)?;
                by_id.remove(id.0.as_slice())?;
                return Ok(None);
            }
            let Some(bytes) = txn
                .open_table(HISTORY)?
                .get((name.as_str(), seq))?
                .map(|v| v.value().to_vec())
            else {
                return Ok(None);
            };
            let mut record: StoredRecord = decode(&bytes)?;
            record.state = MessageState::Received;
            record.updated_at = now;
            let peer = ScreenName::parse_normal(&name).map_err(|e| Raw::Decode(e.to_string()))?;
            Self::put_record(txn, &peer, &record)?;
            let bodies = txn.open_table(BODIES)?;
            let stored = record.load(|seq, len| read_body(&bodies, seq, len))?;
            drop(bodies);
            unread::counted(txn, &name)?;
            // A verified offer becomes a transfer waiting for an answer.
            transfers::offered_to_me(txn, &stored, now)?;
            invitations::told_me(txn, &stored)?;
            Ok(Some(stored))
        })
    }

    /// Received messages whose signature is still to be checked (the
    /// client stopped between keeping one and checking it).
    pub fn unverified(&self) -> Result<Vec<StoredMessage>, StoreError> {
        self.read(|txn| {
            let unverified = txn.open_table(UNVERIFIED)?;
            let history = txn.open_table(HISTORY)?;
            let bodies = txn.open_table(BODIES)?;
            let mut out = Vec::new();
            for entry in unverified.iter()? {
                let (k, _) = entry?;
                let (name, seq) = k.value();
                if let Some(v) = history.get((name, seq))? {
                    out.push(
                        decode::<StoredRecord>(v.value())?
                            .load(|seq, len| read_body(&bodies, seq, len))?,
                    );
                }
            }
            Ok(out)
        })
    }

    /// A message by id.
    pub fn message(&self, id: &MessageId) -> Result<Option<StoredMessage>, StoreError> {
        self.read(|txn| {
            let by_id = txn.open_table(BY_ID)?;
            let Some(key) = by_id.get(id.0.as_slice())? else {
                return Ok(None);
            };
            let (name, seq) = key.value();
            let history = txn.open_table(HISTORY)?;
            let bodies = txn.open_table(BODIES)?;
            let v = history.get((name, seq))?;
            v.map(|v| {
                decode::<StoredRecord>(v.value())?.load(|seq, len| read_body(&bodies, seq, len))
            })
            .transpose()
        })
    }

    /// Changes the state of my messages; delivered and failed ones leave
    /// the outbox. `peer` records the key that acknowledged. Returns the
    /// messages whose state changed.
    pub fn set_state(
        &self,
        ids: &[MessageId],
        state: MessageState,
        error: Option<&str>,
        peer: Option<PeerId>,
        now: u64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.write(|txn| {
            let by_id = txn.open_table(BY_ID)?;
            let mut history = txn.open_table(HISTORY)?;
            let bodies = txn.open_table(BODIES)?;
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut changed = Vec::new();
            for id in ids {
                let Some(key) = by_id.get(id.0.as_slice())? else {
                    continue;
                };
                let (name, seq) = key.value();
                let Some(bytes) = history.get((name, seq))?.map(|v| v.value().to_vec()) else {
                    continue;
                };
                let mut record: StoredRecord = decode(&bytes)?;
                if record.direction != Direction::Out || record.state == state {
                    continue;
                }
                // Delivered is final: a late failure report does not undo it.
                if record.state == MessageState::Delivered {
                    continue;
                }
                record.state = state;
                record.updated_at = now;
                record.error = error.map(str::to_owned);
                if peer.is_some() {
                    record.peer_id = peer;
                }
                history.insert((name, seq), codec::to_cbor(&record).as_slice())?;
                if matches!(state, MessageState::Delivered | MessageState::Failed) {
                    outbox.remove((name, seq))?;
                }
                changed.push(record.load(|seq, len| read_body(&bodies, seq, len))?);
            }
            Ok(changed)
        })
    }

    /// What is still to be delivered, in the order it was written; for
    /// one recipient or everyone.
    pub fn outbox(&self, to: Option<&ScreenName>) -> Result<Vec<StoredMessage>, StoreError> {
        self.read(|txn| {
            let outbox = txn.open_table(OUTBOX)?;
            let history = txn.open_table(HISTORY)?;
            let bodies = txn.open_table(BODIES)?;
            let mut keys: Vec<(String, u64)> = Vec::new();
            let range = match to {
                Some(name) => outbox.range((name.as_str(), 0)..=(name.as_str(), u64::MAX))?,
                None => outbox.iter()?,
            };
            for entry in range {
                let (k, _) = entry?;
                let (name, seq) = k.value();
                keys.push((name.to_owned(), seq));
            }
            let mut out = Vec::with_capacity(keys.len());
            for (name, seq) in keys {
                if let Some(v) = history.get((name.as_str(), seq))? {
                    out.push(
                        decode::<StoredRecord>(v.value())?
                            .load(|seq, len| read_body(&bodies, seq, len))?,
                    );
                }
            }
            out.sort_by_key(|m: &StoredMessage| m.seq);
            Ok(out)
        })
    }

    /// The last `limit` messages of the conversation with `peer` (of those
    /// before `before`, if given), oldest first.
    pub fn history(
        &self,
        peer: &ScreenName,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.read(|txn| {
            let history = txn.open_table(HISTORY)?;
            let bodies = txn.open_table(BODIES)?;
            let mut out = Vec::new();
            let end = before.unwrap_or(u64::MAX);
            for entry in history
                .range((peer.as_str(), 0)..(peer.as_str(), end))?
                .rev()
            {
                if out.len() == limit {
                    break;
                }
                let record: StoredRecord = decode(entry?.1.value())?;
                // Not shown before its signature is checked.
                if record.state != MessageState::Unverified {
                    out.push(record.load(|seq, len| read_body(&bodies, seq, len))?);
                }
            }
            out.reverse();
            Ok(out)
        })
    }
}
