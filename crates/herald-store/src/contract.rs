//! The [`History`] contract, written once and run against every implementation: the in-process
//! stores in this crate's tests, the distributed ones (JetStream + MongoDB, MongoDB alone) in
//! `tests/cluster` against real servers. Behind the `test-util` feature.
//!
//! A backend under test starts empty, appends [`sample`] its own way, and hands the events as it
//! sequenced them to [`check_history`], which pins the paging rules every caller relies on:
//! pages in sequence order, never more than the limit, nothing skipped or repeated across pages
//! (read one by one, or from one cursor with and without a byte budget),
//! `next_after` at least the last event of its page, an `end` page reaching the head it saw, and
//! `latest` and `bounds` agreeing with what was written.

use std::sync::Arc;

use herald_core::{Event, EventType, NewEvent, Topic, TopicFilter, event::parse_data};

use crate::{History, ReadQuery};

/// The events a backend under test appends: 60 events over `a.x`, `a.y` and `b`, some in
/// batches (the caller decides how it appends them).
pub fn sample() -> Vec<NewEvent> {
    (1..=60u64)
        .map(|n| NewEvent {
            topic: Topic::new(["b", "a.x", "a.y"][(n % 3) as usize]).expect("a valid topic"),
            event_type: EventType::default(),
            data: parse_data(format!("{{\"n\":{n}}}")).expect("valid JSON"),
        })
        .collect()
}

/// How [`read_all`] reads: a [`History::read`] per page, or one [`History::cursor`] for all of
/// them with this byte budget per page.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Read,
    Cursor(usize),
}

/// Every page of `filter` after `after`, `limit` at a time, checked page by page.
async fn read_all(
    name: &str,
    history: &dyn History,
    filter: &TopicFilter,
    (after, limit, mode): (u64, usize, Mode),
    head: u64,
) -> Vec<u64> {
    let (mut out, mut after) = (Vec::new(), after);
    let mut cursor = match mode {
        Mode::Read => None,
        Mode::Cursor(_) => Some(history.cursor(filter.clone(), after)),
    };
    for _ in 0..10_000 {
        let page = match (&mut cursor, mode) {
            (Some(cursor), Mode::Cursor(max_bytes)) => cursor.next(limit, max_bytes).await,
            _ => {
                let query = ReadQuery {
                    filter: filter.clone(),
                    after,
                    limit,
                };
                history.read(query).await
            }
        }
        .expect("a read");
        let seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
        let context = format!("{name}: after {after}, limit {limit}, {mode:?}: {seqs:?}");
        assert!(seqs.len() <= limit, "a page over its limit: {context}");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "out of order: {context}"
        );
        assert!(
            seqs.iter().all(|&s| s > after),
            "at or before `after`: {context}"
        );
        assert!(
            page.events.iter().all(|e| filter.matches(e.topic.as_str())),
            "an event outside the filter: {context}"
        );
        let last = seqs.last().copied().unwrap_or(after);
        assert!(
            page.next_after >= last,
            "next_after {} behind its page: {context}",
            page.next_after
        );
        out.extend(seqs);
        if page.end {
            assert!(
                page.next_after >= head,
                "an end page short of the head: {context}"
            );
            return out;
        }
        assert!(
            page.next_after > after,
            "a page that made no progress: {context}"
        );
        after = page.next_after;
    }
    panic!("{name}: no end page after 10,000 pages");
}

/// Checks `history` (called `name` in failures), which holds exactly `written` (as its backend sequenced [`sample`]).
pub async fn check_history(name: &str, history: &dyn History, written: &[Arc<Event>]) {
    let first = written.first().expect("events written").seq;
    let head = written.last().expect("events written").seq;
    let bounds = history.bounds().await.expect("bounds");
    assert_eq!(
        (bounds.earliest, bounds.head),
        (first, head),
        "{name}: bounds"
    );
    let filters = [
        vec!["a.x"],
        vec!["a.*"],
        vec!["b", "a.y"],
        vec![">"],
        vec!["nothing"],
    ];
    let middle = written[written.len() / 2].seq;
    for names in filters {
        let filter = TopicFilter::parse(names.iter().copied()).expect("a valid filter");
        for after in [0, first, middle, head] {
            let expected: Vec<u64> = written
                .iter()
                .filter(|e| e.seq > after && filter.matches(e.topic.as_str()))
                .map(|e| e.seq)
                .collect();
            for limit in [1, 7, 1000] {
                // A cursor with a budget of 1 byte holds one event per page.
                for mode in [Mode::Read, Mode::Cursor(usize::MAX), Mode::Cursor(1)] {
                    let got = read_all(name, history, &filter, (after, limit, mode), head).await;
                    assert_eq!(
                        got, expected,
                        "{name}: {names:?} after {after}, limit {limit}, {mode:?}"
                    );
                }
            }
        }
    }
    for topic in ["a.x", "b", "nothing"] {
        let topic = Topic::new(topic).expect("a valid topic");
        let all: Vec<u64> = written
            .iter()
            .filter(|e| e.topic == topic)
            .map(|e| e.seq)
            .collect();
        for limit in [1, 3, 1000] {
            let got: Vec<u64> = history
                .latest(&topic, limit)
                .await
                .expect("latest")
                .iter()
                .map(|e| e.seq)
                .collect();
            let expected = &all[all.len().saturating_sub(limit)..];
            assert_eq!(got, expected, "{name}: latest {limit} of {topic}");
        }
    }
    let by_seq = |seq: u64| written.iter().find(|e| e.seq == seq).expect("written");
    let page = history
        .read(ReadQuery {
            filter: TopicFilter::parse([">"]).expect("`>`"),
            after: 0,
            limit: 1000,
        })
        .await
        .expect("a read");
    for event in &page.events {
        let sent = by_seq(event.seq);
        assert_eq!(
            (&event.topic, &event.event_type, event.data.get()),
            (&sent.topic, &sent.event_type, sent.data.get()),
            "{name}: event {} read back",
            event.seq
        );
    }
}
