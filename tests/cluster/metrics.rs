//! `/metrics` as Prometheus sees it: Debian's real server scrapes the ingest and the gateway
//! (OpenMetrics) after a scripted run, and its query API must show exactly what happened.

use std::time::{Duration, Instant};

use herald_tests::{PATIENCE, prometheus::Prometheus};
use serde_json::json;

use crate::common::Cluster;

/// Published events, live subscribers, events replayed to the one resuming subscriber.
const SINGLE: usize = 30;
const BATCH: usize = 5;
const SUBSCRIBERS: usize = 3;
const RESUME_AFTER: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_what_happened() {
    let cluster = Cluster::start_windowless(1, 1, &[]).await;
    let (ingest, gateway) = (cluster.ingests[0].api(), cluster.gateways[0].api());

    let mut subs = Vec::new();
    for _ in 0..SUBSCRIBERS {
        subs.push(gateway.stream("/v1/stream?topic=m", None).await.unwrap());
    }
    let mut ids = Vec::new();
    for n in 0..SINGLE {
        let res = ingest.publish("m", json!(n)).await.unwrap();
        assert_eq!(res.status, 201);
        ids.push(res.id());
    }
    let batch: Vec<_> = (0..BATCH)
        .map(|n| json!({ "topic": "m", "data": n }))
        .collect();
    assert_eq!(
        ingest.publish_batch(json!(batch)).await.unwrap().status,
        201
    );
    // A refused publish and an idempotent repeat.
    assert_eq!(
        ingest.publish("bad topic", json!(1)).await.unwrap().status,
        400
    );
    for _ in 0..2 {
        let res = ingest
            .publish_raw("m", r#"{"data":"keyed"}"#.into(), Some("key-1"))
            .await
            .unwrap();
        assert_eq!(res.status, 201);
    }
    let published = SINGLE + BATCH + 1;
    for sub in &mut subs {
        let (events, _) = sub.collect(published).await.unwrap();
        assert_eq!(events.len(), published);
    }
    // One subscriber resumes after the 10th event, one sends a malformed id.
    let mut resumed = gateway
        .stream("/v1/stream?topic=m", Some(&ids[RESUME_AFTER - 1]))
        .await
        .unwrap();
    let replayed = published - RESUME_AFTER;
    let (events, _) = resumed.collect(replayed).await.unwrap();
    assert_eq!(events.len(), replayed);
    let mut malformed = gateway
        .stream("/v1/stream?topic=m", Some("zz"))
        .await
        .unwrap();
    let resume = malformed.next().await.unwrap().unwrap();
    assert_eq!(resume.event, "herald.resume");

    let prometheus = Prometheus::start(&[
        ("ingest", cluster.ingests[0].addr()),
        ("gateway", cluster.gateways[0].addr()),
    ])
    .await
    .unwrap();
    let delivered = SUBSCRIBERS * published + replayed;
    let open = SUBSCRIBERS + 2;
    // Every service exports every metric; each is read from the service it is about.
    let expected: Vec<(String, f64)> = [
        ("up", "ingest", "", 1.0),
        ("up", "gateway", "", 1.0),
        (
            "herald_events_published_total",
            "ingest",
            "",
            published as f64,
        ),
        (
            "herald_publish_requests_total",
            "ingest",
            r#"outcome="created""#,
            (SINGLE + 2) as f64,
        ),
        (
            "herald_publish_requests_total",
            "ingest",
            r#"outcome="duplicate""#,
            1.0,
        ),
        (
            "herald_publish_requests_total",
            "ingest",
            r#"outcome="rejected""#,
            1.0,
        ),
        (
            "herald_publish_duration_seconds_count",
            "ingest",
            "",
            (SINGLE + 3) as f64,
        ),
        (
            "herald_events_delivered_total",
            "gateway",
            "",
            delivered as f64,
        ),
        (
            "herald_events_replayed_total",
            "gateway",
            "",
            replayed as f64,
        ),
        (
            "herald_resumes_total",
            "gateway",
            r#"recovered="true""#,
            1.0,
        ),
        (
            "herald_resumes_total",
            "gateway",
            r#"recovered="false",reason="malformed""#,
            1.0,
        ),
        (
            "herald_replay_reads_total",
            "gateway",
            r#"tier="jetstream""#,
            replayed as f64,
        ),
        (
            "herald_delivery_lag_seconds_count",
            "gateway",
            "",
            published as f64,
        ),
        (
            "herald_delivery_lag_seconds_bucket",
            "gateway",
            r#"le="+Inf""#,
            published as f64,
        ),
        ("herald_connections_open", "gateway", "", open as f64),
        (
            "herald_connections_accepted_total",
            "gateway",
            "",
            open as f64,
        ),
        ("herald_subscribers", "gateway", "", open as f64),
        ("herald_subscriber_queued_frames", "gateway", "", 0.0),
        ("herald_hub_pending_events", "gateway", "", 0.0),
        (
            "herald_jetstream_consumer_pending",
            "ingest",
            r#"consumer="archiver""#,
            0.0,
        ),
        (
            "herald_jetstream_consumer_pending",
            "gateway",
            r#"consumer="live""#,
            0.0,
        ),
        (
            "herald_events_archived_total",
            "ingest",
            "",
            published as f64,
        ),
    ]
    .into_iter()
    .map(|(name, job, labels, want)| {
        let sep = if labels.is_empty() { "" } else { "," };
        (format!(r#"{name}{{job="{job}"{sep}{labels}}}"#), want)
    })
    .chain([
        (
            "sum(herald_store_errors_total) or vector(0)".to_owned(),
            0.0,
        ),
        ("sum(herald_bus_errors_total) or vector(0)".to_owned(), 0.0),
    ])
    .collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut wrong = Vec::new();
        for (expr, want) in &expected {
            let got = prometheus.value(expr).await.unwrap();
            if got != Some(*want) {
                wrong.push(format!("{expr} = {got:?}, want {want}"));
            }
        }
        if wrong.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the scrapes:\n{}",
            wrong.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The publish latency histogram is cumulative and ends in +Inf (a real parser read it).
    let buckets = prometheus
        .query(r#"herald_publish_duration_seconds_bucket{job="ingest"}"#)
        .await
        .unwrap();
    assert!(buckets.len() > 5, "{buckets:?}");
    assert!(
        buckets
            .iter()
            .any(|(l, v)| l.contains(&"le=+Inf".to_owned()) && *v == (SINGLE + 3) as f64)
    );
    prometheus.stop().await;
}
