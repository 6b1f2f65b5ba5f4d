//! How the store fails: each failure names the file and what went wrong
//! (a damaged file, a full disk), and redb's own errors are kept apart
//! until they are told.

use std::io;
use std::path::{Path, PathBuf};

use messenger_proto::codec::{self, CodecError};

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
    pub(super) fn poisons(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. } | StoreError::Io { .. })
    }
}

/// A failure inside the store, before it is told where (the path).
#[derive(Debug)]
pub(super) enum Raw {
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
pub(super) fn io_error(path: &Path, e: &io::Error) -> StoreError {
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
    pub(super) fn at(self, path: &Path) -> StoreError {
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

pub(super) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Raw> {
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
pub(super) fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
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

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into());
    format!("the database library failed reading it: {what}")
}
