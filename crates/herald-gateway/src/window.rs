//! The recent window: the last events the hub delivered, kept encoded, so that resumes and
//! catch-ups inside it are served from memory instead of the store.
//!
//! When a gateway dies, its clients reconnect to the others with ids a few seconds old. Every
//! surviving gateway has delivered those events itself moments ago: serving them from here costs
//! no store read and no encoding (the frames are the ones the hub already built), so a reconnect
//! storm does not become a storm of store reads.
//!
//! The window covers a range of sequences: every event with a sequence in `[from, to]` is in it
//! (a sequence with no event, such as a gap the store skipped, is covered too). The hub pushes
//! each event before it hands it to any subscriber, so a subscriber registered before it reads
//! the window finds each event in the window, in its queue, or both (its connection drops
//! sequences it has already sent). The oldest events leave when the window's bytes exceed its
//! capacity; a gap the hub could not fill restarts it.

use std::{collections::VecDeque, sync::RwLock};

use bytes::Bytes;
use herald_core::{Topic, TopicFilter};

/// Bookkeeping bytes counted per event on top of its frame and topic.
const ENTRY_OVERHEAD: usize = 64;
/// Events examined per read, per event asked for: a narrow filter over a wide window is read in
/// several short pieces, so the hub never waits long for the lock.
const SCAN_FACTOR: usize = 16;

#[derive(Debug)]
struct Entry {
    seq: u64,
    topic: Topic,
    frame: Bytes,
}

#[derive(Debug)]
struct Covered {
    /// The first sequence covered.
    from: u64,
    /// The last sequence covered (`from - 1` when nothing is).
    to: u64,
    entries: VecDeque<Entry>,
    bytes: usize,
}

/// A page read from the window.
#[derive(Debug)]
pub struct WindowPage {
    /// The matching frames after the asked sequence, in order.
    pub frames: Vec<Bytes>,
    /// Everything up to this sequence has been looked at.
    pub next_after: u64,
    /// Nothing the window covered was left to look at.
    pub end: bool,
}

/// Recent events in sequence order, bounded in bytes. One writer (the hub task), many readers.
#[derive(Debug)]
pub struct Window {
    capacity: usize,
    covered: RwLock<Covered>,
}

impl Window {
    /// An empty window that covers nothing up to `head`, holding at most `capacity` bytes (0
    /// keeps nothing: every read goes to the store).
    pub fn new(capacity: usize, head: u64) -> Self {
        Self {
            capacity,
            covered: RwLock::new(Covered {
                from: head + 1,
                to: head,
                entries: VecDeque::new(),
                bytes: 0,
            }),
        }
    }

    /// Adds the event at `seq`; every sequence between the last covered one and `seq` is known to
    /// have no event.
    pub fn push(&self, seq: u64, topic: &Topic, frame: &Bytes) {
        let mut c = self.covered.write().expect("window");
        debug_assert!(seq > c.to, "the hub delivers in sequence order");
        // `to` follows the hub even when nothing is kept: a reader at `to` is up to date.
        c.to = seq;
        if self.capacity > 0 {
            c.entries.push_back(Entry {
                seq,
                topic: topic.clone(),
                frame: frame.clone(),
            });
            c.bytes += frame.len() + topic.as_str().len() + ENTRY_OVERHEAD;
        }
        while c.bytes > self.capacity {
            let Some(old) = c.entries.pop_front() else {
                break;
            };
            c.bytes -= old.frame.len() + old.topic.as_str().len() + ENTRY_OVERHEAD;
            c.from = old.seq + 1;
        }
        if c.entries.is_empty() {
            // Nothing kept (no capacity, or an event larger than all of it): cover nothing rather
            // than claim a sequence with no frame.
            c.from = c.to + 1;
        }
    }

    /// Every sequence up to `seq` is known to have no event beyond those pushed.
    pub fn cover(&self, seq: u64) {
        let mut c = self.covered.write().expect("window");
        if c.entries.is_empty() {
            // Nothing kept: covering nothing keeps the claim true, whatever the capacity.
            c.from = c.from.max(seq + 1);
        }
        c.to = c.to.max(seq);
    }

    /// The events before `seq` could not all be delivered: start again, covering nothing.
    pub fn restart(&self, seq: u64) {
        let mut c = self.covered.write().expect("window");
        c.entries.clear();
        c.bytes = 0;
        c.from = seq;
        c.to = seq - 1;
    }

    /// At most `limit` frames matching `filter` after `after`, and none past the one that brings
    /// them to `max_bytes`; `None` when the window does not cover the sequence right after
    /// `after` (read the store instead).
    pub fn read(
        &self,
        filter: &TopicFilter,
        after: u64,
        (limit, max_bytes): (usize, usize),
    ) -> Option<WindowPage> {
        let c = self.covered.read().expect("window");
        if after + 1 < c.from {
            return None;
        }
        let start = c.entries.partition_point(|e| e.seq <= after);
        let (mut frames, mut bytes) = (Vec::new(), 0);
        let mut next_after = after;
        for entry in c
            .entries
            .range(start..)
            .take(limit.saturating_mul(SCAN_FACTOR).max(1))
        {
            next_after = entry.seq;
            if filter.matches(entry.topic.as_str()) {
                bytes += entry.frame.len();
                frames.push(entry.frame.clone());
                if frames.len() >= limit || bytes >= max_bytes {
                    break;
                }
            }
        }
        let end = c.entries.back().is_none_or(|last| next_after >= last.seq);
        Some(WindowPage {
            frames,
            next_after: if end { c.to.max(after) } else { next_after },
            end,
        })
    }

    /// How many bytes the window holds (frames, topics and bookkeeping).
    pub fn bytes(&self) -> usize {
        self.covered.read().expect("window").bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(t: &str) -> Topic {
        Topic::new(t).unwrap()
    }

    fn filter(t: &str) -> TopicFilter {
        TopicFilter::parse([t]).unwrap()
    }

    fn frame(seq: u64) -> Bytes {
        Bytes::from(format!("id: {seq}\ndata: x\n\n"))
    }

    fn seqs(page: &WindowPage) -> Vec<u64> {
        page.frames
            .iter()
            .map(|f| {
                let text = std::str::from_utf8(f).unwrap();
                text[4..text.find('\n').unwrap()].parse().unwrap()
            })
            .collect()
    }

    #[test]
    fn reads_what_follows_a_covered_sequence_and_sends_older_ones_to_the_store() {
        let w = Window::new(1 << 20, 10);
        for seq in 11..=20 {
            w.push(
                seq,
                &topic(if seq % 2 == 0 { "a" } else { "b" }),
                &frame(seq),
            );
        }
        let page = w.read(&filter("a"), 10, (100, usize::MAX)).unwrap();
        assert_eq!(seqs(&page), [12, 14, 16, 18, 20]);
        assert!(page.end);
        assert_eq!(page.next_after, 20);
        // Paged: three at a time.
        let page = w.read(&filter(">"), 13, (3, usize::MAX)).unwrap();
        assert_eq!(seqs(&page), [14, 15, 16]);
        assert!(!page.end);
        assert_eq!(page.next_after, 16);
        // Up to date, or ahead of the hub: nothing to send, go live.
        let page = w.read(&filter(">"), 20, (3, usize::MAX)).unwrap();
        assert!(page.frames.is_empty() && page.end && page.next_after == 20);
        let page = w.read(&filter(">"), 25, (3, usize::MAX)).unwrap();
        assert!(page.frames.is_empty() && page.end && page.next_after == 25);
        // Before the window (9 is not covered): the store.
        assert!(w.read(&filter(">"), 8, (3, usize::MAX)).is_none());
        assert!(w.read(&filter(">"), 10, (3, usize::MAX)).is_some());
    }

    #[test]
    fn the_oldest_events_leave_when_the_bytes_run_out() {
        let size = frame(11).len() + 1 + ENTRY_OVERHEAD;
        let w = Window::new(size * 4, 10);
        for seq in 11..=20 {
            w.push(seq, &topic("a"), &frame(seq));
        }
        assert!(w.bytes() <= size * 4);
        assert!(
            w.read(&filter("a"), 15, (10, usize::MAX)).is_none(),
            "16 has left"
        );
        assert_eq!(
            seqs(&w.read(&filter("a"), 16, (10, usize::MAX)).unwrap()),
            [17, 18, 19, 20]
        );
    }

    #[test]
    fn covered_sequences_without_events_and_restarts() {
        let w = Window::new(1 << 20, 0);
        w.push(1, &topic("a"), &frame(1));
        // 2..=4 had no event (a gap fill read past them); 5 arrives.
        w.cover(4);
        w.push(5, &topic("a"), &frame(5));
        let page = w.read(&filter("a"), 0, (10, usize::MAX)).unwrap();
        assert_eq!(seqs(&page), [1, 5]);
        // 6..=9 could not be read: nothing before 10 is covered any more.
        w.restart(10);
        assert!(w.read(&filter("a"), 5, (10, usize::MAX)).is_none());
        let page = w.read(&filter("a"), 9, (10, usize::MAX)).unwrap();
        assert!(page.frames.is_empty() && page.end);
        w.push(10, &topic("a"), &frame(10));
        assert_eq!(
            seqs(&w.read(&filter("a"), 9, (10, usize::MAX)).unwrap()),
            [10]
        );
    }

    #[test]
    fn a_narrow_filter_is_read_in_pieces() {
        let w = Window::new(1 << 20, 0);
        for seq in 1..=100 {
            w.push(
                seq,
                &topic(if seq == 100 { "rare" } else { "busy" }),
                &frame(seq),
            );
        }
        let mut after = 0;
        let mut got = Vec::new();
        let mut reads = 0;
        loop {
            let page = w.read(&filter("rare"), after, (2, usize::MAX)).unwrap();
            reads += 1;
            got.extend(seqs(&page));
            after = page.next_after;
            if page.end {
                break;
            }
        }
        assert_eq!(got, [100]);
        assert_eq!(reads, 4, "32 events looked at per read");
    }

    #[test]
    fn a_window_of_no_bytes_keeps_nothing() {
        let w = Window::new(0, 0);
        w.push(1, &topic("a"), &frame(1));
        w.cover(1);
        assert!(w.read(&filter("a"), 0, (10, usize::MAX)).is_none());
        assert_eq!(w.bytes(), 0);
        // Up to date with the hub: nothing to replay, go live.
        let page = w.read(&filter("a"), 1, (10, usize::MAX)).unwrap();
        assert!(page.frames.is_empty() && page.end && page.next_after == 1);
    }

    /// Property, against a plain model (every event that exists, in a map): whatever sequence of
    /// pushes, covered gaps, restarts over events the window never saw, and evictions, paging
    /// through a read that the window accepts yields exactly the model's matching events after
    /// the asked sequence, in order — never one skipped, never one invented — each page within its
    /// count and byte budget, and the window stays within its bytes. Seeded: a failure names its
    /// seed.
    #[test]
    fn paging_matches_a_plain_model() {
        const TOPICS: &[&str] = &["a", "a.x", "b"];
        const FILTERS: &[&str] = &["a", "a.*", ">", "b"];
        for seed in 0..300 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let size = frame(100).len() + 3 + ENTRY_OVERHEAD;
            let capacity = [0, size, size * 5, 1 << 20][rng.usize(0..4)];
            let head = rng.u64(0..50);
            let w = Window::new(capacity, head);
            // Every event that exists (the store's view), by sequence.
            let mut model: std::collections::BTreeMap<u64, &str> = Default::default();
            let mut last = head;
            for _ in 0..rng.usize(1..120) {
                match rng.usize(0..10) {
                    // A gap the store read past: sequences with no event.
                    0 => {
                        last += rng.u64(1..4);
                        w.cover(last);
                    }
                    // Events the window never saw (a failed gap fill): they exist.
                    1 => {
                        for _ in 0..rng.usize(1..4) {
                            last += 1;
                            model.insert(last, TOPICS[rng.usize(..TOPICS.len())]);
                        }
                        w.restart(last + 1);
                    }
                    _ => {
                        last += 1;
                        let t = TOPICS[rng.usize(..TOPICS.len())];
                        model.insert(last, t);
                        w.push(last, &topic(t), &frame(last));
                    }
                }
                assert!(w.bytes() <= capacity, "seed {seed}: {} bytes", w.bytes());
                // A reader somewhere before or at the head pages through what the window has.
                let f = FILTERS[rng.usize(..FILTERS.len())];
                let after = rng.u64(0..=last + 1);
                let limit = rng.usize(1..6);
                let max_bytes = [usize::MAX, 1, frame(100).len() * 2][rng.usize(0..3)];
                let mut at = after;
                let mut got = Vec::new();
                let mut pages = 0;
                while let Some(page) = w.read(&filter(f), at, (limit, max_bytes)) {
                    assert!(page.frames.len() <= limit);
                    // Only the last frame may take the page to its byte budget.
                    let before_last: usize = page.frames.iter().rev().skip(1).map(Bytes::len).sum();
                    assert!(
                        before_last < max_bytes,
                        "seed {seed}: over {max_bytes} bytes"
                    );
                    assert!(page.next_after >= at, "seed {seed}: went back");
                    got.extend(seqs(&page));
                    pages += 1;
                    let end = page.end;
                    let next = page.next_after;
                    if end {
                        let want: Vec<u64> = model
                            .range(after + 1..)
                            .take_while(|(s, _)| **s <= next)
                            .filter(|(_, t)| filter(f).matches(t))
                            .map(|(s, _)| *s)
                            .collect();
                        assert_eq!(got, want, "seed {seed}: {f} after {after}");
                        assert_eq!(next, last.max(after), "seed {seed}: ended early");
                        break;
                    }
                    assert!(next > at, "seed {seed}: no progress");
                    at = next;
                    assert!(pages < 10_000, "seed {seed}: endless");
                }
            }
        }
    }
}
