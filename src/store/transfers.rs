//! File transfers: the files I offered (and where they are on my disk) and
//! the files offered to me (and where they go), keyed by the offer's
//! message id. An offer's message is stored with the rest of the history;
//! this is what its transfer has come to.
//!
//! The bytes received so far are not counted here: they are the partial
//! file itself ([`Transfer::partial_path`]), whose length is the truth
//! after any crash.

use std::path::{Path, PathBuf};

use libp2p::PeerId;
use messenger_proto::chat::{Message, MessageId};
use messenger_proto::codec;
use messenger_proto::file::FileOffer;
use messenger_proto::name::ScreenName;
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Direction, Raw, Store, StoreError, StoredMessage, TRANSFERS, decode};

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    /// Offered; the recipient has not answered (yet).
    Offered,
    /// Accepted: the recipient fetches it (now, or when the sender is
    /// reachable again).
    Accepted,
    /// Received whole, its hash checked, saved under its final name.
    Completed,
    /// The recipient said no.
    Declined,
    /// Stopped for good (a hash mismatch, the file gone), or for now (a
    /// full disk: accepting again resumes it).
    Failed,
}

impl std::fmt::Display for TransferState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransferState::Offered => "offered",
            TransferState::Accepted => "accepted",
            TransferState::Completed => "completed",
            TransferState::Declined => "declined",
            TransferState::Failed => "failed",
        })
    }
}

/// One file offered, by me or to me.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The offer's message id.
    pub id: MessageId,
    /// I offered it (`Out`) or was offered it (`In`).
    pub direction: Direction,
    /// The other side.
    pub peer: ScreenName,
    /// What was offered.
    pub offer: FileOffer,
    /// Its state.
    pub state: TransferState,
    /// Mine: the file I offered. Theirs: the file saved, once completed.
    pub path: Option<PathBuf>,
    /// Theirs: the directory it is saved into, once accepted.
    pub dir: Option<PathBuf>,
    /// Mine: the file's modification time when offered (ns since the
    /// epoch), to notice it changed.
    pub modified: Option<u64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The key at the other end: the sender's for theirs; for mine, the
    /// recipient's, once the offer was acknowledged.
    pub peer_id: Option<PeerId>,
    /// When the state last changed (ms since epoch).
    pub updated_at: u64,
    /// When it completed (ms since epoch).
    pub completed_at: Option<u64>,
    /// When the bytes started to come (ms since epoch), for the rate.
    pub started_at: Option<u64>,
}

impl Transfer {
    /// Where the bytes of theirs are gathered until they are checked: a
    /// hidden file beside where it will be saved, named by the offer.
    pub fn partial_path(&self) -> Option<PathBuf> {
        self.dir.as_deref().map(|dir| partial_path(dir, &self.id))
    }

    /// What became of it, as a sentence for people.
    pub fn describe(&self) -> String {
        let (name, peer) = (&self.offer.name, &self.peer);
        match (self.state, self.direction) {
            (TransferState::Offered, Direction::In) => format!("{peer} offers {name}"),
            (TransferState::Offered, Direction::Out) => format!("offered {name} to {peer}"),
            (TransferState::Accepted, Direction::In) => format!("fetching {name} from {peer}"),
            (TransferState::Accepted, Direction::Out) => format!("{peer} accepted {name}"),
            (TransferState::Completed, Direction::In) => format!(
                "received {name} from {peer}: saved as {}",
                self.path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            (TransferState::Completed, Direction::Out) => {
                format!("{peer} received {name} whole and checked")
            }
            (TransferState::Declined, Direction::In) => format!("declined {name} from {peer}"),
            (TransferState::Declined, Direction::Out) => format!("{peer} declined {name}"),
            (TransferState::Failed, _) => format!(
                "{name} ({peer}) failed: {}",
                self.error.as_deref().unwrap_or("no reason given")
            ),
        }
    }

    /// Whether it is offered to me and I may still answer it (accept,
    /// decline, or accept again to resume).
    pub fn awaits_me(&self) -> bool {
        self.direction == Direction::In
            && matches!(
                self.state,
                TransferState::Offered | TransferState::Accepted | TransferState::Failed
            )
    }
}

/// The partial file of offer `id` received into `dir`.
pub fn partial_path(dir: &Path, id: &MessageId) -> PathBuf {
    dir.join(format!(".{id}.part"))
}

fn put(txn: &WriteTransaction, transfer: &Transfer) -> Result<(), Raw> {
    txn.open_table(TRANSFERS)?.insert(
        transfer.id.0.as_slice(),
        codec::to_cbor(transfer).as_slice(),
    )?;
    Ok(())
}

/// A verified message that offers a file: its transfer, offered to me
/// (unless it exists already).
pub(super) fn offered_to_me(
    txn: &WriteTransaction,
    stored: &StoredMessage,
    now: u64,
) -> Result<(), Raw> {
    let Some(offer) = &stored.message.file else {
        return Ok(());
    };
    if txn
        .open_table(TRANSFERS)?
        .get(stored.message.id.0.as_slice())?
        .is_some()
    {
        return Ok(());
    }
    put(
        txn,
        &Transfer {
            id: stored.message.id,
            direction: Direction::In,
            peer: stored.message.from.clone(),
            offer: offer.clone(),
            state: TransferState::Offered,
            path: None,
            dir: None,
            modified: None,
            error: None,
            peer_id: stored.peer_id,
            updated_at: now,
            completed_at: None,
            started_at: None,
        },
    )
}

impl Store {
    /// Stores a message offering the file at `path` (modified at
    /// `modified`), queued for delivery, and its transfer; once, by id,
    /// like [`Store::add_outgoing`].
    pub fn add_outgoing_file(
        &self,
        message: Message,
        path: PathBuf,
        modified: Option<u64>,
        now: u64,
    ) -> Result<(StoredMessage, bool), StoreError> {
        self.write(|txn| {
            let Some(offer) = message.file.clone() else {
                return Err(Raw::Decode("a file offer without a file".into()));
            };
            let (stored, new) = Self::add_outgoing_in(txn, message, now)?;
            if new {
                put(
                    txn,
                    &Transfer {
                        id: stored.message.id,
                        direction: Direction::Out,
                        peer: stored.message.to.clone(),
                        offer,
                        state: TransferState::Offered,
                        path: Some(path),
                        dir: None,
                        modified,
                        error: None,
                        peer_id: None,
                        updated_at: now,
                        completed_at: None,
                        started_at: None,
                    },
                )?;
            }
            Ok((stored, new))
        })
    }

    /// A transfer by its offer's id.
    pub fn transfer(&self, id: &MessageId) -> Result<Option<Transfer>, StoreError> {
        self.read(|txn| {
            let t = txn.open_table(TRANSFERS)?;
            let v = t.get(id.0.as_slice())?;
            v.map(|v| decode(v.value())).transpose()
        })
    }

    /// Every transfer, oldest first.
    pub fn transfers(&self) -> Result<Vec<Transfer>, StoreError> {
        self.read(|txn| {
            let mut out: Vec<Transfer> = Vec::new();
            for entry in txn.open_table(TRANSFERS)?.iter()? {
                out.push(decode(entry?.1.value())?);
            }
            out.sort_by_key(|t| t.updated_at);
            Ok(out)
        })
    }

    /// Fails every transfer with `peer` that is not settled, both ways,
    /// with `reason`; returns them as they are now.
    pub fn fail_transfers_with(
        &self,
        peer: &ScreenName,
        reason: &str,
        now: u64,
    ) -> Result<Vec<Transfer>, StoreError> {
        self.write(|txn| {
            let table = txn.open_table(TRANSFERS)?;
            let mut open: Vec<Transfer> = Vec::new();
            for entry in table.iter()? {
                let transfer: Transfer = decode(entry?.1.value())?;
                let settled = matches!(
                    transfer.state,
                    TransferState::Completed | TransferState::Declined | TransferState::Failed
                );
                if transfer.peer == *peer && !settled {
                    open.push(transfer);
                }
            }
            drop(table);
            for transfer in &mut open {
                transfer.state = TransferState::Failed;
                transfer.error = Some(reason.to_owned());
                transfer.updated_at = now;
                put(txn, transfer)?;
            }
            Ok(open)
        })
    }

    /// Changes a transfer with `change` (which says whether it changed
    /// anything); returns it as it is now, `None` if there is none.
    pub fn update_transfer(
        &self,
        id: &MessageId,
        now: u64,
        change: impl FnOnce(&mut Transfer) -> bool,
    ) -> Result<Option<Transfer>, StoreError> {
        self.write(|txn| {
            let current = {
                let t = txn.open_table(TRANSFERS)?;
                let v = t.get(id.0.as_slice())?;
                v.map(|v| decode::<Transfer>(v.value())).transpose()?
            };
            let Some(mut transfer) = current else {
                return Ok(None);
            };
            if change(&mut transfer) {
                transfer.updated_at = now;
                put(txn, &transfer)?;
            }
            Ok(Some(transfer))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_proto::file::ContentHash;
    use messenger_proto::signed::Signed;

    fn offer_message(from: &str, to: &str) -> Message {
        Message {
            id: MessageId::random(),
            from: ScreenName::parse(from).unwrap(),
            to: ScreenName::parse(to).unwrap(),
            sent_at: 1,
            text: "offers a.txt (3 bytes)".into(),
            file: Some(FileOffer {
                name: "a.txt".into(),
                size: 3,
                hash: ContentHash([1; 32]),
            }),
            invite: None,
        }
    }

    #[test]
    fn an_offer_is_a_transfer_on_both_sides_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messenger.redb");
        let message = offer_message("alice", "bob");
        let id = message.id;
        {
            let store = Store::open(&path, false).unwrap();
            let (_, new) = store
                .add_outgoing_file(message.clone(), "/tmp/a.txt".into(), Some(5), 10)
                .unwrap();
            assert!(new);
            let (_, again) = store
                .add_outgoing_file(message.clone(), "/tmp/a.txt".into(), Some(5), 11)
                .unwrap();
            assert!(!again, "stored once");
        }
        let store = Store::open(&path, true).unwrap();
        let mine = store.transfer(&id).unwrap().unwrap();
        assert_eq!(mine.direction, Direction::Out);
        assert_eq!(mine.state, TransferState::Offered);
        assert_eq!(mine.path.as_deref(), Some(Path::new("/tmp/a.txt")));

        // The other side: only a verified offer becomes a transfer.
        let theirs = Store::in_memory().unwrap();
        let signed = Signed {
            payload: codec::to_cbor(&message),
            signature: [0; 64].to_vec(),
        };
        let sender = PeerId::random();
        theirs.add_incoming(&message, signed, sender, 20).unwrap();
        assert!(theirs.transfer(&id).unwrap().is_none());
        theirs.settle_incoming(&id, true, 21).unwrap();
        let t = theirs.transfer(&id).unwrap().unwrap();
        assert_eq!(t.direction, Direction::In);
        assert_eq!(t.peer.as_str(), "alice");
        assert_eq!(t.peer_id, Some(sender));
        let t = theirs
            .update_transfer(&id, 30, |t| {
                t.state = TransferState::Accepted;
                t.dir = Some("/downloads".into());
                true
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            t.partial_path().unwrap(),
            Path::new(&format!("/downloads/.{id}.part"))
        );
        assert_eq!(theirs.transfers().unwrap(), vec![t]);
    }
}
