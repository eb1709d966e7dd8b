//! Two-tier replay: JetStream while the id is inside the stream's retention, MongoDB before it.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{Bounds, Event, Topic};
use herald_store::{History, Page, ReadQuery, StoreError};
use herald_telemetry::Metrics;
use herald_telemetry::Tier;

use crate::{JetStream, Mongo};

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
        let (first, head) = self.js.state().await?;
        if query.after >= head {
            return Ok(Page {
                events: Vec::new(),
                next_after: query.after,
                end: true,
            });
        }
        if query.after + 1 >= first {
            tracing::debug!(
                after = query.after,
                first,
                head,
                "replay page from jetstream"
            );
            let page = self
                .js
                .read(&query.filter, query.after, query.limit, head)
                .await?;
            // JetStream may have dropped the start of the range (retention) between reading its
            // first sequence and starting the read; the consumer then starts later without a
            // word. When the page starts late, check, and read that range from MongoDB instead.
            let starts_late = page.events.first().is_none_or(|e| e.seq > query.after + 1);
            if starts_late {
                let (now_first, _) = self.js.state().await?;
                if now_first > query.after + 1 {
                    return self.mongodb_page(&query, now_first, head).await;
                }
            }
            self.metrics
                .replay_read(Tier::Jetstream, page.events.len() as u64);
            return Ok(page);
        }
        self.mongodb_page(&query, first, head).await
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
    /// A page from MongoDB for what lies below JetStream's `first` sequence, up to where JetStream
    /// takes over.
    async fn mongodb_page(
        &self,
        query: &ReadQuery,
        first: u64,
        head: u64,
    ) -> Result<Page, StoreError> {
        let upper = (first - 1).min(head);
        tracing::debug!(after = query.after, upper, head, "replay page from mongodb");
        let page = self.mongo.page(query, upper, head).await?;
        tracing::debug!(events = page.events.len(), "replay page from mongodb read");
        self.metrics
            .replay_read(Tier::Mongodb, page.events.len() as u64);
        Ok(page)
    }

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
