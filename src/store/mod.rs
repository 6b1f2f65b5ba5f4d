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
//!
//! Files: [`records`] what is kept, [`contacts`] and [`messages`] the
//! tables of each, [`error`] how failures are told; the rest (requests,
//! transfers, invitations, unread counts) one file each.

mod contacts;
mod error;
mod handle;
mod invitations;
mod messages;
mod records;
mod requests;
#[cfg(test)]
mod tests;
mod transfers;
mod unread;

use std::io;
use std::path::{Path, PathBuf};

use error::{Raw, catch_quietly, decode, io_error, panic_message};
pub use error::{StoreError, decode_record};
pub use handle::{StoreHandle, StoreThread};
pub use invitations::{Invitation, InvitedMe};
use records::read_body;
pub use records::{Contact, Direction, MessageState, Received, StoredMessage, StoredRecord};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
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
}
