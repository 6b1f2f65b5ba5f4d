//! The store's thread: the one owner of the database.
//!
//! Every read and write is a job sent to this thread, which runs them one
//! after another (redb allows one writer at a time anyway, and its calls
//! block on the disk). After a job fails with an I/O error (a full disk)
//! or panics, redb refuses everything that follows, so the thread reopens
//! the file before the next job: once space is freed the client works
//! again, without a restart.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{Store, StoreError};

/// A job runs on the store, or learns why there is none to run on.
type Job = Box<dyn FnOnce(Result<&Store, &StoreError>) + Send>;

/// How the thread gets its database back.
enum Source {
    File { path: PathBuf },
    Memory,
}

/// A handle to the store's thread. Cheap to clone; the thread ends once
/// every handle is gone.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: mpsc::Sender<Job>,
    path: PathBuf,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The thread itself, to wait for at shutdown (so the database is closed
/// before the process exits).
#[derive(Debug)]
pub struct StoreThread(Option<JoinHandle<()>>);

impl StoreThread {
    /// Waits for the thread to end (every handle must be gone by then).
    pub fn join(mut self) {
        if let Some(thread) = self.0.take()
            && thread.join().is_err()
        {
            warn!("the store's thread ended with a panic");
        }
    }
}

impl StoreHandle {
    /// Opens the store file (see [`Store::open`]) on a thread of its own.
    pub fn open(path: &Path, in_use: bool) -> Result<(Self, StoreThread), StoreError> {
        let store = Store::open(path, in_use)?;
        Ok(Self::spawn(
            store,
            Source::File {
                path: path.to_owned(),
            },
        ))
    }

    /// A store in memory (see [`Store::in_memory`]) on a thread of its own.
    pub fn in_memory() -> Result<(Self, StoreThread), StoreError> {
        Ok(Self::spawn(Store::in_memory()?, Source::Memory))
    }

    fn spawn(store: Store, source: Source) -> (Self, StoreThread) {
        let path = store.path().to_owned();
        let (jobs, rx) = mpsc::channel::<Job>(256);
        let thread = std::thread::Builder::new()
            .name("messenger-store".into())
            .spawn(move || run(store, source, rx));
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(e) => {
                // Without a thread every call fails with `Closed`.
                warn!("cannot start the store's thread: {e}");
                None
            }
        };
        (Self { jobs, path }, StoreThread(thread))
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the store's thread and returns its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |store: Result<&Store, &StoreError>| {
            let _ = tx.send(store.map_err(Clone::clone).and_then(f));
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(result) => result,
            // The job panicked (the thread caught it and reopens).
            Err(_) => Err(StoreError::Damaged {
                path: self.path.clone(),
                detail: "the database library failed while using it".into(),
            }),
        }
    }
}

fn run(store: Store, source: Source, mut jobs: mpsc::Receiver<Job>) {
    let mut store = Ok(store);
    while let Some(job) = jobs.blocking_recv() {
        if store.is_err() {
            store = reopen(&source);
        }
        let ran = super::catch_quietly(|| job(store.as_ref()));
        let broken = ran.is_err() || store.as_ref().is_ok_and(Store::poisoned);
        if broken && store.is_ok() {
            warn!("the store failed; it is reopened before its next use");
            // Dropped before reopening: the file lock goes with it.
            store = Err(StoreError::Closed);
        }
    }
}

fn reopen(source: &Source) -> Result<Store, StoreError> {
    match source {
        Source::File { path } => {
            let store = Store::open(path, true);
            if store.is_ok() {
                info!(path = %path.display(), "the store is open again");
            }
            store
        }
        Source::Memory => Store::in_memory(),
    }
}
