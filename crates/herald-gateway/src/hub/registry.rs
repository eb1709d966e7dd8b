//! Who is subscribed to what, and what happens when a subscriber is slow.
//!
//! Each subscriber has a bounded queue. The hub never waits for one: when a queue is full the
//! subscriber is marked lagged and skipped from then on, so it cannot slow the hub or the others
//! (G6). Its connection drains what it has, calls [`Subscription::rearm`] and catches up from the
//! window or the store (see `replay`), then goes on live. One that stops reading altogether is
//! cut off by the listener's write timeout and resumes later.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use std::collections::{HashMap, HashSet};

use herald_core::{Topic, TopicFilter};
use tokio::sync::mpsc::{self, error::TrySendError};

use super::{Delivery, Inner};

/// One subscriber, as the hub sees it.
#[derive(Debug)]
pub(super) struct Slot {
    id: u64,
    filter: TopicFilter,
    tx: mpsc::Sender<Delivery>,
    lagged: AtomicBool,
}

/// Every subscriber, indexed for the hub's fan-out.
#[derive(Debug, Default)]
pub(super) struct Registry {
    /// Subscribers with only exact topics, by topic.
    by_topic: HashMap<Topic, Vec<Arc<Slot>>>,
    /// Subscribers with at least one pattern; their whole filter is checked per event.
    patterned: Vec<Arc<Slot>>,
}

impl Slot {
    pub(super) fn new(id: u64, filter: TopicFilter, tx: mpsc::Sender<Delivery>) -> Self {
        Self {
            id,
            filter,
            tx,
            lagged: AtomicBool::new(false),
        }
    }

    /// Queues `delivery` unless the subscriber is lagged. A full queue marks it lagged: it is
    /// skipped until it re-arms. Answers the delivery back when it was not queued.
    pub(super) fn offer(&self, delivery: Delivery) -> Result<(), Delivery> {
        if self.lagged.load(Ordering::Acquire) {
            return Err(delivery);
        }
        self.tx.try_send(delivery).map_err(|e| match e {
            TrySendError::Full(d) => {
                self.lagged.store(true, Ordering::Release);
                d
            }
            TrySendError::Closed(d) => d,
        })
    }
}

impl Registry {
    /// Adds a subscriber.
    pub(super) fn insert(&mut self, slot: Arc<Slot>) {
        if slot.filter.patterns().is_empty() {
            for topic in slot.filter.exact() {
                self.by_topic
                    .entry(topic.clone())
                    .or_default()
                    .push(Arc::clone(&slot));
            }
        } else {
            self.patterned.push(slot);
        }
    }

    /// Removes a subscriber.
    fn remove(&mut self, slot: &Slot) {
        if slot.filter.patterns().is_empty() {
            for topic in slot.filter.exact() {
                if let Some(slots) = self.by_topic.get_mut(topic) {
                    slots.retain(|s| s.id != slot.id);
                    if slots.is_empty() {
                        self.by_topic.remove(topic);
                    }
                }
            }
        } else {
            self.patterned.retain(|s| s.id != slot.id);
        }
    }

    /// The subscribers an event on `topic` goes to.
    pub(super) fn matching<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Arc<Slot>> {
        let exact = self.by_topic.get(topic).into_iter().flatten();
        let patterned = self.patterned.iter().filter(|s| s.filter.matches(topic));
        exact.chain(patterned)
    }

    /// Every subscriber once (one with several topics is listed under each).
    fn all(&self) -> impl Iterator<Item = &Arc<Slot>> {
        let mut seen = HashSet::new();
        self.by_topic
            .values()
            .flatten()
            .chain(&self.patterned)
            .filter(move |s| seen.insert(s.id))
    }

    /// How many subscribers there are, and how many frames are queued for them all.
    pub(super) fn census(&self) -> (usize, i64) {
        let (mut count, mut queued) = (0, 0);
        for slot in self.all() {
            count += 1;
            queued += (slot.tx.max_capacity() - slot.tx.capacity()) as i64;
        }
        (count, queued)
    }

    /// Marks every subscriber lagged, and wakes it to catch up.
    pub(super) fn mark_all_lagged(&self) {
        for slot in self.all() {
            slot.lagged.store(true, Ordering::Release);
            // One waiting on an empty queue would otherwise notice only at its next heartbeat.
            let _ = slot.tx.try_send(Delivery::wake());
        }
    }
}

/// A subscriber's end of the hub: its queue and its lagged flag. Dropping it unregisters.
#[derive(Debug)]
pub struct Subscription {
    slot: Arc<Slot>,
    rx: mpsc::Receiver<Delivery>,
    hub: Arc<Inner>,
}

impl Subscription {
    pub(super) fn new(slot: Arc<Slot>, rx: mpsc::Receiver<Delivery>, hub: Arc<Inner>) -> Self {
        Self { slot, rx, hub }
    }

    /// The next queued delivery.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// The next queued delivery, if one is queued.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.rx.try_recv().ok()
    }

    /// Whether the queue is empty now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Whether the queue overflowed: the hub skips this subscriber until [`Self::rearm`].
    pub fn lagged(&self) -> bool {
        self.slot.lagged.load(Ordering::Acquire)
    }

    /// Resumes live delivery. Call it before reading the store to catch up, so every event is
    /// either in the catch-up read or in the queue.
    pub fn rearm(&self) {
        self.slot.lagged.store(false, Ordering::Release);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub
            .registry
            .write()
            .expect("hub registry")
            .remove(&self.slot);
    }
}
