//! Two-tier replay: an id older than JetStream's retention is served from MongoDB; older than
//! MongoDB's retention it gets `recovered:false`.

use std::time::Duration;

use herald_tests::seq_of;
use serde_json::{Value, json};

use crate::common::{Cluster, publish_until_acked};

const SHARED: &[&str] = &[
    "--stream-max-bytes",
    "16KiB",
    "--retention-age",
    "5s",
    "--trim-interval",
    "250ms",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_read_jetstream_then_mongodb_then_say_expired() {
    let cluster = Cluster::start(1, 1, SHARED).await;
    let ingest = cluster.ingests[0].api();
    let gateway = cluster.gateways[0].api();
    let filler = "y".repeat(200);

    let (ancient, _) = publish_until_acked(&ingest, "t", "ancient", json!("ancient")).await;
    // Resuming from `ancient` needs this one, which MongoDB will have dropped.
    publish_until_acked(&ingest, "t", "ancient2", json!("ancient")).await;
    // Past MongoDB's retention (5 s, trimmed every 250 ms).
    tokio::time::sleep(Duration::from_millis(5600)).await;
    let mut ids = Vec::new();
    for i in 0..300 {
        let (id, _) = publish_until_acked(&ingest, "t", &format!("k{i}"), json!(filler)).await;
        ids.push(id);
    }

    // Inside JetStream's retention: the newest events.
    let recent = &ids[290];
    let before = gateway
        .metric("herald_replay_reads_total{tier=\"jetstream\"}")
        .await
        .unwrap();
    let mut s = gateway
        .stream("/v1/stream?topic=t", Some(recent))
        .await
        .unwrap();
    assert_eq!(
        s.next().await.unwrap().unwrap().data,
        r#"{"recovered":true}"#
    );
    let (events, _) = s.collect(9).await.unwrap();
    assert_eq!(events[0].id, ids[291]);
    let after = gateway
        .metric("herald_replay_reads_total{tier=\"jetstream\"}")
        .await
        .unwrap();
    assert!(after >= before + 9.0);
    // Overlapping topics and patterns (JetStream refuses overlapping consumer filters).
    let mut s = gateway
        .stream("/v1/stream?topic=t&topic=*", Some(recent))
        .await
        .unwrap();
    assert_eq!(
        s.next().await.unwrap().unwrap().data,
        r#"{"recovered":true}"#
    );
    let (events, _) = s.collect(9).await.unwrap();
    assert_eq!(events[8].id, ids[299]);

    // Beyond JetStream's retention (16 KiB keeps well under 100 of these), inside MongoDB's.
    let old = &ids[10];
    let before = gateway
        .metric("herald_replay_reads_total{tier=\"mongodb\"}")
        .await
        .unwrap();
    let mut s = gateway
        .stream("/v1/stream?topic=t", Some(old))
        .await
        .unwrap();
    assert_eq!(
        s.next().await.unwrap().unwrap().data,
        r#"{"recovered":true}"#
    );
    let (events, _) = s.collect(289).await.unwrap();
    let expected: Vec<u64> = ids[11..].iter().map(|i| seq_of(i)).collect();
    let got: Vec<u64> = events.iter().map(|e| seq_of(&e.id)).collect();
    assert_eq!(
        got, expected,
        "the replay across both tiers has a gap or a duplicate"
    );
    let after = gateway
        .metric("herald_replay_reads_total{tier=\"mongodb\"}")
        .await
        .unwrap();
    assert!(after > before, "nothing was read from MongoDB");

    // Older than MongoDB's retention: an honest verdict.
    let mut s = gateway
        .stream("/v1/stream?topic=t", Some(&ancient))
        .await
        .unwrap();
    let verdict: Value = serde_json::from_str(&s.next().await.unwrap().unwrap().data).unwrap();
    assert_eq!(verdict["recovered"], false, "{verdict}");
    assert_eq!(verdict["reason"], "expired", "{verdict}");
    assert!(seq_of(verdict["earliest"].as_str().unwrap()) > seq_of(&ancient) + 1);
}
