//! The [`Bus`] feed contract, written once and run against every bus: the in-process one in this
//! crate's tests, JetStream and the Redis bus in `tests/cluster` against real servers. Behind the
//! `test-util` feature.
//!
//! `publish` commits a batch the way the deployment does (store then announce, JetStream, MongoDB
//! then Redis) and answers the events as sequenced. The contract: a feed carries every event
//! published after it was taken and none from before; from one publisher, new events come in
//! sequence order (a bus may carry one again, which consumers drop); feeds are independent (two
//! get the same events; a dropped one does not hold the others back).

use std::{collections::BTreeSet, future::Future, sync::Arc, time::Duration};

use futures_util::StreamExt;
use herald_core::{Event, EventType, NewEvent, Topic, event::parse_data};

use crate::{Bus, Feed};

/// How long a feed may take to deliver what was published.
const PATIENCE: Duration = Duration::from_secs(10);

fn batch(from: u64, size: u64) -> Vec<NewEvent> {
    (from..from + size)
        .map(|n| NewEvent {
            topic: Topic::new(if n % 2 == 0 { "feed.even" } else { "feed.odd" })
                .expect("a valid topic"),
            event_type: EventType::default(),
            data: parse_data(format!("{n}")).expect("valid JSON"),
        })
        .collect()
}

/// A feed under test and the sequences it has carried.
struct Reader {
    feed: Feed,
    seen: BTreeSet<u64>,
}

impl Reader {
    /// The next `n` events the feed carries for the first time. New events must come in
    /// increasing order; one carried again (a bus may redeliver, the hub drops it) is passed over.
    async fn take(&mut self, n: usize, what: &str) -> Vec<u64> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let event = tokio::time::timeout(PATIENCE, self.feed.next())
                .await
                .unwrap_or_else(|_| panic!("{what}: only {out:?} within {PATIENCE:?}"))
                .unwrap_or_else(|| panic!("{what}: the feed ended after {out:?}"));
            if self.seen.contains(&event.seq) {
                continue;
            }
            let max = self.seen.last().copied();
            assert!(
                max < Some(event.seq),
                "{what}: {} after {max:?}: out of order",
                event.seq
            );
            self.seen.insert(event.seq);
            out.push(event.seq);
        }
        out
    }
}

/// Checks `bus` (called `name` in failures), whose events `publish` commits.
pub async fn check_feed<P, F>(name: &str, bus: &dyn Bus, publish: P)
where
    P: Fn(Vec<NewEvent>) -> F,
    F: Future<Output = Vec<Arc<Event>>>,
{
    let before = publish(batch(0, 3)).await;
    let before_head = before.last().expect("published").seq;
    let reader = |feed| Reader {
        feed,
        seen: BTreeSet::new(),
    };
    let mut a = reader(bus.subscribe().await.expect("a feed"));
    let mut b = reader(bus.subscribe().await.expect("a second feed"));
    let mut sent = Vec::new();
    for (i, size) in [1, 3, 2, 1, 4, 1, 2, 3, 1, 2].into_iter().enumerate() {
        let events = publish(batch(10 * (i as u64 + 1), size)).await;
        sent.extend(events.iter().map(|e| e.seq));
    }
    assert!(
        sent.windows(2).all(|w| w[0] < w[1]),
        "{name}: publish answered {sent:?}"
    );
    assert!(
        sent[0] > before_head,
        "{name}: {sent:?} after {before_head}"
    );
    assert_eq!(a.take(sent.len(), "feed a").await, sent, "{name}: feed a");
    assert_eq!(b.take(sent.len(), "feed b").await, sent, "{name}: feed b");
    drop(b);
    let more: Vec<u64> = publish(batch(200, 5)).await.iter().map(|e| e.seq).collect();
    assert_eq!(
        a.take(more.len(), "feed a after b dropped").await,
        more,
        "{name}"
    );
}
