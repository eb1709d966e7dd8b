//! The embedded store: one redb database file on local disk.
//!
//! redb is a pure-Rust, copy-on-write B-tree store with ACID transactions: a commit with
//! `Durability::Immediate` is fsync'd before it returns and a crash at any point leaves the last
//! committed state. All writes go through one writer thread ([`writer`]) that takes every append
//! waiting in its queue, writes them in one transaction and commits once, so concurrent publishes
//! share one fsync (group commit). Reads run on the blocking pool against MVCC snapshots
//! ([`read`]) and never wait for the writer.
//!
//! Tables: `events` (seq → record), `by_topic` ((topic, seq) → ()) for "these topics after X",
//! `idempotency` (key → fingerprint, expiry, seqs) with `idempotency_expiry` ((expiry, key) → ())
//! to prune it, and `meta` (epoch, head, trimmed-through, retained bytes).

mod codec;
mod read;
mod writer;

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use async_trait::async_trait;
use herald_core::{Bounds, Epoch, Event, NewEvent, Topic, TopicFilter};
use redb::{Database, ReadableDatabase, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Appended, Cursor, History, Idempotency, Page, ReadQuery, Store, StoreError, StoreOptions,
};

const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
const BY_TOPIC: TableDefinition<'_, (&str, u64), ()> = TableDefinition::new("by_topic");
const IDEMPOTENCY: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("idempotency");
const IDEMPOTENCY_EXPIRY: TableDefinition<'_, (u64, &str), ()> =
    TableDefinition::new("idempotency_expiry");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

const META_EPOCH: &str = "epoch";
const META_HEAD: &str = "head";
const META_TRIMMED: &str = "trimmed_through";
const META_BYTES: &str = "bytes";
const META_LAST_TIME: &str = "last_time_ms";

/// Memory redb may use to cache pages (its default is 1 GiB, which would make the process's
/// memory grow with the data written rather than with the work in flight).
pub const CACHE_BYTES: usize = 32 << 20;

/// The file name inside the data directory.
pub const FILE_NAME: &str = "herald.redb";

/// State shared by the writer thread and readers.
#[derive(Debug)]
struct Shared {
    db: Database,
    epoch: Epoch,
    head: AtomicU64,
    trimmed_through: AtomicU64,
    commits: AtomicU64,
}

enum Command {
    Append {
        batch: Vec<NewEvent>,
        idempotency: Option<Idempotency>,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
    },
    Trim {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The durable store of the standalone node.
#[derive(Debug)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Append { .. } => "Append",
            Self::Trim { .. } => "Trim",
        })
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, creating the directory if needed.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(Box::new(e)))?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join(FILE_NAME))?;
        let state = writer::State::load_or_init(&db, options)?;
        let shared = Arc::new(Shared {
            epoch: state.epoch,
            head: AtomicU64::new(state.head),
            trimmed_through: AtomicU64::new(state.trimmed_through),
            commits: AtomicU64::new(0),
            db,
        });
        let (tx, rx) = mpsc::channel(4096);
        let thread_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn(move || writer::run(thread_shared, state, rx))
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        tracing::info!(
            epoch = %shared.epoch,
            head = state_head(&shared),
            path = %dir.join(FILE_NAME).display(),
            "embedded store opened"
        );
        Ok(Self {
            shared,
            commands: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// How many write transactions have been committed since opening (for group-commit tests
    /// and metrics).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    async fn send(&self, command: Command) -> Result<(), StoreError> {
        let tx = self
            .commands
            .lock()
            .expect("commands lock")
            .clone()
            .ok_or(StoreError::Closed)?;
        tx.send(command).await.map_err(|_| StoreError::Closed)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))?
    }
}

/// A replay's reads: each page is a read of its own snapshot (redb reads cost no round trip), cut
/// at the page's byte budget as well as its event count.
#[derive(Debug)]
struct EmbeddedCursor<'a> {
    store: &'a EmbeddedStore,
    filter: TopicFilter,
    after: u64,
}

#[async_trait]
impl Cursor for EmbeddedCursor<'_> {
    async fn next(&mut self, limit: usize, max_bytes: usize) -> Result<Page, StoreError> {
        let query = ReadQuery {
            filter: self.filter.clone(),
            after: self.after,
            limit,
        };
        let page = self
            .store
            .blocking(move |s| read::page(&s.db.begin_read()?, &query, max_bytes))
            .await?;
        self.after = page.next_after;
        Ok(page)
    }
}

fn state_head(shared: &Shared) -> u64 {
    shared.head.load(Ordering::Acquire)
}

#[async_trait]
impl History for EmbeddedStore {
    async fn read(&self, query: ReadQuery) -> Result<Page, StoreError> {
        self.blocking(move |s| read::page(&s.db.begin_read()?, &query, usize::MAX))
            .await
    }

    fn cursor<'a>(&'a self, filter: TopicFilter, after: u64) -> Box<dyn Cursor + 'a> {
        Box::new(EmbeddedCursor {
            store: self,
            filter,
            after,
        })
    }

    async fn latest(&self, topic: &Topic, limit: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        let topic = topic.clone();
        self.blocking(move |s| read::latest(&s.db.begin_read()?, &topic, limit))
            .await
    }

    async fn bounds(&self) -> Result<Bounds, StoreError> {
        let head = state_head(&self.shared);
        let trimmed = self.shared.trimmed_through.load(Ordering::Acquire);
        Ok(Bounds {
            epoch: self.shared.epoch,
            earliest: trimmed + 1,
            head,
        })
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn append(
        &self,
        batch: Vec<NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Result<Appended, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Append {
            batch,
            idempotency,
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn trim(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Trim { reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn close(&self) -> Result<(), StoreError> {
        drop(self.commands.lock().expect("commands lock").take());
        let writer = self.writer.lock().expect("writer lock").take();
        if let Some(writer) = writer {
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .map_err(|e| StoreError::Backend(Box::new(e)))?
                .map_err(|_| StoreError::Backend("the store writer panicked".into()))?;
        }
        Ok(())
    }
}
