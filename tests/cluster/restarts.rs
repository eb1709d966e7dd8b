//! NATS and the MongoDB server go down and come back (same data) mid-stream: publishes fail with
//! 503 and succeed on retry with the same Idempotency-Key (one event), no acknowledged event is
//! lost, and gateways recover without a restart.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use herald_tests::cluster::Mongo;
use serde_json::json;

use crate::common::{
    Acked, Cluster, FILTERS, Subscriber, TOPICS, check_all, head_id, publish_until_acked,
};

/// How long each server stays down: longer than the backend timeout, so publishes fail.
const OUTAGE: Duration = Duration::from_millis(2500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_and_mongodb_restarts_lose_and_double_nothing() {
    let mongo = Mongo::start_local().await.unwrap();
    let mut cluster = Cluster::start_on(mongo, 1, 2, &["--backend-timeout", "1s"]).await;
    let ingest = cluster.ingests[0].api();
    let acked = Acked::default();
    let from = head_id(&ingest, &acked).await;
    let subscribers: Vec<Subscriber> = (0..8)
        .map(|i| {
            let gateway = cluster.gateways[i % 2].api();
            Subscriber::start(gateway, FILTERS[i % FILTERS.len()].to_vec(), from.clone())
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let (count, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let publisher = tokio::spawn({
        let (stop, count, failed, acked) = (
            Arc::clone(&stop),
            Arc::clone(&count),
            Arc::clone(&failed),
            acked.clone(),
        );
        async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let topic = TOPICS[i % TOPICS.len()];
                let (id, failures) =
                    publish_until_acked(&ingest, topic, &format!("r{i}"), json!({ "n": i })).await;
                failed.fetch_add(failures, Ordering::Relaxed);
                acked.add(topic, &id);
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let wait_for = |n: usize| {
        let count = Arc::clone(&count);
        async move {
            while count.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    wait_for(100).await;
    cluster.nats.stop().await;
    let gateway = cluster.gateways[0].api();
    not_ready_within(&gateway, "nats").await;
    tokio::time::sleep(OUTAGE).await;
    cluster.nats.resume().await.unwrap();
    let n = count.load(Ordering::Relaxed);
    wait_for(n + 100).await;
    // (A publish counts its failed attempts once it succeeds.)
    let after_nats = failed.load(Ordering::Relaxed);
    assert!(after_nats > 0, "no publish failed while NATS was down");

    cluster.mongo.stop().await.unwrap();
    not_ready_within(&gateway, "mongodb").await;
    // A topic's latest events come from MongoDB: unreachable, the history answers as a publish
    // and a stream do (503 `unavailable` with Retry-After), not 500.
    let history = gateway
        .http
        .get(format!("{}/v1/topics/scores/events", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(history.status().as_u16(), 503);
    assert!(history.headers().contains_key("retry-after"));
    let body: serde_json::Value = history.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    tokio::time::sleep(OUTAGE).await;
    cluster.mongo.resume().await.unwrap();
    let n = count.load(Ordering::Relaxed);
    wait_for(n + 100).await;
    assert!(
        failed.load(Ordering::Relaxed) > after_nats,
        "no publish failed while MongoDB was down"
    );
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();

    let published = count.load(Ordering::Relaxed);
    let ids: std::collections::HashSet<u64> =
        acked.0.lock().unwrap().iter().map(|&(_, s)| s).collect();
    assert_eq!(
        ids.len(),
        published + 1,
        "a retried publish made a second event"
    );
    check_all(subscribers, &acked).await;
    for gateway in &cluster.gateways {
        let (status, ready) = gateway.api().get_json("/readyz").await.unwrap();
        assert!(status.is_success(), "{ready}");
    }
    eprintln!(
        "restarts: {published} events, {} publish attempts failed and were retried",
        failed.load(Ordering::Relaxed)
    );
}

/// Readiness turns 503 naming the failing check, within 3 s.
async fn not_ready_within(api: &herald_tests::Api, check: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = api.get_json("/readyz").await.unwrap();
        if status.as_u16() == 503 {
            assert!(
                body["failing"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c == check),
                "{body}"
            );
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready with {check} down: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
