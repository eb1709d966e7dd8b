//! Two-tier replay: JetStream while the id is inside the stream's retention, MongoDB before it.
//! A replay holds one read per tier for all its pages ([`History::cursor`]); a single
//! [`History::read`] is a cursor's first page.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{Bounds, Event, Topic, TopicFilter};
use herald_store::{Cursor, History, Page, ReadQuery, StoreError};
use herald_telemetry::Metrics;
use herald_telemetry::Tier;

use crate::{JetStream, Mongo, jetstream, mongo};

/// The gateway's history: recent events from JetStream, older ones from MongoDB.
#[derive(Debug, Clone)]
pub struct Tiered {
    js: JetStream,
    mongo: Mongo,
    metrics: Arc<Metrics>,
}

impl Tiered {
    /// Reads from `js` first and `mongo` for what JetStream no longer keeps.
    pub fn new(js: JetStream, mongo: Mongo, metrics: Arc<Metrics>) -> Self {
        Self { js, mongo, metrics }
    }
}

#[async_trait]
impl History for Tiered {
    async fn read(&self, query: ReadQuery) -> Result<Page, StoreError> {
        self.cursor(query.filter, query.after)
            .next(query.limit, usize::MAX)
            .await
    }

    fn cursor<'a>(&'a self, filter: TopicFilter, after: u64) -> Box<dyn Cursor + 'a> {
        Box::new(TieredCursor {
            tiered: self,
            filter,
            after,
            state: None,
            js: None,
            mongo: None,
        })
    }

    async fn latest(&self, topic: &Topic, limit: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        let (_, head) = self.js.state().await?;
        self.mongo.latest(topic, limit, head).await
    }

    async fn bounds(&self) -> Result<Bounds, StoreError> {
        self.bounds_now().await
    }
}

impl Tiered {
    /// The epoch, the smaller of MongoDB's and JetStream's first sequences, and the head.
    async fn bounds_now(&self) -> Result<Bounds, StoreError> {
        let (first, head) = self.js.state().await?;
        let earliest = match self.mongo.earliest().await {
            Ok(Some(m)) => m.min(first),
            Ok(None) => first,
            Err(e) => {
                // Judge by JetStream alone: an older id gets `expired` rather than no answer.
                tracing::warn!(error = %e, "reading MongoDB's earliest sequence failed");
                first
            }
        };
        Ok(Bounds {
            epoch: self.js.epoch(),
            earliest,
            head,
        })
    }
}

/// A replay's read of both tiers: the stream's state read once, at the first page; then one
/// JetStream consumer held for the pages inside the stream, or one MongoDB cursor for those before
/// it (a replay that starts in MongoDB moves on to JetStream where MongoDB's part ends).
#[derive(Debug)]
struct TieredCursor<'a> {
    tiered: &'a Tiered,
    filter: TopicFilter,
    /// The last sequence the pages so far covered.
    after: u64,
    /// JetStream's first and last sequence when the replay started (the first raised when
    /// retention was seen to move past the replay).
    state: Option<(u64, u64)>,
    js: Option<jetstream::Reader>,
    mongo: Option<mongo::Reader>,
}

#[async_trait]
impl Cursor for TieredCursor<'_> {
    async fn next(&mut self, limit: usize, max_bytes: usize) -> Result<Page, StoreError> {
        let (first, head) = match self.state {
            Some(state) => state,
            None => *self.state.insert(self.tiered.js.state().await?),
        };
        let after = self.after;
        if after >= head {
            return Ok(Page {
                events: Vec::new(),
                next_after: after,
                end: true,
            });
        }
        if after + 1 < first {
            return self.mongodb_page(limit, max_bytes, first, head).await;
        }
        tracing::debug!(after, first, head, "replay page from jetstream");
        let js = match &mut self.js {
            Some(js) => js,
            None => self.js.insert(self.tiered.js.reader(&self.filter, after)),
        };
        let page = js.next(limit, max_bytes, head).await?;
        // JetStream may have dropped the start of the range (retention) before the consumer got
        // there; the consumer then goes on later without a word. When the page starts late,
        // check, and read that range from MongoDB instead.
        let starts_late = page.events.first().is_none_or(|e| e.seq > after + 1);
        if starts_late {
            let (now_first, _) = self.tiered.js.state().await?;
            if now_first > after + 1 {
                self.js = None;
                self.state = Some((now_first, head));
                return self.mongodb_page(limit, max_bytes, now_first, head).await;
            }
        }
        self.after = page.next_after;
        self.tiered
            .metrics
            .replay_read(Tier::Jetstream, page.events.len() as u64);
        Ok(page)
    }
}

impl TieredCursor<'_> {
    /// A page from MongoDB for what lies below JetStream's `first` sequence, up to where JetStream
    /// takes over.
    async fn mongodb_page(
        &mut self,
        limit: usize,
        max_bytes: usize,
        first: u64,
        head: u64,
    ) -> Result<Page, StoreError> {
        let (after, upper) = (self.after, (first - 1).min(head));
        tracing::debug!(after, upper, head, "replay page from mongodb");
        let reader = match &mut self.mongo {
            Some(reader) if reader.after() == after && reader.upper() == upper => reader,
            _ => self
                .mongo
                .insert(self.tiered.mongo.reader(&self.filter, after, upper, limit)),
        };
        let page = reader.page(limit, max_bytes, head).await?;
        tracing::debug!(events = page.events.len(), "replay page from mongodb read");
        if reader.after() >= upper {
            self.mongo = None;
        }
        self.after = page.next_after;
        self.tiered
            .metrics
            .replay_read(Tier::Mongodb, page.events.len() as u64);
        Ok(page)
    }
}
