//! The single writer thread: group commit of appends, and retention.

use std::sync::{Arc, atomic::Ordering};

use herald_core::{Epoch, Event, NewEvent};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::{
    BY_TOPIC, Command, EVENTS, IDEMPOTENCY, IDEMPOTENCY_EXPIRY, META, META_BYTES, META_EPOCH,
    META_HEAD, META_LAST_TIME, META_TRIMMED, Shared, codec,
};
use crate::{Appended, Idempotency, StoreError, StoreOptions};
use herald_core::event::now_ms;

/// The most appends committed together.
const MAX_GROUP: usize = 1024;
/// The most events removed by one retention transaction.
const MAX_TRIM: usize = 10_000;

/// What the writer owns: the sequence and the counters persisted in `meta`.
#[derive(Debug)]
pub(super) struct State {
    pub(super) epoch: Epoch,
    pub(super) head: u64,
    pub(super) trimmed_through: u64,
    bytes: u64,
    last_time_ms: u64,
    options: StoreOptions,
}

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

struct Request {
    batch: Vec<NewEvent>,
    idempotency: Option<Idempotency>,
}

struct Tables<'t> {
    events: Table<'t, u64, &'static [u8]>,
    by_topic: Table<'t, (&'static str, u64), ()>,
    idempotency: Table<'t, &'static str, &'static [u8]>,
    expiry: Table<'t, (u64, &'static str), ()>,
    meta: Table<'t, &'static str, u64>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            events: txn.open_table(EVENTS)?,
            by_topic: txn.open_table(BY_TOPIC)?,
            idempotency: txn.open_table(IDEMPOTENCY)?,
            expiry: txn.open_table(IDEMPOTENCY_EXPIRY)?,
            meta: txn.open_table(META)?,
        })
    }
}

impl State {
    /// Reads the persisted counters, creating the tables and a new epoch on first open.
    pub(super) fn load_or_init(db: &Database, options: StoreOptions) -> Result<Self, StoreError> {
        let txn = db.begin_write()?;
        let state = {
            let mut t = Tables::open(&txn)?;
            let get = |t: &Tables<'_>, key| -> Result<u64, StoreError> {
                Ok(t.meta.get(key)?.map(|v| v.value()).unwrap_or(0))
            };
            let stored = t.meta.get(META_EPOCH)?.map(|v| v.value());
            let epoch = match stored {
                Some(e) => e as u32,
                None => {
                    let e = fastrand::u32(1..);
                    t.meta.insert(META_EPOCH, u64::from(e))?;
                    e
                }
            };
            Self {
                epoch: Epoch(epoch),
                head: get(&t, META_HEAD)?,
                trimmed_through: get(&t, META_TRIMMED)?,
                bytes: get(&t, META_BYTES)?,
                last_time_ms: get(&t, META_LAST_TIME)?,
                options,
            }
        };
        txn.commit()?;
        Ok(state)
    }

    fn begin(shared: &Shared) -> Result<WriteTransaction, StoreError> {
        let mut txn = shared.db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(txn)
    }

    /// Writes a group of appends in one transaction and answers each once it is committed.
    fn commit_group(&mut self, shared: &Shared, requests: Vec<Request>, replies: Vec<Reply>) {
        let before = (self.head, self.bytes, self.last_time_ms);
        match self.write_group(shared, requests) {
            Ok(results) => {
                shared.head.store(self.head, Ordering::Release);
                shared.commits.fetch_add(1, Ordering::Relaxed);
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                (self.head, self.bytes, self.last_time_ms) = before;
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "store commit failed");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(
                        format!("commit failed: {e:?}").into(),
                    )));
                }
            }
        }
    }

    fn write_group(
        &mut self,
        shared: &Shared,
        requests: Vec<Request>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let txn = Self::begin(shared)?;
        let now = now_ms();
        let time = now.max(self.last_time_ms);
        let mut results = Vec::with_capacity(requests.len());
        {
            let mut t = Tables::open(&txn)?;
            for request in requests {
                results.push(self.append_one(&mut t, request, time)?);
            }
            t.meta.insert(META_HEAD, self.head)?;
            t.meta.insert(META_BYTES, self.bytes)?;
            t.meta.insert(META_LAST_TIME, time)?;
        }
        txn.commit()?;
        self.last_time_ms = time;
        Ok(results)
    }

    /// Appends one batch inside the group's transaction. The outer error aborts the group; the
    /// inner one answers only this request.
    fn append_one(
        &mut self,
        t: &mut Tables<'_>,
        request: Request,
        time: u64,
    ) -> Result<Result<Appended, StoreError>, StoreError> {
        if let Some(idem) = &request.idempotency
            && let Some(record) = IdemRecord::get(t, &idem.key)?
        {
            if record.expires_ms > time {
                return Ok(record.answer(self.epoch, idem.fingerprint));
            }
            t.expiry.remove((record.expires_ms, idem.key.as_str()))?;
        }
        let first = self.head + 1;
        let mut events = Vec::with_capacity(request.batch.len());
        for (i, new) in request.batch.into_iter().enumerate() {
            let event = Event::from_new(new, first + i as u64, time);
            t.events
                .insert(event.seq, codec::encode(&event).as_slice())?;
            t.by_topic.insert((event.topic.as_str(), event.seq), ())?;
            self.bytes += event.weight();
            events.push(Arc::new(event));
        }
        self.head += events.len() as u64;
        let seqs: Vec<u64> = (first..=self.head).collect();
        if let Some(idem) = &request.idempotency {
            let expires_ms = time + self.options.idempotency_window.as_millis() as u64;
            let record = IdemRecord {
                fingerprint: idem.fingerprint,
                expires_ms,
                first,
                count: seqs.len() as u64,
            };
            t.idempotency
                .insert(idem.key.as_str(), record.encode().as_slice())?;
            t.expiry.insert((expires_ms, idem.key.as_str()), ())?;
        }
        Ok(Ok(Appended {
            epoch: self.epoch,
            seqs,
            events,
            duplicate: false,
        }))
    }

    /// Removes events past the retention limits and expired idempotency keys, in bounded
    /// transactions.
    fn trim(&mut self, shared: &Shared) -> Result<(), StoreError> {
        loop {
            let now = now_ms();
            let txn = Self::begin(shared)?;
            let removed;
            {
                let mut t = Tables::open(&txn)?;
                removed = self.trim_events(&mut t, now)?;
                Self::trim_idempotency(&mut t, now)?;
                t.meta.insert(META_TRIMMED, self.trimmed_through)?;
                t.meta.insert(META_BYTES, self.bytes)?;
            }
            // Published before the commit: a reader whose snapshot lacks the removed events must
            // never see bounds that still include them (its page would start late and pass for
            // whole). A reader may see the new bounds with an older snapshot: a verdict a moment
            // early, never a silent jump.
            shared
                .trimmed_through
                .store(self.trimmed_through, Ordering::Release);
            txn.commit()?;
            if removed > 0 {
                tracing::debug!(
                    removed,
                    trimmed_through = self.trimmed_through,
                    "retention removed events"
                );
            }
            if removed < MAX_TRIM {
                return Ok(());
            }
        }
    }

    fn trim_events(&mut self, t: &mut Tables<'_>, now: u64) -> Result<usize, StoreError> {
        let cutoff = self
            .options
            .max_age
            .map(|age| now.saturating_sub(age.as_millis() as u64));
        let mut removed = 0;
        while removed < MAX_TRIM {
            let Some((seq, record)) = t
                .events
                .first()?
                .map(|(k, v)| (k.value(), v.value().to_vec()))
            else {
                break;
            };
            let header = codec::header(&record)?;
            let too_old = cutoff.is_some_and(|c| header.time_ms < c);
            let too_big = self.options.max_bytes.is_some_and(|m| self.bytes > m);
            if !too_old && !too_big {
                break;
            }
            t.events.remove(seq)?;
            t.by_topic.remove((header.topic, seq))?;
            self.bytes = self.bytes.saturating_sub(header.weight);
            self.trimmed_through = seq;
            removed += 1;
        }
        if t.events.is_empty()? {
            self.trimmed_through = self.head;
        }
        Ok(removed)
    }

    fn trim_idempotency(t: &mut Tables<'_>, now: u64) -> Result<(), StoreError> {
        for _ in 0..MAX_TRIM {
            let Some((expires, key)) = t
                .expiry
                .first()?
                .map(|(k, _)| (k.value().0, k.value().1.to_owned()))
            else {
                break;
            };
            if expires > now {
                break;
            }
            t.expiry.remove((expires, key.as_str()))?;
            t.idempotency.remove(key.as_str())?;
        }
        Ok(())
    }
}

/// What an idempotency key remembers: `fingerprint | expires_ms | first seq | count`, all u64 LE.
struct IdemRecord {
    fingerprint: u64,
    expires_ms: u64,
    first: u64,
    count: u64,
}

impl IdemRecord {
    fn get(t: &Tables<'_>, key: &str) -> Result<Option<Self>, StoreError> {
        let Some(value) = t.idempotency.get(key)? else {
            return Ok(None);
        };
        let bytes = value.value();
        let word = |i: usize| -> Result<u64, StoreError> {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| StoreError::Backend("corrupt idempotency record".into()))
        };
        Ok(Some(Self {
            fingerprint: word(0)?,
            expires_ms: word(1)?,
            first: word(2)?,
            count: word(3)?,
        }))
    }

    fn encode(&self) -> Vec<u8> {
        [self.fingerprint, self.expires_ms, self.first, self.count]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    fn answer(&self, epoch: Epoch, fingerprint: u64) -> Result<Appended, StoreError> {
        if fingerprint != self.fingerprint {
            return Err(StoreError::IdempotencyConflict);
        }
        Ok(Appended {
            epoch,
            seqs: (self.first..self.first + self.count).collect(),
            events: Vec::new(),
            duplicate: true,
        })
    }
}

/// The writer loop: takes the first waiting command, then everything else already queued (up to
/// [`MAX_GROUP`]), commits the appends together, then runs any retention requested. Returns when
/// every sender is gone; each append was answered after its commit, so nothing is pending.
pub(super) fn run(shared: Arc<Shared>, mut state: State, mut rx: mpsc::Receiver<Command>) {
    while let Some(first) = rx.blocking_recv() {
        let mut requests = Vec::new();
        let mut replies = Vec::new();
        let mut trims = Vec::new();
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Append {
                    batch,
                    idempotency,
                    reply,
                } => {
                    requests.push(Request { batch, idempotency });
                    replies.push(reply);
                }
                Command::Trim { reply } => trims.push(reply),
            }
            if requests.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        if !requests.is_empty() {
            state.commit_group(&shared, requests, replies);
        }
        for reply in trims {
            let _ = reply.send(state.trim(&shared));
        }
    }
    tracing::debug!(head = state.head, "store writer stopped");
}
