//! The in-memory store: the same contract as the embedded one, nothing on disk. The test double
//! for services and the backend of `--store memory`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use herald_core::{Bounds, Epoch, Event, NewEvent, Topic, event::now_ms};

use crate::{Appended, History, Idempotency, Page, ReadQuery, Store, StoreError, StoreOptions};

/// Events in a B-tree under one lock.
#[derive(Debug)]
pub struct MemoryStore {
    epoch: Epoch,
    options: StoreOptions,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    events: BTreeMap<u64, Arc<Event>>,
    /// key → (fingerprint, expires_ms, seqs)
    idempotency: HashMap<String, (u64, u64, Vec<u64>)>,
    head: u64,
    trimmed_through: u64,
    bytes: u64,
    last_time_ms: u64,
    closed: bool,
}

impl MemoryStore {
    /// An empty store with a new random epoch.
    pub fn new(options: StoreOptions) -> Self {
        Self {
            epoch: Epoch(fastrand::u32(1..)),
            options,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory store lock")
    }
}

#[async_trait]
impl History for MemoryStore {
    async fn read(&self, query: ReadQuery) -> Result<Page, StoreError> {
        let s = self.state();
        let limit = query.limit.max(1);
        let mut page = Page {
            next_after: query.after,
            ..Page::default()
        };
        for (&seq, event) in s.events.range(query.after + 1..) {
            if query.filter.matches(event.topic.as_str()) {
                if page.events.len() == limit {
                    return Ok(page);
                }
                page.events.push(Arc::clone(event));
                page.next_after = seq;
            }
        }
        page.end = true;
        page.next_after = page.next_after.max(s.head);
        Ok(page)
    }

    async fn latest(&self, topic: &Topic, limit: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        let s = self.state();
        let mut out: Vec<Arc<Event>> = s
            .events
            .values()
            .rev()
            .filter(|e| &e.topic == topic)
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        Ok(out)
    }

    async fn bounds(&self) -> Result<Bounds, StoreError> {
        let s = self.state();
        Ok(Bounds {
            epoch: self.epoch,
            earliest: s.trimmed_through + 1,
            head: s.head,
        })
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn append(
        &self,
        batch: Vec<NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Result<Appended, StoreError> {
        let mut s = self.state();
        if s.closed {
            return Err(StoreError::Closed);
        }
        let time = now_ms().max(s.last_time_ms);
        s.last_time_ms = time;
        if let Some(idem) = &idempotency
            && let Some((fingerprint, expires, seqs)) = s.idempotency.get(&idem.key)
            && *expires > time
        {
            if *fingerprint != idem.fingerprint {
                return Err(StoreError::IdempotencyConflict);
            }
            return Ok(Appended {
                epoch: self.epoch,
                seqs: seqs.clone(),
                events: Vec::new(),
                duplicate: true,
            });
        }
        let mut events = Vec::with_capacity(batch.len());
        for new in batch {
            s.head += 1;
            let event = Arc::new(Event::from_new(new, s.head, time));
            s.bytes += event.weight();
            s.events.insert(event.seq, Arc::clone(&event));
            events.push(event);
        }
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        if let Some(idem) = idempotency {
            let expires = time + self.options.idempotency_window.as_millis() as u64;
            s.idempotency
                .insert(idem.key, (idem.fingerprint, expires, seqs.clone()));
        }
        Ok(Appended {
            epoch: self.epoch,
            seqs,
            events,
            duplicate: false,
        })
    }

    async fn trim(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let cutoff = self
            .options
            .max_age
            .map(|a| now.saturating_sub(a.as_millis() as u64));
        let mut s = self.state();
        while let Some((&seq, event)) = s.events.first_key_value() {
            let too_old = cutoff.is_some_and(|c| event.time_ms < c);
            let too_big = self.options.max_bytes.is_some_and(|m| s.bytes > m);
            if !too_old && !too_big {
                break;
            }
            let weight = event.weight();
            s.events.remove(&seq);
            s.bytes -= weight;
            s.trimmed_through = seq;
        }
        if s.events.is_empty() {
            s.trimmed_through = s.head;
        }
        s.idempotency.retain(|_, (_, expires, _)| *expires > now);
        Ok(())
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.state().closed = true;
        Ok(())
    }
}
