//! The MongoDB store on its own, against the MongoDB-wire server (and a real MongoDB when
//! `$HERALD_TEST_MONGODB_URI` is set): idempotent writes, bounded reads by topic and pattern,
//! latest, the retained range, idempotency records, retention and the epoch.

use std::{sync::Arc, time::Duration};

use herald_cluster::{ClusterConfig, Mongo};
use herald_core::{Epoch, Event, EventType, Topic, TopicFilter, TraceContext, event::parse_data};
use herald_tests::cluster;

fn config(server: &cluster::Mongo, retention: Option<Duration>) -> ClusterConfig {
    ClusterConfig {
        retention_age: retention,
        idempotency_window: Duration::from_secs(2),
        trim_interval: Duration::from_secs(1),
        ..cluster::cluster_config("", &server.uri, &server.database)
    }
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn event(seq: u64, topic: &str, time_ms: u64) -> Arc<Event> {
    Arc::new(Event {
        seq,
        topic: Topic::new(topic).unwrap(),
        event_type: EventType::new(if seq.is_multiple_of(2) {
            "even"
        } else {
            "message"
        })
        .unwrap(),
        data: parse_data(format!(r#"{{"seq": {seq}, "s": "a\nb"}}"#)).unwrap(),
        time_ms,
        // The publish's trace context is stored with the event where there was one.
        trace: seq
            .is_multiple_of(5)
            .then(|| TraceContext::parse(TRACEPARENT).unwrap()),
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn seqs(events: &[Arc<Event>]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn writes_are_idempotent_and_reads_bounded_by_topic_and_pattern() {
    let server = cluster::Mongo::start().await.unwrap();
    let mongo = Mongo::connect(&config(&server, None)).await.unwrap();
    let topics = ["a", "b.x", "b.y", "c"];
    let now = now_ms();
    let all: Vec<_> = (1..=40)
        .map(|s| event(s, topics[s as usize % 4], now))
        .collect();
    mongo.insert(&all[..25]).await.unwrap();
    // Overlapping and repeated writes (a retry, the archiver) change nothing.
    mongo.insert(&all[20..]).await.unwrap();
    mongo.insert(&all).await.unwrap();

    let everything = TopicFilter::parse([">"]).unwrap();
    let read = mongo.read(&everything, 0, 40, 100).await.unwrap();
    assert_eq!(seqs(&read), (1..=40).collect::<Vec<_>>());
    assert_eq!(read[9].data.get(), all[9].data.get());
    assert_eq!(read[9].event_type.as_str(), "even");
    assert_eq!(read[9].time_ms, now);
    assert_eq!(
        read[9].trace.map(|t| t.to_string()).as_deref(),
        Some(TRACEPARENT)
    );
    assert_eq!(read[8].trace, None);

    let a = TopicFilter::parse(["a"]).unwrap();
    assert_eq!(
        seqs(&mongo.read(&a, 4, 20, 100).await.unwrap()),
        [8, 12, 16, 20]
    );
    assert_eq!(seqs(&mongo.read(&a, 4, 40, 2).await.unwrap()), [8, 12]);
    let pattern = TopicFilter::parse(["b.*", "c"]).unwrap();
    let got = mongo.read(&pattern, 0, 12, 100).await.unwrap();
    assert_eq!(seqs(&got), [1, 2, 3, 5, 6, 7, 9, 10, 11]);
    // A pattern never matches more levels than it says.
    mongo.insert(&[event(41, "b.x.deep", now)]).await.unwrap();
    let one_level = TopicFilter::parse(["b.*"]).unwrap();
    assert!(!seqs(&mongo.read(&one_level, 0, 41, 100).await.unwrap()).contains(&41));
    let rest = TopicFilter::parse(["b.>"]).unwrap();
    assert!(seqs(&mongo.read(&rest, 0, 41, 100).await.unwrap()).contains(&41));

    let latest = mongo
        .latest(&Topic::new("a").unwrap(), 3, 40)
        .await
        .unwrap();
    assert_eq!(seqs(&latest), [32, 36, 40]);
    assert_eq!(mongo.earliest().await.unwrap(), Some(1));
    assert_eq!(mongo.head().await.unwrap(), 41);
    assert!(mongo.ping().await);
}

#[tokio::test]
async fn idempotency_records_answer_until_they_expire() {
    let server = cluster::Mongo::start().await.unwrap();
    let mongo = Mongo::connect(&config(&server, None)).await.unwrap();
    assert_eq!(mongo.idempotency("k").await.unwrap(), None);
    mongo.remember("k", &[7, 8], 42).await.unwrap();
    // The first answer stays.
    mongo.remember("k", &[9], 43).await.unwrap();
    assert_eq!(
        mongo.idempotency("k").await.unwrap(),
        Some((vec![7, 8], 42))
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        mongo.idempotency("k").await.unwrap(),
        None,
        "past the window"
    );
    mongo.trim().await.unwrap();
}

#[tokio::test]
async fn retention_removes_old_events_and_the_epoch_is_kept() {
    let server = cluster::Mongo::start().await.unwrap();
    let mongo = Mongo::connect(&config(&server, Some(Duration::from_secs(60))))
        .await
        .unwrap();
    let now = now_ms();
    let old = now - 120_000;
    let events: Vec<_> = (1..=10)
        .map(|s| event(s, "t", if s <= 4 { old } else { now }))
        .collect();
    mongo.insert(&events).await.unwrap();
    mongo.trim().await.unwrap();
    assert_eq!(mongo.earliest().await.unwrap(), Some(5));
    let all = TopicFilter::parse([">"]).unwrap();
    assert_eq!(
        seqs(&mongo.read(&all, 0, 10, 100).await.unwrap()),
        (5..=10).collect::<Vec<_>>()
    );

    assert_eq!(mongo.epoch().await.unwrap(), None);
    assert_eq!(mongo.adopt_epoch(Epoch(7)).await.unwrap(), Epoch(7));
    assert_eq!(
        mongo.adopt_epoch(Epoch(8)).await.unwrap(),
        Epoch(7),
        "the first epoch stays"
    );
    // Reconnecting with another retention keeps the epoch.
    let again = Mongo::connect(&config(&server, Some(Duration::from_secs(30))))
        .await
        .unwrap();
    assert_eq!(again.epoch().await.unwrap(), Some(Epoch(7)));
}

/// Retention keeps a suffix of the sequence even when ingests' clocks disagree: event 4 was
/// stamped by a clock ahead of the one that stamped 5, and both are gone, never 5 alone (a hole
/// at 5 that replays and resume verdicts would not see).
#[tokio::test]
async fn retention_keeps_a_suffix_of_the_sequence_when_clocks_disagree() {
    let server = cluster::Mongo::start().await.unwrap();
    let mongo = Mongo::connect(&config(&server, Some(Duration::from_secs(60))))
        .await
        .unwrap();
    let now = now_ms();
    let old = now - 120_000;
    let events: Vec<_> = (1..=10)
        .map(|s| event(s, "t", if s <= 3 || s == 5 { old } else { now }))
        .collect();
    mongo.insert(&events).await.unwrap();
    mongo.trim().await.unwrap();
    let all = TopicFilter::parse([">"]).unwrap();
    assert_eq!(
        seqs(&mongo.read(&all, 0, 10, 100).await.unwrap()),
        (6..=10).collect::<Vec<_>>()
    );
    assert_eq!(mongo.earliest().await.unwrap(), Some(6));
}

/// The first sequence is found wherever it moved since the last read: far up (retention removed
/// more than the near range past the last answer), down (an old event written again below it),
/// and a little up (retention removed the one below).
#[tokio::test]
async fn earliest_follows_the_first_event_up_and_down_near_and_far() {
    let server = cluster::Mongo::start().await.unwrap();
    let mongo = Mongo::connect(&config(&server, Some(Duration::from_secs(60))))
        .await
        .unwrap();
    assert_eq!(mongo.earliest().await.unwrap(), None);
    let now = now_ms();
    let old = now - 120_000;
    let events: Vec<_> = (1..=4)
        .map(|s| event(s, "t", old))
        .chain((5000..=5002).map(|s| event(s, "t", now)))
        .collect();
    mongo.insert(&events).await.unwrap();
    assert_eq!(mongo.earliest().await.unwrap(), Some(1));
    mongo.trim().await.unwrap();
    assert_eq!(mongo.earliest().await.unwrap(), Some(5000), "far up");
    mongo.insert(&[event(4000, "t", old)]).await.unwrap();
    assert_eq!(mongo.earliest().await.unwrap(), Some(4000), "down");
    mongo.trim().await.unwrap();
    assert_eq!(mongo.earliest().await.unwrap(), Some(5000), "near up");
    assert_eq!(mongo.earliest().await.unwrap(), Some(5000), "unchanged");
}
