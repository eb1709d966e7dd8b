//! Who is subscribed to what, and what happens when a subscriber is slow.
//!
//! Each subscriber has a bounded queue. The hub never waits for one: when a queue is full the
//! subscriber is marked lagged and skipped from then on, so it cannot slow the hub or the others
//! (G6). Its connection drains what it has, calls [`Subscription::rearm`] and catches up from the
//! window or the store (see `replay`), then goes on live. One that stops reading altogether is
//! cut off by the listener's write timeout and resumes later.
//!
//! A queue holds memory only while it holds frames: an idle subscriber's is empty, not a
//! preallocated block of `capacity` slots (a bounded tokio channel allocates 32 deliveries and
//! its shared state up front, about 2 KB per subscriber).

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Poll, Waker},
};

use std::collections::{HashMap, HashSet};

use herald_core::{Topic, TopicFilter};

use super::{Delivery, Inner};

/// One subscriber, as the hub sees it.
#[derive(Debug)]
pub(super) struct Slot {
    id: u64,
    filter: TopicFilter,
    /// Deliveries queued before the subscriber is marked lagged.
    capacity: usize,
    queue: Mutex<Queue>,
    lagged: AtomicBool,
}

/// A subscriber's queued deliveries, and the connection waiting for the next one.
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Delivery>,
    waker: Option<Waker>,
}

/// A queue emptied with more room than this gives its memory back (it held a burst).
const KEPT_ROOM: usize = 16;

/// Every subscriber, indexed for the hub's fan-out.
#[derive(Debug, Default)]
pub(super) struct Registry {
    /// Subscribers with only exact topics, by topic.
    by_topic: HashMap<Topic, Vec<Arc<Slot>>>,
    /// Subscribers with at least one pattern; their whole filter is checked per event.
    patterned: Vec<Arc<Slot>>,
}

impl Slot {
    pub(super) fn new(id: u64, filter: TopicFilter, capacity: usize) -> Self {
        Self {
            id,
            filter,
            capacity,
            queue: Mutex::default(),
            lagged: AtomicBool::new(false),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().expect("subscriber queue")
    }

    /// Queues `delivery`, unless the queue is full, and answers the waiting connection's waker
    /// (if it waits) for the caller to wake once it has queued everything at hand.
    fn push(&self, delivery: Delivery) -> Result<Option<Waker>, Delivery> {
        let mut queue = self.queue();
        if queue.items.len() >= self.capacity {
            return Err(delivery);
        }
        queue.items.push_back(delivery);
        Ok(queue.waker.take())
    }

    /// Queues an empty delivery and wakes the connection now.
    fn wake(&self) {
        if let Ok(Some(waker)) = self.push(Delivery::wake()) {
            waker.wake();
        }
    }

    /// Queues `delivery` unless the subscriber is lagged. A full queue marks it lagged: it is
    /// skipped until it re-arms. Answers the connection's waker to wake (see [`Self::push`]), or
    /// the delivery back when it was not queued.
    pub(super) fn offer(&self, delivery: Delivery) -> Result<Option<Waker>, Delivery> {
        if self.lagged.load(Ordering::Acquire) {
            return Err(delivery);
        }
        self.push(delivery).inspect_err(|_| {
            self.lagged.store(true, Ordering::Release);
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
            queued += slot.queue().items.len() as i64;
        }
        (count, queued)
    }

    /// Wakes every subscriber (a full queue is about to be read anyway).
    pub(super) fn wake_all(&self) {
        for slot in self.all() {
            slot.wake();
        }
    }

    /// Marks every subscriber lagged, and wakes it to catch up.
    pub(super) fn mark_all_lagged(&self) {
        for slot in self.all() {
            slot.lagged.store(true, Ordering::Release);
            // One waiting on an empty queue would otherwise notice only at its next heartbeat.
            slot.wake();
        }
    }
}

/// A subscriber's end of the hub: its queue and its lagged flag. Dropping it unregisters.
#[derive(Debug)]
pub struct Subscription {
    slot: Arc<Slot>,
    hub: Arc<Inner>,
}

impl Subscription {
    pub(super) fn new(slot: Arc<Slot>, hub: Arc<Inner>) -> Self {
        Self { slot, hub }
    }

    /// The next queued delivery (cancel-safe: a delivery is taken only when it is returned). The
    /// hub holds a subscriber until it is dropped, so there always is a next one to wait for.
    pub async fn recv(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next queued delivery, if one is queued.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        take(&mut self.slot.queue())
    }

    /// The topics and patterns it was registered with.
    pub fn filter(&self) -> &TopicFilter {
        &self.slot.filter
    }

    /// Polls for the next queued delivery (see [`Self::recv`]).
    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<Delivery>> {
        let mut queue = self.slot.queue();
        if let Some(delivery) = take(&mut queue) {
            return Poll::Ready(Some(delivery));
        }
        match &mut queue.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Whether the queue is empty now.
    pub fn is_empty(&self) -> bool {
        self.slot.queue().items.is_empty()
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

/// The first queued delivery; an emptied queue that held a burst gives its memory back.
fn take(queue: &mut Queue) -> Option<Delivery> {
    let delivery = queue.items.pop_front()?;
    if queue.items.is_empty() && queue.items.capacity() > KEPT_ROOM {
        queue.items = VecDeque::new();
    }
    Some(delivery)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: u64) -> Delivery {
        Delivery {
            seq,
            frame: bytes::Bytes::from_static(b"data: x\n\n"),
            trace: None,
        }
    }

    /// An idle subscriber's queue holds no memory; one that held a burst gives it back once
    /// emptied; a full one refuses (and the subscriber is marked lagged).
    #[test]
    fn a_queue_holds_memory_only_while_it_holds_frames() {
        let slot = Slot::new(1, TopicFilter::parse(["t"]).unwrap(), 64);
        assert_eq!(slot.queue().items.capacity(), 0);
        for seq in 1..=64 {
            slot.offer(delivery(seq)).unwrap();
        }
        assert_eq!(slot.offer(delivery(65)).unwrap_err().seq, 65);
        assert!(slot.lagged.load(Ordering::Acquire));
        let mut queue = slot.queue();
        let taken: Vec<u64> = std::iter::from_fn(|| take(&mut queue))
            .map(|d| d.seq)
            .collect();
        assert_eq!(taken, (1..=64).collect::<Vec<_>>());
        assert_eq!(queue.items.capacity(), 0, "the burst's memory was kept");
    }
}
