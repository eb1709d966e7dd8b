//! The MongoDB store: the long history, the idempotency records, and the deployment's epoch.
//!
//! Collections (see `proto/README.md`):
//! - `events`: `{_id: seq, topic, type, data, ts}`; `_id` is the JetStream sequence, so every
//!   write is idempotent and a range of sequences is a range of `_id`. Indexes: `(topic, _id)` for
//!   a connection's topics, and a TTL index on `ts` for retention.
//! - `idempotency`: `{_id: key, seqs, fingerprint, expires}`, TTL on `expires`.
//! - `meta`: `{_id: "epoch", epoch}`: the epoch of the sequence the events belong to; in the Redis
//!   bus mode also `{_id: "seq", seq}`, the counter that sequences events (see
//!   [`Mongo::append_sequenced`]).
//!
//! Every range read is bounded on both sides (`_id > after and _id <= upper`).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::TryStreamExt;
use herald_core::{
    Epoch, Event, EventType, NewEvent, Topic, TopicFilter, TraceContext, event::parse_data,
};
use herald_store::{Page, ReadQuery, StoreError};
use mongodb::{
    Client, Collection, IndexModel,
    bson::{Bson, DateTime, Document, doc},
    error::{ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT},
    options::{ClientOptions, IndexOptions, ReturnDocument},
};

use crate::ClusterConfig;

/// MongoDB's duplicate-key error.
const DUPLICATE_KEY: i32 = 11000;
/// How many times a sequencing transaction that lost a write conflict is tried again.
const TRANSACTION_ATTEMPTS: u32 = 50;

/// What [`Mongo::append_sequenced`] did.
#[derive(Debug, Clone)]
pub enum Sequenced {
    /// The events were stored under these sequences.
    Stored(Vec<Arc<Event>>),
    /// The idempotency key was answered before: nothing was stored; these are its sequences.
    Duplicate(Vec<u64>),
}

/// A handle on Herald's MongoDB database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Mongo {
    client: Client,
    events: Collection<Document>,
    idempotency: Collection<Document>,
    meta: Collection<Document>,
    retention: Option<Duration>,
    idempotency_window: Duration,
    timeout: Duration,
    healthy: Arc<AtomicBool>,
}

impl Mongo {
    /// Connects and creates the indexes.
    pub async fn connect(config: &ClusterConfig) -> anyhow::Result<Self> {
        let mut options = ClientOptions::parse(&config.mongodb_uri).await?;
        options.app_name.get_or_insert_with(|| "herald".to_owned());
        options.server_selection_timeout = Some(config.backend_timeout);
        options.connect_timeout = Some(config.backend_timeout);
        let client = Client::with_options(options)?;
        let db = client.database(&config.mongodb_database);
        let mongo = Self {
            events: db.collection("events"),
            idempotency: db.collection("idempotency"),
            meta: db.collection("meta"),
            client,
            retention: config.retention_age,
            idempotency_window: config.idempotency_window,
            timeout: config.backend_timeout,
            healthy: Arc::new(AtomicBool::new(true)),
        };
        mongo.create_indexes().await?;
        Ok(mongo)
    }

    async fn create_indexes(&self) -> anyhow::Result<()> {
        self.events
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "topic": 1, "_id": 1 })
                    .options(IndexOptions::builder().name("topic_seq".to_owned()).build())
                    .build(),
            )
            .await?;
        if let Some(retention) = self.retention {
            let ttl = IndexModel::builder()
                .keys(doc! { "ts": 1 })
                .options(
                    IndexOptions::builder()
                        .name("ts_ttl".to_owned())
                        .expire_after(retention)
                        .build(),
                )
                .build();
            if self.events.create_index(ttl.clone()).await.is_err() {
                // Another retention than the index was made with: replace it.
                self.events.drop_index("ts_ttl").await?;
                self.events.create_index(ttl).await?;
            }
        }
        self.idempotency
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "expires": 1 })
                    .options(
                        IndexOptions::builder()
                            .name("expires_ttl".to_owned())
                            .expire_after(Duration::ZERO)
                            .build(),
                    )
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// A CLIENT span for an operation on a collection, by the database conventions (when traces
    /// are exported).
    pub fn span(&self, operation: &'static str, collection: &'static str) -> tracing::Span {
        if !herald_telemetry::traces_enabled() {
            return tracing::Span::none();
        }
        tracing::info_span!(
            "mongodb",
            otel.name = %format_args!("{operation} {collection}"),
            otel.kind = "client",
            db.system.name = "mongodb",
            db.operation.name = operation,
            db.collection.name = collection,
            db.namespace = self.events.namespace().db.as_str(),
        )
    }

    /// Writes events; those already there are left as they are (the write is idempotent).
    pub async fn insert(&self, events: &[Arc<Event>]) -> Result<(), StoreError> {
        self.bounded("insert", self.insert_once(events)).await
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

    /// The epoch MongoDB's events belong to, if it has one.
    pub async fn epoch(&self) -> Result<Option<Epoch>, StoreError> {
        let found = self
            .meta
            .find_one(doc! { "_id": "epoch" })
            .await
            .map_err(|e| self.failed(e))?;
        Ok(found
            .and_then(|d| d.get_i64("epoch").ok())
            .map(|e| Epoch(e as u32)))
    }

    /// Records `epoch` unless MongoDB already has one; answers the one it has.
    pub async fn adopt_epoch(&self, epoch: Epoch) -> Result<Epoch, StoreError> {
        self.meta
            .update_one(
                doc! { "_id": "epoch" },
                doc! { "$setOnInsert": { "epoch": i64::from(epoch.0) } },
            )
            .upsert(true)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(self.epoch().await?.unwrap_or(epoch))
    }

    /// The first answer to an idempotency key: its sequences and request fingerprint.
    pub async fn idempotency(&self, key: &str) -> Result<Option<(Vec<u64>, u64)>, StoreError> {
        self.bounded("idempotency", self.idempotency_once(key))
            .await
    }

    async fn idempotency_once(&self, key: &str) -> Result<Option<(Vec<u64>, u64)>, StoreError> {
        let found = self
            .idempotency
            .find_one(doc! { "_id": key, "expires": { "$gt": DateTime::now() } })
            .await
            .map_err(|e| self.failed(e))?;
        Ok(found.and_then(|d| {
            let seqs = d
                .get_array("seqs")
                .ok()?
                .iter()
                .filter_map(Bson::as_i64)
                .map(|s| s as u64)
                .collect();
            Some((seqs, d.get_i64("fingerprint").ok()? as u64))
        }))
    }

    /// Records the answer to an idempotency key for the idempotency window.
    pub async fn remember(
        &self,
        key: &str,
        seqs: &[u64],
        fingerprint: u64,
    ) -> Result<(), StoreError> {
        self.bounded("remember", self.remember_once(key, seqs, fingerprint))
            .await
    }

    async fn remember_once(
        &self,
        key: &str,
        seqs: &[u64],
        fingerprint: u64,
    ) -> Result<(), StoreError> {
        let expires = self.expiry();
        let seqs: Vec<i64> = seqs.iter().map(|&s| seq(s)).collect();
        self.idempotency
            .update_one(
                doc! { "_id": key },
                doc! { "$setOnInsert": { "seqs": seqs, "fingerprint": fingerprint as i64, "expires": expires } },
            )
            .upsert(true)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Sequences and stores a batch in one transaction: the Redis bus mode's commit point, where no
    /// JetStream assigns sequences. The transaction increments the `seq` counter by the batch's
    /// length, inserts the events under the sequences it got, and records the idempotency key.
    ///
    /// Concurrent appends (several ingests) conflict on the counter document, so MongoDB lets one
    /// commit and the other tries again after it: sequences become visible in order, with no
    /// hole. A reader that sees sequence `n` therefore also sees every sequence before it, which
    /// is what lets gateways fill any gap from here.
    pub async fn append_sequenced(
        &self,
        batch: &[NewEvent],
        time_ms: u64,
        trace: Option<TraceContext>,
        idempotency: Option<(&str, u64)>,
    ) -> Result<Sequenced, StoreError> {
        if let Some((key, fingerprint)) = idempotency {
            if let Some(found) = self.answered(key, fingerprint).await? {
                return Ok(found);
            }
            // An expired record the TTL monitor has not removed yet would block the insert.
            self.bounded("expire", async {
                self.idempotency
                    .delete_one(doc! { "_id": key, "expires": { "$lte": DateTime::now() } })
                    .await
                    .map_err(|e| self.failed(e))
            })
            .await?;
        }
        for attempt in 1.. {
            let attempt_result = self
                .bounded("append", async {
                    Ok(self.append_once(batch, time_ms, trace, idempotency).await)
                })
                .await?;
            match attempt_result {
                Ok(events) => return Ok(Sequenced::Stored(events)),
                Err(Attempt::Conflict) if attempt < TRANSACTION_ATTEMPTS => {
                    // Another append holds the counter: let it commit.
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(
                        1..=(2 * attempt as u64),
                    )))
                    .await;
                }
                Err(Attempt::Conflict) => {
                    return Err(StoreError::Unavailable(
                        "the sequence counter stayed contended".into(),
                    ));
                }
                Err(Attempt::Duplicate) => {
                    let found = match idempotency {
                        Some((key, fingerprint)) => self.answered(key, fingerprint).await?,
                        None => None,
                    };
                    // Without a record, the duplicate was a sequence: something other than the
                    // counter writes events here (a JetStream-mode ingest on the same database).
                    return found.ok_or_else(|| {
                        StoreError::Unavailable(
                            "a sequence the counter handed out is taken: is another kind of \
                             ingest writing to this database?"
                                .into(),
                        )
                    });
                }
                Err(Attempt::Failed(e)) => return Err(self.failed(e)),
            }
        }
        unreachable!("the loop returns")
    }

    /// The first answer to a key, or a conflict when `fingerprint` differs.
    async fn answered(&self, key: &str, fingerprint: u64) -> Result<Option<Sequenced>, StoreError> {
        match self.idempotency(key).await? {
            Some((_, first)) if first != fingerprint => Err(StoreError::IdempotencyConflict),
            Some((seqs, _)) => Ok(Some(Sequenced::Duplicate(seqs))),
            None => Ok(None),
        }
    }

    async fn append_once(
        &self,
        batch: &[NewEvent],
        time_ms: u64,
        trace: Option<TraceContext>,
        idempotency: Option<(&str, u64)>,
    ) -> Result<Vec<Arc<Event>>, Attempt> {
        let mut session = self.client.start_session().await?;
        session.start_transaction().await?;
        let counter = self
            .meta
            .find_one_and_update(
                doc! { "_id": "seq" },
                doc! { "$inc": { "seq": batch.len() as i64 } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut session)
            .await?
            .and_then(|d| d.get_i64("seq").ok())
            .ok_or_else(|| Attempt::Failed(mongodb::error::Error::custom("no sequence counter")))?;
        let first = counter as u64 + 1 - batch.len() as u64;
        let events: Vec<Arc<Event>> = batch
            .iter()
            .zip(first..)
            .map(|(e, seq)| {
                Arc::new(Event {
                    seq,
                    topic: e.topic.clone(),
                    event_type: e.event_type.clone(),
                    data: e.data.clone(),
                    time_ms,
                    trace,
                })
            })
            .collect();
        self.events
            .insert_many(events.iter().map(|e| to_doc(e)))
            .session(&mut session)
            .await?;
        if let Some((key, fingerprint)) = idempotency {
            let seqs: Vec<i64> = events.iter().map(|e| seq(e.seq)).collect();
            self.idempotency
                .insert_one(doc! {
                    "_id": key,
                    "seqs": seqs,
                    "fingerprint": fingerprint as i64,
                    "expires": self.expiry(),
                })
                .session(&mut session)
                .await?;
        }
        loop {
            match session.commit_transaction().await {
                Ok(()) => return Ok(events),
                Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Raises the sequence counter to at least `head` (MongoDB's last event): a database that
    /// JetStream sequenced before continues after its last event.
    pub async fn raise_counter(&self, head: u64) -> Result<(), StoreError> {
        self.meta
            .update_one(doc! { "_id": "seq" }, doc! { "$max": { "seq": seq(head) } })
            .upsert(true)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    fn expiry(&self) -> DateTime {
        DateTime::from_millis(
            DateTime::now().timestamp_millis() + self.idempotency_window.as_millis() as i64,
        )
    }

    /// Removes events past retention and expired idempotency records. The TTL indexes do the
    /// same on MongoDB's own schedule (once a minute); this makes retention exact.
    pub async fn trim(&self) -> Result<(), StoreError> {
        self.bounded("trim", self.trim_once()).await
    }

    async fn trim_once(&self) -> Result<(), StoreError> {
        if let Some(retention) = self.retention {
            let cutoff = DateTime::from_millis(
                DateTime::now().timestamp_millis() - retention.as_millis() as i64,
            );
            self.events
                .delete_many(doc! { "ts": { "$lt": cutoff } })
                .await
                .map_err(|e| self.failed(e))?;
        }
        self.idempotency
            .delete_many(doc! { "expires": { "$lte": DateTime::now() } })
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Runs `op`, failing it as unavailable if MongoDB does not answer within the backend timeout:
    /// the driver has no overall operation timeout, and a connection must never wait for ever.
    async fn bounded<T>(
        &self,
        what: &'static str,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tracing::trace!(operation = what, "mongodb operation");
        match tokio::time::timeout(self.timeout, op).await {
            Ok(result) => {
                tracing::trace!(
                    operation = what,
                    ok = result.is_ok(),
                    "mongodb operation done"
                );
                result
            }
            Err(_) => {
                tracing::warn!(operation = what, timeout = ?self.timeout, "mongodb did not answer in time");
                Err(StoreError::Unavailable(Box::new(TimedOut)))
            }
        }
    }

    /// Asks the server for a ping; records the answer for readiness.
    pub async fn ping(&self) -> bool {
        let ok = self
            .client
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .is_ok();
        self.healthy.store(ok, Ordering::Release);
        ok
    }

    /// Whether the last operation or ping reached the server.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Every MongoDB failure is taken as "retry later" (503 on a publish): a restarting or
    /// unreachable server is by far the likeliest cause, and the operation is idempotent.
    fn failed(&self, e: mongodb::error::Error) -> StoreError {
        if matches!(
            e.kind.as_ref(),
            ErrorKind::ServerSelection { .. }
                | ErrorKind::Io(_)
                | ErrorKind::ConnectionPoolCleared { .. }
        ) {
            self.healthy.store(false, Ordering::Release);
        }
        StoreError::Unavailable(Box::new(e))
    }
}

/// How one sequencing transaction ended, when it did not commit.
enum Attempt {
    /// It lost a write conflict (another append held the counter): try again.
    Conflict,
    /// The idempotency key was recorded by another append meanwhile.
    Duplicate,
    /// Anything else.
    Failed(mongodb::error::Error),
}

impl From<mongodb::error::Error> for Attempt {
    fn from(e: mongodb::error::Error) -> Self {
        if e.contains_label(TRANSIENT_TRANSACTION_ERROR) {
            return Self::Conflict;
        }
        let duplicate = match e.kind.as_ref() {
            ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => {
                w.code == DUPLICATE_KEY
            }
            ErrorKind::InsertMany(f) => f
                .write_errors
                .iter()
                .flatten()
                .any(|w| w.code == DUPLICATE_KEY),
            ErrorKind::Command(c) => c.code == DUPLICATE_KEY || c.code == WRITE_CONFLICT,
            _ => false,
        };
        if duplicate {
            // In `idempotency` it is the key, recorded by another append; in `events` only a
            // writer that bypasses the counter can cause it (see `append_sequenced`).
            if let ErrorKind::Command(c) = e.kind.as_ref()
                && c.code == WRITE_CONFLICT
            {
                return Self::Conflict;
            }
            return Self::Duplicate;
        }
        Self::Failed(e)
    }
}

/// MongoDB's write-conflict error (normally labelled transient).
const WRITE_CONFLICT: i32 = 112;

/// A MongoDB operation got no answer within the backend timeout.
#[derive(Debug, thiserror::Error)]
#[error("mongodb did not answer within the backend timeout")]
struct TimedOut;

fn seq(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

fn to_doc(e: &Event) -> Document {
    let mut d = doc! {
        "_id": seq(e.seq),
        "topic": e.topic.as_str(),
        "type": e.event_type.as_str(),
        "data": e.data.get(),
        "ts": DateTime::from_millis(e.time_ms as i64),
    };
    if let Some(trace) = e.trace {
        d.insert("traceparent", trace.to_string());
    }
    d
}

fn from_doc(d: &Document) -> Option<Arc<Event>> {
    let event = (|| {
        Some(Event {
            seq: d.get_i64("_id").ok()? as u64,
            topic: Topic::new(d.get_str("topic").ok()?).ok()?,
            event_type: EventType::new(d.get_str("type").ok()?).ok()?,
            data: parse_data(d.get_str("data").ok()?.to_owned()).ok()?,
            time_ms: d.get_datetime("ts").ok()?.timestamp_millis() as u64,
            trace: d.get_str("traceparent").ok().and_then(TraceContext::parse),
        })
    })();
    if event.is_none() {
        tracing::warn!(id = ?d.get("_id"), "skipping a malformed event document");
    }
    event.map(Arc::new)
}

/// The `topic` condition for a filter, or `None` when it matches every topic.
fn topic_condition(filter: &TopicFilter) -> Option<Bson> {
    if filter.patterns().iter().any(|p| p.as_str() == ">") {
        return None;
    }
    let exact: Vec<&str> = filter.exact().iter().map(Topic::as_str).collect();
    let regexes: Vec<String> = filter
        .patterns()
        .iter()
        .map(|p| pattern_regex(p.as_str()))
        .collect();
    if regexes.is_empty() {
        return Some(doc! { "$in": exact }.into());
    }
    let mut alternatives = Vec::new();
    if !exact.is_empty() {
        alternatives.push(format!(
            "^(?:{})$",
            exact
                .iter()
                .map(|t| escape(t))
                .collect::<Vec<_>>()
                .join("|")
        ));
    }
    alternatives.extend(regexes);
    Some(doc! { "$regex": alternatives.join("|") }.into())
}

/// `scores.*` → `^scores\.[^.]+$`; `scores.>` → `^scores\..+$`.
fn pattern_regex(pattern: &str) -> String {
    let levels: Vec<String> = pattern
        .split('.')
        .map(|level| match level {
            "*" => "[^.]+".to_owned(),
            ">" => ".+".to_owned(),
            literal => escape(literal),
        })
        .collect();
    format!("^{}$", levels.join("\\."))
}

fn escape(literal: &str) -> String {
    literal.replace('.', "\\.").replace('-', "\\-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_anchored_regexes() {
        assert_eq!(pattern_regex("scores.*"), r"^scores\.[^.]+$");
        assert_eq!(pattern_regex("a-b.>"), r"^a\-b\..+$");
        let filter = TopicFilter::parse(["x.y", "scores.*"]).unwrap();
        let Some(Bson::Document(d)) = topic_condition(&filter) else {
            panic!()
        };
        assert_eq!(d.get_str("$regex").unwrap(), r"^(?:x\.y)$|^scores\.[^.]+$");
        assert!(topic_condition(&TopicFilter::parse([">"]).unwrap()).is_none());
    }
}
