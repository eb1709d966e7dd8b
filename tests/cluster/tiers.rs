//! Two-tier replay: an id older than JetStream's retention is served from MongoDB; older than
//! MongoDB's retention it gets `recovered:false`.

use std::time::Duration;

use herald_tests::{Api, seq_of};
use serde_json::{Value, json};

use crate::common::{Cluster, publish_until_acked};

const SHARED: &[&str] = &[
    "--stream-max-bytes",
    "16KiB",
    "--retention-age",
    "10s",
    "--trim-interval",
    "250ms",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_read_jetstream_then_mongodb_then_say_expired() {
    let cluster = Cluster::start_windowless(1, 1, SHARED).await;
    let ingest = cluster.ingests[0].api();
    let gateway = cluster.gateways[0].api();
    let filler = "y".repeat(200);

    let (ancient, _) = publish_until_acked(&ingest, "t", "ancient", json!("ancient")).await;
    // Resuming from `ancient` needs this one, which MongoDB will have dropped.
    publish_until_acked(&ingest, "t", "ancient2", json!("ancient")).await;
    // Past MongoDB's retention (10 s, trimmed every 250 ms). The 300 keyed publishes below must
    // all stay inside it: at 5 s, a slow CI run (a new key waits for the archiver) aged the
    // first of them out.
    tokio::time::sleep(Duration::from_millis(10_600)).await;
    let mut ids = Vec::new();
    for i in 0..300 {
        let (id, _) = publish_until_acked(&ingest, "t", &format!("k{i}"), json!(filler)).await;
        ids.push(id);
    }

    // Inside JetStream's retention: the newest events.
    let recent = &ids[290];
    let before = tier_reads(&gateway, "jetstream").await;
    let events = resume(&gateway, "/v1/stream?topic=t", recent, 9).await;
    assert_eq!(events[0], seq_of(&ids[291]));
    assert!(tier_reads(&gateway, "jetstream").await >= before + 9.0);
    // Overlapping topics and patterns (JetStream refuses overlapping consumer filters).
    let events = resume(&gateway, "/v1/stream?topic=t&topic=*", recent, 9).await;
    assert_eq!(events[8], seq_of(&ids[299]));

    // Beyond JetStream's retention (16 KiB keeps well under 100 of these), inside MongoDB's.
    let before = tier_reads(&gateway, "mongodb").await;
    let got = resume(&gateway, "/v1/stream?topic=t", &ids[10], 289).await;
    let expected: Vec<u64> = ids[11..].iter().map(|i| seq_of(i)).collect();
    assert_eq!(
        got, expected,
        "the replay across both tiers has a gap or a duplicate"
    );
    assert!(
        tier_reads(&gateway, "mongodb").await > before,
        "nothing was read from MongoDB"
    );

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

/// Resumes after `from`, expects `recovered:true`, and answers the sequences of `n` events.
async fn resume(gateway: &Api, path: &str, from: &str, n: usize) -> Vec<u64> {
    let mut s = gateway.stream(path, Some(from)).await.unwrap();
    let verdict = s.next().await.unwrap().unwrap();
    assert_eq!(verdict.data, r#"{"recovered":true}"#);
    let (events, _) = s.collect(n).await.unwrap();
    events.iter().map(|e| seq_of(&e.id)).collect()
}

/// Events the gateway has read back from a tier.
async fn tier_reads(gateway: &Api, tier: &str) -> f64 {
    let sample = format!("herald_replay_reads_total{{tier=\"{tier}\"}}");
    gateway.metric(&sample).await.unwrap()
}
