//! Events: writes (idempotent on `_id`), bounded range reads, replay pages, a topic's latest
//! events and the bounds of what MongoDB holds.

use super::*;
use herald_core::event::now_ms;

/// How far apart the clocks that stamp events and run retention may be.
const CLOCK_SLACK_MS: u64 = 60_000;

/// How far past its last answer [`Mongo::earliest`] looks before it asks the sorted question.
const EARLIEST_NEAR: u64 = 1024;

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

    /// A replay read of `filter`'s events with `after < seq <= upper`: one cursor, opened at its
    /// first page and held for the next ones, fetching `batch` documents at a time.
    pub fn reader(&self, filter: &TopicFilter, after: u64, upper: u64, batch: usize) -> Reader {
        Reader {
            mongo: self.clone(),
            filter: filter.clone(),
            after,
            upper,
            batch: u32::try_from(batch.max(1)).unwrap_or(u32::MAX),
            cursor: None,
        }
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
    ///
    /// Asked first as two narrow range questions around the last answer: is anything below it
    /// (normally not: retention only raises it), and what is the first sequence within
    /// [`EARLIEST_NEAR`] of it. Only when either says it moved further is the sorted question
    /// asked. Every stream's resume verdict waits on this read, and a MongoDB-wire server without
    /// a sort-and-limit path on `_id` (the one the tests use) answers the sorted question by
    /// sorting the whole collection: about 0.5 s at 100,000 events, against 1–23 ms for the range
    /// questions. On MongoDB all three are index reads.
    pub async fn earliest(&self) -> Result<Option<u64>, StoreError> {
        self.bounded("edge", self.earliest_once()).await
    }

    async fn earliest_once(&self) -> Result<Option<u64>, StoreError> {
        let seen = self.earliest_seen.load(Ordering::Relaxed);
        let below = doc! { "_id": { "$gt": 0_i64, "$lt": seq(seen) } };
        if seen <= 1 || self.one_id(below, None).await?.is_none() {
            let near = seen.saturating_add(EARLIEST_NEAR);
            let near = doc! { "_id": { "$gte": seq(seen), "$lt": seq(near) } };
            if let Some(first) = self.one_id(near, Some(1)).await? {
                self.earliest_seen.store(first, Ordering::Relaxed);
                return Ok(Some(first));
            }
        }
        let first = self.edge_once(1).await?;
        // Nothing yet: the first event will be near the first sequence.
        self.earliest_seen
            .store(first.unwrap_or(1), Ordering::Relaxed);
        Ok(first)
    }

    /// The sequence of one event matching `range`: the first in `direction` (1 up, -1 down), or
    /// any one without it.
    async fn one_id(
        &self,
        range: Document,
        direction: Option<i32>,
    ) -> Result<Option<u64>, StoreError> {
        let mut find = self.events.find_one(range).projection(doc! { "_id": 1 });
        if let Some(direction) = direction {
            find = find.sort(doc! { "_id": direction });
        }
        let found = find.await.map_err(|e| self.failed(e))?;
        Ok(found.and_then(|d| d.get_i64("_id").ok()).map(|s| s as u64))
    }

    /// The last sequence MongoDB holds, or 0.
    pub async fn head(&self) -> Result<u64, StoreError> {
        Ok(self.edge(-1).await?.unwrap_or(0))
    }

    async fn edge(&self, direction: i32) -> Result<Option<u64>, StoreError> {
        self.bounded("edge", self.edge_once(direction)).await
    }

    async fn edge_once(&self, direction: i32) -> Result<Option<u64>, StoreError> {
        let all = doc! { "_id": { "$gt": 0_i64, "$lte": i64::MAX } };
        self.one_id(all, Some(direction)).await
    }
}

/// One replay's read of a range of MongoDB's events: a single query whose cursor is held from
/// page to page (the server keeps its place; each page is a `getMore`), not a query per page.
#[derive(Debug)]
pub struct Reader {
    mongo: Mongo,
    filter: TopicFilter,
    /// The last sequence the pages so far covered.
    after: u64,
    upper: u64,
    batch: u32,
    cursor: Option<mongodb::Cursor<Document>>,
}

impl Reader {
    /// The last sequence the pages so far covered.
    pub fn after(&self) -> u64 {
        self.after
    }

    /// The end of the range this reader reads.
    pub fn upper(&self) -> u64 {
        self.upper
    }

    /// The next events in order: at most `limit`, and past the first one at most about
    /// `max_bytes` of data; `true` with them once the range up to [`Reader::upper`] is covered.
    /// A page that gets no answer within the backend timeout is tried once more with a new
    /// cursor from the same position.
    pub async fn next(
        &mut self,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Arc<Event>>, bool), StoreError> {
        let mongo = self.mongo.clone();
        match mongo
            .bounded("read", self.next_once(limit, max_bytes))
            .await
        {
            Err(StoreError::Unavailable(e)) if e.is::<TimedOut>() => {
                mongo
                    .bounded("read", self.next_once(limit, max_bytes))
                    .await
            }
            other => other,
        }
    }

    /// The next replay page, in the terms of [`herald_store::Cursor`]: a page cut short by the
    /// limits continues after its last event; the page that covers the range ends the history
    /// when [`Reader::upper`] is the `head`.
    pub async fn page(
        &mut self,
        limit: usize,
        max_bytes: usize,
        head: u64,
    ) -> Result<Page, StoreError> {
        let (mut events, covered) = self.next(limit, max_bytes).await?;
        // Retention removes a prefix while the cursor reads; a removal that passed a page's first
        // event may have made a hole inside the page, which its caller could not see. Such a
        // page keeps only what follows the removal: it then starts late, which the caller checks
        // against the bounds (the `herald.resume` verdict), and the cursor starts again. Asked
        // only when the page's first event is about to expire (within a minute, for clocks that
        // differ), so a replay of younger events pays nothing for it.
        if let Some(retention) = self.mongo.retention
            && let Some(first) = events.first().cloned()
            && first.time_ms.saturating_add(retention.as_millis() as u64)
                < now_ms() + CLOCK_SLACK_MS
            && let Some(earliest) = self.mongo.earliest().await?
            && earliest > first.seq
        {
            events.retain(|e| e.seq >= earliest);
            self.cursor = None;
        }
        Ok(Page {
            next_after: self.after,
            end: covered && self.upper >= head,
            events,
        })
    }

    /// One page; the cursor is kept only when the page was read whole, so a page cut short by an
    /// error or the timeout starts again from the last position with a new cursor.
    async fn next_once(
        &mut self,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Arc<Event>>, bool), StoreError> {
        if self.upper <= self.after || limit == 0 {
            return Ok((Vec::new(), self.upper <= self.after));
        }
        let mut cursor = match self.cursor.take() {
            Some(cursor) => cursor,
            None => self.open().await?,
        };
        let (mut events, mut bytes, mut covered) = (Vec::new(), 0, false);
        while events.len() < limit && (events.is_empty() || bytes < max_bytes) {
            match cursor.try_next().await.map_err(|e| self.mongo.failed(e))? {
                Some(doc) => {
                    if let Some(event) = from_doc(&doc) {
                        bytes += event.data.get().len();
                        events.push(event);
                    }
                }
                None => {
                    covered = true;
                    break;
                }
            }
        }
        if covered {
            self.after = self.upper;
        } else {
            if let Some(last) = events.last() {
                self.after = last.seq;
            }
            self.cursor = Some(cursor);
        }
        Ok((events, covered))
    }

    async fn open(&mut self) -> Result<mongodb::Cursor<Document>, StoreError> {
        let mut query = doc! { "_id": { "$gt": seq(self.after), "$lte": seq(self.upper) } };
        if let Some(topics) = topic_condition(&self.filter) {
            query.insert("topic", topics);
        }
        self.mongo
            .events
            .find(query)
            .sort(doc! { "_id": 1 })
            .batch_size(self.batch)
            .await
            .map_err(|e| self.mongo.failed(e))
    }
}
