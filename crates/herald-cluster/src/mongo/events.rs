//! Events: writes (idempotent on `_id`), bounded range reads, replay pages, a topic's latest
//! events and the bounds of what MongoDB holds.

use super::*;

/// The `meta` document holding the highest sequence ever written to `events`.
const HIGH: &str = "high";

impl Mongo {
    /// Writes events; those already there are left as they are (the write is idempotent). Then
    /// raises the high-water mark to the last of them (see [`Mongo::handed_out`]).
    pub async fn insert(&self, events: &[Arc<Event>]) -> Result<(), StoreError> {
        self.bounded("insert", self.insert_once(events)).await?;
        match events.iter().map(|e| e.seq).max() {
            Some(last) => {
                self.bounded("high-water mark", self.raise_meta_seq(HIGH, last))
                    .await
            }
            None => Ok(()),
        }
    }

    /// The highest sequence MongoDB has ever held: its newest event, or the high-water mark that
    /// outlives it when retention removed it. A JetStream stream recreated from MongoDB starts
    /// after this, so no id is handed out twice in an epoch.
    pub async fn handed_out(&self) -> Result<u64, StoreError> {
        let high = self.meta_seq(HIGH).await?;
        Ok(high.max(self.head().await?))
    }

    /// Raises the high-water mark to `seq`, a sequence this process saw handed out (published or
    /// delivered live) that MongoDB may not hold yet: done before a lost stream is made again,
    /// so the new stream starts after it.
    pub async fn raise_handed_out(&self, seq: u64) -> Result<(), StoreError> {
        self.bounded("high-water mark", self.raise_meta_seq(HIGH, seq))
            .await
    }

    async fn insert_once(&self, events: &[Arc<Event>]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let docs = events.iter().map(|e| to_doc(e));
        match self.events.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) => match e.kind.as_ref() {
                ErrorKind::InsertMany(failure)
                    if failure.write_concern_error.is_none()
                        && failure
                            .write_errors
                            .iter()
                            .flatten()
                            .all(|w| w.code == DUPLICATE_KEY) =>
                {
                    Ok(())
                }
                _ => Err(self.failed(e)),
            },
        }
    }

    /// Events matching `filter` with `after < seq <= upper`, at most `limit`, in order. A read that
    /// gets no answer within the backend timeout is tried once more on another connection.
    pub async fn read(
        &self,
        filter: &TopicFilter,
        after: u64,
        upper: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        match self
            .bounded("read", self.read_once(filter, after, upper, limit))
            .await
        {
            Err(StoreError::Unavailable(e)) if e.is::<TimedOut>() => {
                self.bounded("read", self.read_once(filter, after, upper, limit))
                    .await
            }
            other => other,
        }
    }

    /// One replay page of `query` from what MongoDB keeps up to `upper` (at most `head`). A full
    /// page continues after its last event; a short one covers everything up to `upper`, and ends
    /// the history when `upper` is the head.
    pub async fn page(&self, query: &ReadQuery, upper: u64, head: u64) -> Result<Page, StoreError> {
        let events = self
            .read(&query.filter, query.after, upper, query.limit)
            .await?;
        let full = events.len() >= query.limit;
        let next_after = match events.last() {
            Some(last) if full => last.seq,
            _ => upper,
        };
        Ok(Page {
            events,
            next_after,
            end: !full && upper >= head,
        })
    }

    async fn read_once(
        &self,
        filter: &TopicFilter,
        after: u64,
        upper: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        if upper <= after || limit == 0 {
            return Ok(Vec::new());
        }
        let mut query = doc! { "_id": { "$gt": seq(after), "$lte": seq(upper) } };
        if let Some(topics) = topic_condition(filter) {
            query.insert("topic", topics);
        }
        self.find_events(query, doc! { "_id": 1 }, limit).await
    }

    /// The events a query finds, in `sort` order, at most `limit`.
    async fn find_events(
        &self,
        query: Document,
        sort: Document,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let cursor = self
            .events
            .find(query)
            .sort(sort)
            .limit(limit as i64)
            .await
            .map_err(|e| self.failed(e))?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(|e| self.failed(e))?;
        Ok(docs.iter().filter_map(from_doc).collect())
    }

    /// The newest `limit` events of `topic` up to `head`, oldest first.
    pub async fn latest(
        &self,
        topic: &Topic,
        limit: usize,
        head: u64,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        self.bounded("latest", self.latest_once(topic, limit, head))
            .await
    }

    async fn latest_once(
        &self,
        topic: &Topic,
        limit: usize,
        head: u64,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let query = doc! { "topic": topic.as_str(), "_id": { "$gt": 0_i64, "$lte": seq(head) } };
        let mut events = self
            .find_events(query, doc! { "topic": 1, "_id": -1 }, limit)
            .await?;
        events.reverse();
        Ok(events)
    }

    /// The first sequence MongoDB still holds, if any. Read every time: it moves both ways (trim
    /// raises it, the archiver's repair of an old event lowers it), and a stale value would turn
    /// into a wrong verdict.
    pub async fn earliest(&self) -> Result<Option<u64>, StoreError> {
        self.edge(1).await
    }

    /// The last sequence MongoDB holds, or 0.
    pub async fn head(&self) -> Result<u64, StoreError> {
        Ok(self.edge(-1).await?.unwrap_or(0))
    }

    async fn edge(&self, direction: i32) -> Result<Option<u64>, StoreError> {
        self.bounded("edge", self.edge_once(direction)).await
    }

    async fn edge_once(&self, direction: i32) -> Result<Option<u64>, StoreError> {
        let found = self
            .events
            .find_one(doc! { "_id": { "$gt": 0_i64, "$lte": i64::MAX } })
            .sort(doc! { "_id": direction })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(|e| self.failed(e))?;
        Ok(found.and_then(|d| d.get_i64("_id").ok()).map(|s| s as u64))
    }
}
