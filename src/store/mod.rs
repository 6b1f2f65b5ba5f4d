//! The home's store: contacts with pinned keys, blocked names, and every
//! message sent or received with its state. One redb file, written only by
//! the one process that owns the home; every change is committed durably
//! before it is acted on (a message is stored before it is sent, and before
//! it is acknowledged).
//!
//! [`Store`] is plain synchronous code; [`StoreHandle`] runs it on a thread
//! of its own, the one owner of the database, which the rest of the client
//! reaches through a channel. That thread also gets the database back after
//! a failed write (a full disk, say): redb refuses every later operation
//! after one I/O error, so the thread reopens the file.
//!
//! A damaged file is reported as such and never replaced: opening refuses
//! an empty file in a home that is in use, and a file redb cannot read,
//! whether redb answers with an error or panics.

mod handle;
mod invitations;
mod requests;
mod transfers;
mod unread;

use std::io;
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use messenger_proto::chat::{Message, MessageId};
use messenger_proto::codec::{self, CodecError};
use messenger_proto::name::ScreenName;
use messenger_proto::signed::Signed;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

pub use handle::{StoreHandle, StoreThread};
pub use invitations::{Invitation, InvitedMe};
pub use requests::{MessageRequest, RequestCount, RequestLimits, RequestRefusal};
pub use transfers::{Transfer, TransferState, partial_path};
pub use unread::Unread;

const CONTACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("contacts");
const BLOCKED: TableDefinition<&str, u64> = TableDefinition::new("blocked");
/// (peer name, sequence) → message: one conversation is one key range.
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
/// (sequence, piece) → the body of a message, in pieces of at most
/// [`BODY_PIECE`] bytes: a received message's signed payload, or the
/// CBOR of one of mine. Kept apart from its record (in [`HISTORY`]) so
/// that the body is written once, whatever becomes of the message's state,
/// and in pieces that each fill a page of the file nearly whole: redb
/// gives a value larger than a page a region rounded up to a power of two
/// of pages (a 64 KiB text took 128 KiB), and a received text kept both as
/// the message and inside its signed payload was on disk twice.
const BODIES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("bodies");
/// message id → (peer name, sequence): finds a message, and drops repeats.
const BY_ID: TableDefinition<&[u8], (&str, u64)> = TableDefinition::new("by_id");
/// (recipient, sequence) → (): what is still to be delivered, in order.
const OUTBOX: TableDefinition<(&str, u64), ()> = TableDefinition::new("outbox");
/// (sender, sequence) → (): received messages whose signature is not
/// checked yet (kept and acknowledged first; shown only once checked).
const UNVERIFIED: TableDefinition<(&str, u64), ()> = TableDefinition::new("unverified");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// message id of an offer → transfer: the files I offered and was offered.
const TRANSFERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("transfers");
/// Invitations to connect, by "name:port".
const INVITATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("invitations");
/// Invitations others told me of, by "name:port".
const INVITED_ME: TableDefinition<&str, &[u8]> = TableDefinition::new("invited_me");
/// Senders not accepted yet → what they have stored (see [`requests`]).
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
/// People I wrote to → when first: accepted, no longer requests.
const WROTE_TO: TableDefinition<&str, u64> = TableDefinition::new("wrote_to");
/// Conversation → received messages not read yet (see [`unread`]).
const UNREAD: TableDefinition<&str, u64> = TableDefinition::new("unread");
const NEXT_SEQ: &str = "next_seq";

/// The largest piece of a body: with its key and redb's bookkeeping, one
/// piece fills a 4 KiB page to 98%, alone (two never fit in one).
const BODY_PIECE: usize = 4000;

/// Why the store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process has the home's store open.
    #[error(
        "the store {} is in use by another process of this home's client",
        .0.display()
    )]
    InUse(PathBuf),
    /// The file cannot be read as a store. Nothing was changed.
    #[error(
        "the store {} is damaged ({detail}); nothing in it was changed. Move it aside \
         (e.g. `mv {} {}.damaged`) to start again with an empty history, or put back a backup",
        .path.display(), .path.display(), .path.display()
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The disk holding the store is full. What was stored before is kept.
    #[error(
        "no space left on the device holding {}: nothing new could be stored \
         (what was stored before is kept); free some space and try again",
        .dir.display()
    )]
    DiskFull {
        /// The directory of the store (the home).
        dir: PathBuf,
    },
    /// Another failure of the disk or the file.
    #[error("the store {} cannot be used: {detail}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The store's thread has stopped (the client is shutting down).
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// Whether the database must be reopened before it is used again,
    /// after redb failed with this: it refuses everything after an I/O
    /// error.
    fn poisons(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. } | StoreError::Io { .. })
    }
}

/// A failure inside the store, before it is told where (the path).
#[derive(Debug)]
enum Raw {
    Db(redb::Error),
    Decode(String),
}

macro_rules! raw_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Raw {
            fn from(e: $t) -> Self {
                Raw::Db(e.into())
            }
        }
    )*};
}
raw_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<CodecError> for Raw {
    fn from(e: CodecError) -> Self {
        Raw::Decode(e.to_string())
    }
}

/// An I/O error on the store's file: a full disk says so, and so does a
/// file that is not what it should be.
fn io_error(path: &Path, e: &io::Error) -> StoreError {
    if e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
        return StoreError::DiskFull {
            dir: path.parent().unwrap_or(path).to_owned(),
        };
    }
    if matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    ) {
        return StoreError::Damaged {
            path: path.to_owned(),
            detail: e.to_string(),
        };
    }
    StoreError::Io {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

impl Raw {
    fn at(self, path: &Path) -> StoreError {
        let damaged = |detail: String| StoreError::Damaged {
            path: path.to_owned(),
            detail,
        };
        match self {
            Raw::Decode(detail) => damaged(format!("a stored record is unreadable: {detail}")),
            Raw::Db(redb::Error::Io(io)) => io_error(path, &io),
            Raw::Db(redb::Error::DatabaseAlreadyOpen) => StoreError::InUse(path.to_owned()),
            Raw::Db(redb::Error::Corrupted(detail)) => damaged(detail),
            Raw::Db(redb::Error::UpgradeRequired(v)) => {
                damaged(format!("written in another redb file format ({v})"))
            }
            Raw::Db(other) => StoreError::Io {
                path: path.to_owned(),
                detail: other.to_string(),
            },
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Raw> {
    Ok(codec::from_cbor(bytes)?)
}

/// Decodes a stored record (for the fuzz targets: every decoder of disk
/// input is fuzzed).
pub fn decode_record<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    codec::from_cbor(bytes)
}

thread_local! {
    /// Set while redb reads a file that may be damaged: its panics are
    /// caught and reported as damage, so they are not printed.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching a panic in it without the panic being printed.
/// (Installs, once, a panic hook that is silent while `QUIET` is set on
/// the panicking thread and otherwise does what the previous hook did.)
fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into());
    format!("the database library failed reading it: {what}")
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
    /// Files this contact offers are accepted without asking up to this
    /// size (bytes); `None`: always ask.
    #[serde(default)]
    pub auto_accept_below: Option<u64>,
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
    /// Received and acknowledged, its signature not checked yet: never
    /// shown in this state (see [`Store::settle_incoming`]).
    Unverified,
}

impl std::fmt::Display for MessageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MessageState::Queued => "queued",
            MessageState::Sent => "sent",
            MessageState::Delivered => "delivered",
            MessageState::Failed => "failed",
            MessageState::Received => "received",
            MessageState::Unverified => "unverified",
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
    /// A received message as its sender signed it (the payload bytes and
    /// the signature): what proves, later, who wrote it.
    #[serde(default)]
    pub signed: Option<Signed>,
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

/// How a message's record is kept in the history table: what changes
/// (state, error, the key that answered) apart from its body, which is
/// kept once in [`BODIES`]. A record written before bodies were kept apart
/// carries its message (and its signed copy) itself, and is read as such.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// Position in this home's history.
    pub seq: u64,
    /// Mine or theirs.
    pub direction: Direction,
    /// Its state.
    pub state: MessageState,
    /// When the state last changed (ms since epoch).
    pub updated_at: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The key at the other end.
    #[serde(default)]
    pub peer_id: Option<PeerId>,
    /// The sender's signature over the body (a received message).
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub signature: Option<Vec<u8>>,
    /// The body's length in bytes, kept in [`BODIES`]; absent in a record
    /// that carries its message itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_len: Option<u32>,
    /// The message, in a record written before bodies were kept apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// Its signed copy, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<Signed>,
}

impl StoredRecord {
    /// The record of `stored`, whose body is kept apart (`body_len`).
    fn of(stored: &StoredMessage, body_len: u32) -> Self {
        Self {
            seq: stored.seq,
            direction: stored.direction,
            state: stored.state,
            updated_at: stored.updated_at,
            error: stored.error.clone(),
            peer_id: stored.peer_id,
            signature: stored.signed.as_ref().map(|s| s.signature.clone()),
            body_len: Some(body_len),
            message: None,
            signed: None,
        }
    }

    /// The message again, from this record and its body (read with
    /// `body` if it is kept apart: `body(seq, len)`).
    fn load(
        self,
        body: impl FnOnce(u64, u32) -> Result<Vec<u8>, Raw>,
    ) -> Result<StoredMessage, Raw> {
        let (message, signed) = match (self.body_len, self.message) {
            (None, Some(message)) => (message, self.signed),
            (Some(len), _) => {
                let body = body(self.seq, len)?;
                let message: Message = decode(&body)?;
                let signed = self.signature.map(|signature| Signed {
                    payload: body,
                    signature,
                });
                (message, signed)
            }
            (None, None) => {
                return Err(Raw::Decode(format!(
                    "message {} has neither a body nor a message",
                    self.seq
                )));
            }
        };
        Ok(StoredMessage {
            seq: self.seq,
            message,
            direction: self.direction,
            state: self.state,
            updated_at: self.updated_at,
            error: self.error,
            peer_id: self.peer_id,
            signed,
        })
    }
}

/// The body of message `seq`, `len` bytes long, from its pieces.
fn read_body(
    bodies: &impl ReadableTable<(u64, u32), &'static [u8]>,
    seq: u64,
    len: u32,
) -> Result<Vec<u8>, Raw> {
    let mut body = Vec::with_capacity(len as usize);
    for piece in bodies.range((seq, 0)..=(seq, u32::MAX))? {
        body.extend_from_slice(piece?.1.value());
    }
    if body.len() != len as usize {
        return Err(Raw::Decode(format!(
            "the body of message {seq} has {} of its {len} bytes",
            body.len()
        )));
    }
    Ok(body)
}

/// What became of a received message in [`Store::receive`].
#[derive(Debug)]
pub enum Received {
    /// Kept (its signature to be checked); `request` when it counts as a
    /// message request.
    Kept {
        /// The message as stored.
        stored: Box<StoredMessage>,
        /// Whether its sender is not accepted yet.
        request: bool,
    },
    /// Kept before (the same id).
    Repeat,
    /// A request over the limits: nothing was stored.
    Refused(RequestRefusal),
}

/// Reads every table through once, so that damage inside shows now, as
/// an error, rather than later in the middle of something.
fn check_readable(db: &impl ReadableDatabase) -> Result<(), Raw> {
    let txn = db.begin_read()?;
    // A table an older version did not have is fine: it is created.
    macro_rules! each {
        ($table:expr, |$v:ident| $body:expr) => {
            match txn.open_table($table) {
                Ok(table) => {
                    for entry in table.iter()? {
                        let $v = entry?;
                        $body;
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
        };
    }
    each!(CONTACTS, |e| decode::<Contact>(e.1.value())?);
    let bodies = match txn.open_table(BODIES) {
        Ok(bodies) => Some(bodies),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    each!(HISTORY, |e| {
        let record = decode::<StoredRecord>(e.1.value())?;
        drop(record.load(|seq, len| match &bodies {
            Some(bodies) => read_body(bodies, seq, len),
            None => Err(Raw::Decode(format!("the body of message {seq} is missing"))),
        })?)
    });
    each!(BY_ID, |e| drop(e));
    each!(OUTBOX, |e| drop(e));
    each!(UNVERIFIED, |e| drop(e));
    each!(BLOCKED, |e| drop(e));
    each!(META, |e| drop(e));
    each!(TRANSFERS, |e| decode::<Transfer>(e.1.value())?);
    each!(INVITATIONS, |e| decode::<Invitation>(e.1.value())?);
    each!(INVITED_ME, |e| decode::<InvitedMe>(e.1.value())?);
    each!(REQUESTS, |e| decode::<RequestCount>(e.1.value())?);
    each!(WROTE_TO, |e| drop(e));
    Ok(())
}

/// Free space a write needs on the store's disk: below it, writes are
/// refused as "disk full" before redb tries (a write that fails half-way
/// leaves redb refusing even reads until the file is reopened, and
/// reopening it then needs room too).
const SPACE_RESERVE: u64 = 1 << 20;

/// The home's store.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
    /// Whether the store is a file whose disk's room is watched.
    on_disk: bool,
    /// Set when redb failed on an I/O error: it refuses everything after
    /// that, so the file must be reopened.
    poisoned: std::cell::Cell<bool>,
    /// The lock that makes this process the file's one user, from before
    /// it is first read (see [`lock`]).
    _lock: Option<std::fs::File>,
}

/// Takes the home's store for this process: an exclusive lock on a file
/// beside it, held as long as the store is open. Taken before the store
/// is read at all, so that no other process checks or repairs the file
/// while this one writes it (redb's own lock comes only with a writable
/// open, after the checks). The lock file is never removed: removing a
/// lock file races with the next process taking it.
fn lock(path: &Path) -> Result<std::fs::File, StoreError> {
    let lock_path = path.with_extension("redb.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_error(&lock_path, &e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(StoreError::InUse(path.to_owned())),
        Err(e) => Err(io_error(&lock_path, &e.into())),
    }
}

/// Whether a store file may be created anew at `path`: when it does not
/// exist, or is empty in a home that has never been used (`in_use` false).
/// An empty file in a home in use is a truncated store: damage.
fn may_create(path: &Path, in_use: bool) -> Result<bool, StoreError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() == 0 && in_use => Err(StoreError::Damaged {
            path: path.to_owned(),
            detail: "the file is empty".into(),
        }),
        Ok(meta) => Ok(meta.len() == 0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io_error(path, &e)),
    }
}

impl Store {
    /// Opens (or creates) the store file. Fails with [`StoreError::InUse`]
    /// if another process has it open, and [`StoreError::Damaged`] if it
    /// cannot be read; it never replaces an existing file. `in_use` says
    /// whether the home has been used before (it has a config), in which
    /// case an empty store file is damage rather than a new store.
    pub fn open(path: &Path, in_use: bool) -> Result<Self, StoreError> {
        let lock = lock(path)?;
        let create = may_create(path, in_use)?;
        // redb may panic on some damage rather than return an error.
        let opened = catch_quietly(|| {
            if create {
                let db = Database::create(path).map_err(|e| Raw::from(e).at(path))?;
                return Self::ready(db, path, lock);
            }
            // Read first: a damaged file must not be written to at all.
            // A file not closed cleanly (its client was killed) must be
            // repaired before it can be read, and repairing writes: that
            // is tried on a copy first.
            match Self::readable(path) {
                Ok(()) => {}
                Err(Raw::Db(redb::Error::RepairAborted)) => Self::recoverable(path)?,
                Err(e) => return Err(e.at(path)),
            }
            let db = Database::open(path).map_err(|e| Raw::from(e).at(path))?;
            Self::ready(db, path, lock)
        });
        match opened {
            Ok(result) => result,
            Err(panic) => Err(StoreError::Damaged {
                path: path.to_owned(),
                detail: panic_message(&*panic),
            }),
        }
    }

    fn ready(db: Database, path: &Path, lock: std::fs::File) -> Result<Self, StoreError> {
        let store = Self {
            db,
            path: path.to_owned(),
            on_disk: true,
            poisoned: Default::default(),
            _lock: Some(lock),
        };
        store.create_tables().map_err(|e| e.at(path))?;
        Ok(store)
    }

    /// Whether the file reads through without writing to it.
    fn readable(path: &Path) -> Result<(), Raw> {
        let db = Database::builder().open_read_only(path)?;
        check_readable(&db)
    }

    /// Whether a file that needs a repair (after a crash) repairs into a
    /// readable store: tried on a copy, so the file itself is changed only
    /// once that is known.
    fn recoverable(path: &Path) -> Result<(), StoreError> {
        let copy = path.with_extension("redb.recovering");
        let result = (|| {
            std::fs::copy(path, &copy).map_err(|e| io_error(&copy, &e))?;
            let db = Database::open(&copy).map_err(|e| Raw::from(e).at(path))?;
            check_readable(&db).map_err(|e| e.at(path))
        })();
        let _ = std::fs::remove_file(&copy);
        result
    }
    /// An empty store in memory, kept nowhere: for benchmarks and tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        let path = PathBuf::from("(in memory)");
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| Raw::from(e).at(&path))?;
        let store = Self {
            db,
            path,
            on_disk: false,
            poisoned: Default::default(),
            _lock: None,
        };
        store.create_tables().map_err(|e| e.at(&store.path))?;
        Ok(store)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the tables a store needs, if any is missing (a new file, or
    /// one written by an older version); writes nothing otherwise.
    fn create_tables(&self) -> Result<(), Raw> {
        let all_there = {
            let txn = self.db.begin_read()?;
            let exists = |t: Result<_, redb::TableError>| match t {
                Ok(_) => Ok(true),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
                Err(e) => Err(Raw::from(e)),
            };
            exists(txn.open_table(CONTACTS).map(drop))?
                && exists(txn.open_table(BLOCKED).map(drop))?
                && exists(txn.open_table(HISTORY).map(drop))?
                && exists(txn.open_table(BODIES).map(drop))?
                && exists(txn.open_table(BY_ID).map(drop))?
                && exists(txn.open_table(OUTBOX).map(drop))?
                && exists(txn.open_table(UNVERIFIED).map(drop))?
                && exists(txn.open_table(META).map(drop))?
                && exists(txn.open_table(TRANSFERS).map(drop))?
                && exists(txn.open_table(INVITATIONS).map(drop))?
                && exists(txn.open_table(INVITED_ME).map(drop))?
                && exists(txn.open_table(REQUESTS).map(drop))?
                && exists(txn.open_table(WROTE_TO).map(drop))?
                && exists(txn.open_table(UNREAD).map(drop))?
        };
        if all_there {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        txn.open_table(CONTACTS)?;
        txn.open_table(BLOCKED)?;
        txn.open_table(HISTORY)?;
        txn.open_table(BODIES)?;
        txn.open_table(BY_ID)?;
        txn.open_table(OUTBOX)?;
        txn.open_table(UNVERIFIED)?;
        txn.open_table(META)?;
        txn.open_table(TRANSFERS)?;
        txn.open_table(INVITATIONS)?;
        txn.open_table(INVITED_ME)?;
        txn.open_table(REQUESTS)?;
        txn.open_table(WROTE_TO)?;
        txn.open_table(UNREAD)?;
        requests::fill_wrote_to(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// Whether redb failed in a way that needs the file reopened.
    pub fn poisoned(&self) -> bool {
        self.poisoned.get()
    }

    fn fail(&self, e: Raw) -> StoreError {
        let e = e.at(&self.path);
        if e.poisons() {
            self.poisoned.set(true);
        }
        e
    }

    fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T, Raw>) -> Result<T, StoreError> {
        let run = || -> Result<T, Raw> { f(&self.db.begin_read()?) };
        run().map_err(|e| self.fail(e))
    }

    /// Bytes free for us on the store's disk, if it is on one and can tell.
    fn free_space(&self) -> Option<u64> {
        if !self.on_disk {
            return None;
        }
        let dir = self.path.parent().unwrap_or(&self.path);
        let vfs = rustix::fs::statvfs(dir).ok()?;
        Some(vfs.f_bavail.saturating_mul(vfs.f_frsize))
    }

    /// Refuses a write up front when the disk is (nearly) full.
    fn check_room(&self) -> Result<(), StoreError> {
        if !self.on_disk {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(&self.path);
        match rustix::fs::statvfs(dir) {
            Ok(vfs) if vfs.f_bavail.saturating_mul(vfs.f_frsize) < SPACE_RESERVE => {
                Err(StoreError::DiskFull {
                    dir: dir.to_owned(),
                })
            }
            // Not knowing is no reason to refuse.
            _ => Ok(()),
        }
    }

    /// A write committed durably (on disk when this returns).
    fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, Raw>,
    ) -> Result<T, StoreError> {
        self.write_with(redb::Durability::Immediate, f)
    }

    /// A small write that follows a durable one and may be undone by a
    /// crash: committed without waiting for the disk, and allowed into the
    /// space kept free (that space is there for such writes: the message it
    /// settles is stored already, and must not stay hidden because the disk
    /// filled since).
    fn write_lazily<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, Raw>,
    ) -> Result<T, StoreError> {
        self.write_with(redb::Durability::None, f)
    }

    fn write_with<T>(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(&WriteTransaction) -> Result<T, Raw>,
    ) -> Result<T, StoreError> {
        if matches!(durability, redb::Durability::Immediate) {
            self.check_room()?;
        }
        let run = || -> Result<T, Raw> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(durability)
                .map_err(|e| Raw::Db(e.into()))?;
            let out = f(&txn)?;
            txn.commit()?;
            Ok(out)
        };
        run().map_err(|e| self.fail(e))
    }

    // ---- contacts and blocks ----

    /// Adds or replaces a contact.
    pub fn put_contact(&self, contact: &Contact) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(CONTACTS)?;
            t.insert(contact.name.as_str(), codec::to_cbor(contact).as_slice())?;
            // A contact is accepted: what they sent is no longer a request.
            txn.open_table(REQUESTS)?.remove(contact.name.as_str())?;
            Ok(())
        })
    }

    /// A contact by name.
    pub fn contact(&self, name: &ScreenName) -> Result<Option<Contact>, StoreError> {
        self.read(|txn| {
            let t = txn.open_table(CONTACTS)?;
            let v = t.get(name.as_str())?;
            v.map(|v| decode(v.value())).transpose()
        })
    }

    /// Removes a contact; false if it was not one.
    pub fn remove_contact(&self, name: &ScreenName) -> Result<bool, StoreError> {
        self.write(|txn| Ok(txn.open_table(CONTACTS)?.remove(name.as_str())?.is_some()))
    }

    /// Every contact, by name.
    pub fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(CONTACTS)?.iter()? {
                out.push(decode(entry?.1.value())?);
            }
            Ok(out)
        })
    }

    /// Blocks or unblocks a name; returns whether anything changed.
    pub fn set_blocked(
        &self,
        name: &ScreenName,
        blocked: bool,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(BLOCKED)?;
            Ok(if blocked {
                t.insert(name.as_str(), now)?.is_none()
            } else {
                t.remove(name.as_str())?.is_some()
            })
        })
    }

    /// Every blocked name.
    pub fn blocked(&self) -> Result<Vec<ScreenName>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(BLOCKED)?.iter()? {
                let (k, _) = entry?;
                out.push(
                    ScreenName::parse_normal(k.value()).map_err(|e| Raw::Decode(e.to_string()))?,
                );
            }
            Ok(out)
        })
    }

    // ---- messages ----

    fn next_seq(txn: &WriteTransaction) -> Result<u64, Raw> {
        let mut meta = txn.open_table(META)?;
        let seq = meta.get(NEXT_SEQ)?.map(|v| v.value()).unwrap_or(1);
        meta.insert(NEXT_SEQ, seq + 1)?;
        Ok(seq)
    }

    /// Keeps a new message: its body in pieces, then its record.
    fn put(txn: &WriteTransaction, stored: &StoredMessage) -> Result<(), Raw> {
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
    fn put_record(
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
    fn remove(txn: &WriteTransaction, peer: &str, seq: u64) -> Result<(), Raw> {
        txn.open_table(HISTORY)?.remove((peer, seq))?;
        txn.open_table(BODIES)?
            .retain_in((seq, 0)..=(seq, u32::MAX), |_, _| false)?;
        Ok(())
    }

    fn by_id(txn: &WriteTransaction, id: &MessageId) -> Result<Option<StoredMessage>, Raw> {
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

    fn add_outgoing_in(
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
    fn load_record(
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

    /// The last `limit` messages of the conversation with `peer`, oldest first.
    pub fn history(
        &self,
        peer: &ScreenName,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.read(|txn| {
            let history = txn.open_table(HISTORY)?;
            let bodies = txn.open_table(BODIES)?;
            let mut out = Vec::new();
            for entry in history
                .range((peer.as_str(), 0)..=(peer.as_str(), u64::MAX))?
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
            file: None,
            invite: None,
        }
    }

    #[test]
    fn outbox_keeps_order_and_delivered_messages_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), false).unwrap();
        let (a, _) = store.add_outgoing(msg("mine", "bob", "1"), 1).unwrap();
        let (b, _) = store.add_outgoing(msg("mine", "carol", "x"), 1).unwrap();
        let (c, _) = store.add_outgoing(msg("mine", "bob", "2"), 1).unwrap();
        let bob: Vec<_> = store
            .outbox(Some(&name("bob")))
            .unwrap()
            .iter()
            .map(|m| m.message.text.clone())
            .collect();
        assert_eq!(bob, ["1", "2"]);
        assert_eq!(store.outbox(None).unwrap().len(), 3);

        store
            .set_state(&[a.message.id], MessageState::Sent, None, None, 2)
            .unwrap();
        store
            .set_state(&[a.message.id], MessageState::Delivered, None, None, 3)
            .unwrap();
        store
            .set_state(
                &[b.message.id],
                MessageState::Failed,
                Some("not delivered"),
                None,
                3,
            )
            .unwrap();
        // A late failure does not undo a delivery.
        assert!(
            store
                .set_state(&[a.message.id], MessageState::Failed, None, None, 4)
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

    fn signed(m: &Message) -> Signed {
        use messenger_proto::signed::MESSAGE_CONTEXT;
        Signed::sign(
            &messenger_proto::Identity::from_seed([3; 32]),
            MESSAGE_CONTEXT,
            m,
        )
    }

    #[test]
    fn unread_counts_follow_checked_messages_survive_reopening_and_clear_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let counts = |store: &Store| -> Vec<(String, u64)> {
            let all = store.unread_counts().unwrap();
            all.into_iter()
                .map(|u| (u.name.to_string(), u.count))
                .collect()
        };
        {
            let store = Store::open(&path, false).unwrap();
            assert!(receive(&store, &msg("alice", "mine", "1"), 1));
            assert!(receive(&store, &msg("alice", "mine", "2"), 2));
            assert!(receive(&store, &msg("carol", "mine", "x"), 3));
            // Mine count nothing, nor one whose signature is not checked.
            store.add_outgoing(msg("mine", "alice", "r"), 4).unwrap();
            let unchecked = msg("alice", "mine", "?");
            let signature = signed(&unchecked);
            store
                .add_incoming(&unchecked, signature, PeerId::random(), 5)
                .unwrap();
            assert_eq!(store.unread(&name("alice")).unwrap(), 2);
        }
        let store = Store::open(&path, true).unwrap();
        assert_eq!(counts(&store), [("alice".into(), 2), ("carol".into(), 1)]);
        assert!(store.mark_read(&name("alice")).unwrap());
        assert!(!store.mark_read(&name("alice")).unwrap(), "nothing left");
        assert_eq!(store.unread(&name("alice")).unwrap(), 0);

        // A declined request takes its count with it.
        let stranger = msg("mallory", "mine", "hi");
        let limits = RequestLimits::default();
        let signature = signed(&stranger);
        store
            .receive(&stranger, signature, PeerId::random(), 6, Some(&limits))
            .unwrap();
        store.settle_incoming(&stranger.id, true, 6).unwrap();
        assert_eq!(store.unread(&name("mallory")).unwrap(), 1);
        store.decline_requests(Some(&name("mallory"))).unwrap();
        assert_eq!(counts(&store), [("carol".into(), 1)]);
    }

    /// Keeps a received message and settles it as checked.
    fn receive(store: &Store, m: &Message, now: u64) -> bool {
        let kept = store
            .add_incoming(m, signed(m), PeerId::random(), now)
            .unwrap();
        if kept.is_some() {
            assert!(store.settle_incoming(&m.id, true, now).unwrap().is_some());
        }
        kept.is_some()
    }

    #[test]
    fn incoming_duplicates_are_dropped_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let m = msg("alice", "mine", "hi");
        {
            let store = Store::open(&path, false).unwrap();
            assert!(receive(&store, &m, 1));
            assert!(!receive(&store, &m, 2));
            // Only one process may hold the store.
            assert!(matches!(
                Store::open(&path, true),
                Err(StoreError::InUse(_))
            ));
        }
        let store = Store::open(&path, false).unwrap();
        assert!(!receive(&store, &m, 3));
        let h = store.history(&name("alice"), 10).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].direction, Direction::In);
        assert_eq!(h[0].signed, Some(signed(&m)), "kept as signed");
    }

    #[test]
    fn a_received_message_is_shown_only_once_its_signature_is_settled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (good, bad) = (msg("alice", "mine", "good"), msg("alice", "mine", "bad"));
        {
            let store = Store::open(&path, false).unwrap();
            for m in [&good, &bad] {
                store
                    .add_incoming(m, signed(m), PeerId::random(), 1)
                    .unwrap()
                    .unwrap();
            }
            assert!(store.history(&name("alice"), 10).unwrap().is_empty());
        }
        // Kept across a restart, still waiting for its check.
        let store = Store::open(&path, true).unwrap();
        let waiting: Vec<MessageId> = store
            .unverified()
            .unwrap()
            .iter()
            .map(|m| m.message.id)
            .collect();
        assert_eq!(waiting, [good.id, bad.id]);
        let shown = store.settle_incoming(&good.id, true, 2).unwrap().unwrap();
        assert_eq!(shown.state, MessageState::Received);
        assert!(store.settle_incoming(&bad.id, false, 2).unwrap().is_none());
        assert!(
            store.settle_incoming(&good.id, true, 3).unwrap().is_none(),
            "once"
        );
        let h = store.history(&name("alice"), 10).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].message.text, "good");
        assert!(store.unverified().unwrap().is_empty());
        assert!(
            store.message(&bad.id).unwrap().is_none(),
            "a forgery leaves no trace"
        );
    }

    #[test]
    fn history_limit_takes_the_latest_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), false).unwrap();
        for i in 0..5 {
            store
                .add_outgoing(msg("mine", "bob", &format!("out{i}")), 1)
                .unwrap();
            receive(&store, &msg("bob", "mine", &format!("in{i}")), 1);
        }
        let h = store.history(&name("bob"), 3).unwrap();
        let texts: Vec<_> = h.iter().map(|m| m.message.text.as_str()).collect();
        assert_eq!(texts, ["in3", "out4", "in4"]);
    }

    #[test]
    fn contacts_and_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), false).unwrap();
        let c = Contact {
            name: name("bob"),
            pinned: PeerId::random(),
            added_at: 1,
            key_changed_to: None,
            auto_accept_below: None,
        };
        store.put_contact(&c).unwrap();
        assert_eq!(store.contact(&name("bob")).unwrap(), Some(c));
        assert!(store.remove_contact(&name("bob")).unwrap());
        assert!(store.contacts().unwrap().is_empty());
        assert!(store.set_blocked(&name("eve"), true, 1).unwrap());
        assert!(store.blocked().unwrap().contains(&name("eve")));
        assert_eq!(store.blocked().unwrap(), vec![name("eve")]);
        assert!(store.set_blocked(&name("eve"), false, 1).unwrap());
        assert!(store.blocked().unwrap().is_empty());
    }
}

#[cfg(test)]
mod legacy {
    use super::*;

    #[test]
    fn records_written_before_bodies_were_kept_apart_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path, false).unwrap();
        let message = Message {
            id: MessageId::random(),
            from: ScreenName::parse("bob").unwrap(),
            to: ScreenName::parse("alice").unwrap(),
            sent_at: 1,
            text: "from an older version".into(),
            file: None,
            invite: None,
        };
        let old = StoredMessage {
            seq: 1,
            message: message.clone(),
            direction: Direction::In,
            state: MessageState::Received,
            updated_at: 1,
            error: None,
            peer_id: None,
            signed: None,
        };
        store
            .write(|txn| {
                txn.open_table(HISTORY)?
                    .insert(("bob", 1), codec::to_cbor(&old).as_slice())?;
                txn.open_table(BY_ID)?
                    .insert(message.id.0.as_slice(), ("bob", 1))?;
                Ok(())
            })
            .unwrap();
        drop(store);
        // Opening reads every record through; both ways of reading agree.
        let store = Store::open(&path, true).unwrap();
        assert_eq!(
            store.history(&message.from, 10).unwrap(),
            std::slice::from_ref(&old)
        );
        assert_eq!(store.message(&message.id).unwrap(), Some(old));
    }
}

#[cfg(test)]
mod room {
    //! What the store takes on disk for what it keeps.
    use super::*;
    use messenger_proto::Identity;
    use messenger_proto::signed::MESSAGE_CONTEXT;
    use std::os::unix::fs::MetadataExt;

    /// Bytes the file takes on disk (allocated blocks), and its length.
    fn on_disk(path: &Path) -> (u64, u64) {
        let meta = std::fs::metadata(path).unwrap();
        (meta.blocks() * 512, meta.len())
    }

    /// Receives `n` messages of `len` bytes of text (kept, acknowledged,
    /// then verified: the path every received message takes); returns
    /// how much the file grew on disk, per byte of text kept.
    fn growth_per_byte(n: usize, len: usize) -> (f64, f64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path, false).unwrap();
        let (before, before_len) = on_disk(&path);
        let sender = Identity::generate().unwrap();
        let text: String = "x".repeat(len);
        for i in 0..n {
            let message = Message {
                id: MessageId::random(),
                from: ScreenName::parse(&format!("sender{}", i % 20)).unwrap(),
                to: ScreenName::parse("myself").unwrap(),
                sent_at: 1,
                text: text.clone(),
                file: None,
                invite: None,
            };
            let signed = Signed::sign(&sender, MESSAGE_CONTEXT, &message);
            store
                .add_incoming(&message, signed, sender.peer_id(), 1)
                .unwrap()
                .unwrap();
            store
                .settle_incoming(&message.id, true, 2)
                .unwrap()
                .unwrap();
        }
        drop(store);
        let (after, after_len) = on_disk(&path);
        let kept = (n * len) as f64;
        (
            (after - before) as f64 / kept,
            (after_len - before_len) as f64 / kept,
        )
    }

    #[test]
    fn received_messages_take_about_their_size_on_disk() {
        let (large, large_len) = growth_per_byte(300, 64 * 1024);
        let (small, small_len) = growth_per_byte(2_000, 100);
        eprintln!(
            "STORE RESULT: 64 KiB messages: {large:.2}x on disk ({large_len:.2}x file length); \
             100-byte messages: {small:.2}x ({small_len:.2}x)"
        );
        assert!(large <= 1.5, "64 KiB messages take {large:.2}x their size");
    }
}
