//! The Redis bus mode's sequencer: one transaction takes sequences from a counter document,
//! inserts the events under them and records the idempotency key, so sequence `n` is visible
//! only after every sequence before it.

use super::*;

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

impl Mongo {
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

    /// The last sequence the counter handed out, or 0: the head of a Redis-bus deployment. It
    /// stays put when retention empties `events` (the maximum `_id` would fall to 0 and make
    /// every valid id `unknown`), and a transaction makes sequence `n` visible only with the
    /// counter at `n` or more.
    pub async fn sequenced_head(&self) -> Result<u64, StoreError> {
        self.meta_seq("seq").await
    }

    /// Raises the sequence counter to at least `head` (MongoDB's last event): a database that
    /// JetStream sequenced before continues after its last event.
    pub async fn raise_counter(&self, head: u64) -> Result<(), StoreError> {
        self.raise_meta_seq("seq", head).await
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
