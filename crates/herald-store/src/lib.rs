//! The event store: where events are sequenced, kept and read back for replay.
//!
//! [`Store`] is the small trait every backend implements; services hold it as `Arc<dyn Store>`.
//!
//! - [`embedded`]: the standalone node's durable store on local disk (redb), with a single writer
//!   thread that commits concurrent appends together (group commit).
//! - [`memory`]: the same contract in memory, for tests and `--store memory`.
//! - [`options`]: retention by age and size, the idempotency window, and their options.
//! - [`log`]: [`EventLog`], what a publish is committed to: the store itself in standalone mode,
//!   JetStream then MongoDB, or MongoDB then Redis in the distributed modes.
//!
//! Backends share one contract test suite (`tests/contract.rs`); the [`History`] contract every
//! history implementation answers to, in this crate or another, is `contract` (feature
//! `test-util`).

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use herald_core::{Bounds, Epoch, Event, NewEvent, Topic, TopicFilter};

#[cfg(any(test, feature = "test-util"))]
pub mod contract;
pub mod embedded;
mod error;
pub mod log;
pub mod memory;
pub mod options;

pub use embedded::EmbeddedStore;
pub use error::StoreError;
pub use log::EventLog;
pub use memory::MemoryStore;
pub use options::{EmbeddedOptions, RetentionOptions, StoreKind, StoreOptions};

/// An idempotency key with a fingerprint of the request it was first used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The client's `Idempotency-Key`.
    pub key: String,
    /// A hash of the request body; the same key with another body is a conflict.
    pub fingerprint: u64,
}

/// The result of an append.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The epoch the sequences belong to.
    pub epoch: Epoch,
    /// The sequence of each event of the batch, in order.
    pub seqs: Vec<u64>,
    /// The newly stored events; empty when `duplicate`.
    pub events: Vec<Arc<Event>>,
    /// The idempotency key had been seen: nothing was stored, `seqs` are the first answer's.
    pub duplicate: bool,
}

/// A paged read: events matching `filter` with a sequence greater than `after`.
#[derive(Debug, Clone)]
pub struct ReadQuery {
    /// Which topics.
    pub filter: TopicFilter,
    /// Only events after this sequence.
    pub after: u64,
    /// At most this many events.
    pub limit: usize,
}

/// One page of a read.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Matching events in sequence order.
    pub events: Vec<Arc<Event>>,
    /// Where the next page starts (after this sequence). When `end` is set, this is at least the
    /// head the read saw, so a caller can skip live events up to it.
    pub next_after: u64,
    /// Nothing beyond `next_after` existed when the page was read.
    pub end: bool,
}

/// A read that keeps its place from page to page: a replay reads page after page of one filter,
/// and a backend that can hold its position on the server (a JetStream consumer, a MongoDB cursor)
/// holds it here rather than starting a new read for every page.
#[async_trait]
pub trait Cursor: Send {
    /// The next page: events after the previous page's `next_after` (after the cursor's start
    /// for the first page), at most `limit` of them and, past the first event, at most about
    /// `max_bytes` of event data (a backend may bound its pages by `limit` alone, as [`Paged`]
    /// does). The same rules as [`History::read`]'s pages; after an `end` page the cursor is done.
    async fn next(&mut self, limit: usize, max_bytes: usize) -> Result<Page, StoreError>;
}

/// The cursor of a backend that keeps nothing between pages: every page is a [`History::read`].
#[derive(Debug)]
pub struct Paged<'a, H: ?Sized> {
    history: &'a H,
    filter: TopicFilter,
    after: u64,
}

impl<'a, H: History + ?Sized> Paged<'a, H> {
    /// Pages of `filter`'s events after `after`, each read with `history.read`.
    pub fn new(history: &'a H, filter: TopicFilter, after: u64) -> Self {
        Self {
            history,
            filter,
            after,
        }
    }
}

#[async_trait]
impl<H: History + ?Sized> Cursor for Paged<'_, H> {
    async fn next(&mut self, limit: usize, _max_bytes: usize) -> Result<Page, StoreError> {
        let query = ReadQuery {
            filter: self.filter.clone(),
            after: self.after,
            limit,
        };
        let page = self.history.read(query).await?;
        self.after = page.next_after;
        Ok(page)
    }
}

/// Where events are read back: what a gateway needs for replay, catch-up and history.
#[async_trait]
pub trait History: Send + Sync + fmt::Debug {
    /// Reads one page of events after a sequence.
    async fn read(&self, query: ReadQuery) -> Result<Page, StoreError>;

    /// A cursor over `filter`'s events after `after`, for a reader that will read page after
    /// page (a replay). By default each page is a [`History::read`].
    fn cursor<'a>(&'a self, filter: TopicFilter, after: u64) -> Box<dyn Cursor + 'a> {
        Box::new(Paged::new(self, filter, after))
    }

    /// The newest `limit` events of a topic, oldest first.
    async fn latest(&self, topic: &Topic, limit: usize) -> Result<Vec<Arc<Event>>, StoreError>;

    /// The epoch and the retained range of the sequence.
    async fn bounds(&self) -> Result<Bounds, StoreError>;
}

/// Where events are sequenced and kept (the standalone node's commit point).
#[async_trait]
pub trait Store: History {
    /// Sequences and durably stores a batch, all or nothing. With an idempotency key seen within
    /// the window, stores nothing and answers the first append's sequences.
    async fn append(
        &self,
        batch: Vec<NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Result<Appended, StoreError>;

    /// Applies retention: removes events past the age or size limit and expired idempotency
    /// keys. The owner calls it periodically.
    async fn trim(&self) -> Result<(), StoreError>;

    /// Flushes and stops background work; later appends fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;
}
