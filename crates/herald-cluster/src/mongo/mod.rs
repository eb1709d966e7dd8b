//! The MongoDB store: the long history, the idempotency records, and the deployment's epoch.
//!
//! Collections (see `proto/README.md`):
//! - `events`: `{_id: seq, topic, type, data, ts}`; `_id` is the JetStream sequence, so every
//!   write is idempotent and a range of sequences is a range of `_id`. Indexes: `(topic, _id)` for
//!   a connection's topics, and `ts` for retention, which removes a prefix of the sequence.
//! - `idempotency`: `{_id: key, seqs, fingerprint, expires}`, TTL on `expires`.
//! - `meta`: `{_id: "epoch", epoch}`: the epoch of the sequence the events belong to;
//!   `{_id: "high", seq}`: the highest sequence ever written to `events`; in the Redis
//!   bus mode also `{_id: "seq", seq}`, the counter that sequences events (see
//!   [`Mongo::append_sequenced`]).
//!
//! Every range read is bounded on both sides (`_id > after and _id <= upper`).
//!
//! The handle and its plumbing (connection, indexes, timeouts, health, the epoch, retention) are
//! here; each concern that uses it has a file:
//! - [`events`]: writing and reading events (replay pages, a topic's latest, the bounds);
//! - [`idempotency`]: the idempotency records;
//! - [`sequencer`]: the Redis bus mode's transaction that sequences and stores a batch;
//! - [`codec`]: events to and from documents, topic filters to queries.

mod codec;
mod events;
mod idempotency;
mod sequencer;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::TryStreamExt;
use herald_core::{
    Epoch, Event, EventType, NewEvent, Topic, TopicFilter, TraceContext, event::parse_data,
};
use herald_store::{Page, StoreError};
use mongodb::{
    Client, Collection, IndexModel,
    bson::{Bson, DateTime, Document, doc},
    error::{ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT},
    options::{ClientOptions, IndexOptions, ReturnDocument, WriteConcern},
};

use crate::ClusterConfig;

use codec::{from_doc, seq, to_doc, topic_condition};
pub use events::Reader;
pub use sequencer::Sequenced;

/// MongoDB's duplicate-key error.
const DUPLICATE_KEY: i32 = 11000;

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
    /// The last first sequence [`Mongo::earliest`] found (1 while it has found none), where its
    /// next search starts.
    earliest_seen: Arc<AtomicU64>,
}

impl Mongo {
    /// Connects and creates the indexes.
    pub async fn connect(config: &ClusterConfig) -> anyhow::Result<Self> {
        let mut options = ClientOptions::parse(config.mongodb_uri.expose()).await?;
        options.app_name.get_or_insert_with(|| "herald".to_owned());
        options.server_selection_timeout = Some(config.backend_timeout);
        options.connect_timeout = Some(config.backend_timeout);
        durable_writes(&mut options);
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
            earliest_seen: Arc::new(AtomicU64::new(1)),
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
        // Retention removes a prefix of the sequence (see `trim`). A TTL index on `ts`, made by an
        // earlier Herald, would remove events out of sequence order: it goes.
        if let Err(e) = self.events.drop_index("ts_ttl").await {
            tracing::debug!(error = %e, "no TTL index on events.ts to drop");
        }
        self.events
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "ts": 1, "_id": 1 })
                    .options(IndexOptions::builder().name("ts_seq".to_owned()).build())
                    .build(),
            )
            .await?;
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

    /// The `seq` of the `meta` document `id` (a sequence mark), or 0.
    async fn meta_seq(&self, id: &str) -> Result<u64, StoreError> {
        let read = async {
            let found = self
                .meta
                .find_one(doc! { "_id": id })
                .await
                .map_err(|e| self.failed(e))?;
            Ok(found
                .and_then(|d| d.get_i64("seq").ok())
                .map_or(0, |s| s.max(0) as u64))
        };
        self.bounded("meta", read).await
    }

    /// Raises the `seq` of the `meta` document `id` to at least `to`.
    async fn raise_meta_seq(&self, id: &str, to: u64) -> Result<(), StoreError> {
        self.meta
            .update_one(doc! { "_id": id }, doc! { "$max": { "seq": seq(to) } })
            .upsert(true)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
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

    /// Removes events past retention (a prefix of the sequence) and expired idempotency records.
    /// The idempotency TTL index does the latter on MongoDB's own schedule (once a minute); this
    /// makes it exact. Events have no TTL index: only this removes them, every `--trim-interval`.
    pub async fn trim(&self) -> Result<(), StoreError> {
        self.bounded("trim", self.trim_once()).await
    }

    async fn trim_once(&self) -> Result<(), StoreError> {
        if let Some(retention) = self.retention {
            let cutoff = DateTime::from_millis(
                DateTime::now().timestamp_millis() - retention.as_millis() as i64,
            );
            // Everything up to the newest event stamped before the cutoff goes, so what is kept
            // is always a suffix of the sequence. (`ts` is each ingest's clock, taken before
            // sequencing: deleting by `ts` alone could remove n + 1 and keep n — a hole that
            // replays and verdicts would not see.)
            let newest_old = self
                .events
                .find_one(doc! { "ts": { "$gt": DateTime::from_millis(0), "$lt": cutoff } })
                .sort(doc! { "ts": -1, "_id": -1 })
                .projection(doc! { "_id": 1 })
                .await
                .map_err(|e| self.failed(e))?;
            if let Some(through) = newest_old.and_then(|d| d.get_i64("_id").ok()) {
                self.events
                    .delete_many(doc! { "_id": { "$gt": 0_i64, "$lte": through } })
                    .await
                    .map_err(|e| self.failed(e))?;
            }
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

/// Every write waits for a majority of the replica set, journaled, unless the connection string
/// says otherwise (`w=`, `journal=`): a 201 in the Redis bus mode (whose commit point is the
/// MongoDB transaction) and the archiver's acknowledgement to JetStream must mean the write
/// survives the loss of the primary, not only that one server took it.
fn durable_writes(options: &mut ClientOptions) {
    if options.write_concern.is_none() {
        let mut concern = WriteConcern::majority();
        concern.journal = Some(true);
        options.write_concern = Some(concern);
    }
}

/// A MongoDB operation got no answer within the backend timeout.
#[derive(Debug, thiserror::Error)]
#[error("mongodb did not answer within the backend timeout")]
struct TimedOut;

#[cfg(test)]
mod tests {
    use mongodb::options::Acknowledgment;

    use super::*;

    #[tokio::test]
    async fn writes_wait_for_a_journaled_majority_unless_the_uri_says_otherwise() {
        let mut options = ClientOptions::parse("mongodb://127.0.0.1:1/")
            .await
            .unwrap();
        durable_writes(&mut options);
        let concern = options.write_concern.unwrap();
        assert_eq!(concern.w, Some(Acknowledgment::Majority));
        assert_eq!(concern.journal, Some(true));
        let mut options = ClientOptions::parse("mongodb://127.0.0.1:1/?w=1")
            .await
            .unwrap();
        durable_writes(&mut options);
        assert_eq!(
            options.write_concern.unwrap().w,
            Some(Acknowledgment::Nodes(1))
        );
    }
}
