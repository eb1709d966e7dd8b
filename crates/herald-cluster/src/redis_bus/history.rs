//! The gateway's history in the Redis bus mode.

use super::*;
use crate::mongo;
use herald_store::Cursor;
use herald_telemetry::Tier;

/// The gateway's history in the Redis bus mode: MongoDB alone. Its head is the sequence
/// counter's, not the newest event's, which retention can remove.
#[derive(Debug, Clone)]
pub struct MongoHistory {
    mongo: Mongo,
    epoch: Epoch,
    metrics: Arc<Metrics>,
}

impl MongoHistory {
    /// Reads `mongo`, whose events belong to `epoch`.
    pub fn new(mongo: Mongo, epoch: Epoch, metrics: Arc<Metrics>) -> Self {
        Self {
            mongo,
            epoch,
            metrics,
        }
    }
}

#[async_trait]
impl History for MongoHistory {
    async fn read(&self, query: ReadQuery) -> Result<Page, StoreError> {
        self.cursor(query.filter, query.after)
            .next(query.limit, usize::MAX)
            .await
    }

    fn cursor<'a>(&'a self, filter: TopicFilter, after: u64) -> Box<dyn Cursor + 'a> {
        Box::new(MongoCursor {
            history: self,
            filter,
            after,
            reader: None,
        })
    }

    async fn latest(&self, topic: &Topic, limit: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        let head = self.mongo.sequenced_head().await?;
        self.mongo.latest(topic, limit, head).await
    }

    async fn bounds(&self) -> Result<Bounds, StoreError> {
        let head = self.mongo.sequenced_head().await?;
        Ok(Bounds {
            epoch: self.epoch,
            earliest: self.mongo.earliest().await?.unwrap_or(head + 1),
            head,
        })
    }
}

/// A replay's read: the head read once, at the first page, then one MongoDB cursor up to it.
#[derive(Debug)]
struct MongoCursor<'a> {
    history: &'a MongoHistory,
    filter: TopicFilter,
    after: u64,
    /// The cursor and the head it reads up to.
    reader: Option<(mongo::Reader, u64)>,
}

#[async_trait]
impl Cursor for MongoCursor<'_> {
    async fn next(&mut self, limit: usize, max_bytes: usize) -> Result<Page, StoreError> {
        let (reader, head) = match &mut self.reader {
            Some((reader, head)) => (reader, *head),
            None => {
                let head = self.history.mongo.sequenced_head().await?;
                if self.after >= head {
                    return Ok(Page {
                        events: Vec::new(),
                        next_after: self.after,
                        end: true,
                    });
                }
                let reader = self
                    .history
                    .mongo
                    .reader(&self.filter, self.after, head, limit);
                let (reader, _) = self.reader.insert((reader, head));
                (reader, head)
            }
        };
        let page = reader.page(limit, max_bytes, head).await?;
        self.after = page.next_after;
        self.history
            .metrics
            .replay_read(Tier::Mongodb, page.events.len() as u64);
        Ok(page)
    }
}
