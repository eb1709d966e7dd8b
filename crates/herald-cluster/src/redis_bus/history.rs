//! The gateway's history in the Redis bus mode.

use super::*;
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
        let head = self.mongo.sequenced_head().await?;
        if query.after >= head {
            return Ok(Page {
                events: Vec::new(),
                next_after: query.after,
                end: true,
            });
        }
        let page = self.mongo.page(&query, head, head).await?;
        self.metrics
            .replay_read(Tier::Mongodb, page.events.len() as u64);
        Ok(page)
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
