//! The HTTP API of the distributed services matches standalone: batches are all or nothing with
//! consecutive ids, idempotency keys answer the first result (or 422), limits hold, the gateway
//! (and the ingest) serve history, the gateway the demo page, and with `--admin-listen` the
//! probes, metrics and the preStop hook move to the admin listener.

use herald_tests::seq_of;
use serde_json::json;

use crate::common::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_keys_limits_history_and_the_demo_page() {
    let cluster = Cluster::start(1, 1, &[]).await;
    let ingest = cluster.ingests[0].api();
    let gateway = cluster.gateways[0].api();

    let batch = json!([
        { "topic": "a", "data": 1 },
        { "topic": "b.x", "type": "goal", "data": { "n": 2 } },
        { "topic": "a", "data": "three" },
    ]);
    let first = ingest.publish_batch(batch.clone()).await.unwrap();
    assert_eq!(first.status, 201, "{}", first.body);
    let ids: Vec<u64> = first.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| seq_of(e["id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ids,
        [ids[0], ids[0] + 1, ids[0] + 2],
        "a batch holds consecutive ids"
    );

    // The same batch with a key, twice: one set of events, the same ids.
    let keyed = |body: serde_json::Value| {
        ingest
            .http
            .post(format!("{}/v1/events", ingest.base))
            .header("idempotency-key", "batch-1")
            .json(&body)
            .send()
    };
    let a = keyed(batch.clone()).await.unwrap();
    assert_eq!(a.status(), 201);
    let a: serde_json::Value = a.json().await.unwrap();
    let b = keyed(batch.clone()).await.unwrap();
    assert_eq!(b.status(), 201);
    assert_eq!(b.headers()["idempotent-replayed"], "true");
    let b: serde_json::Value = b.json().await.unwrap();
    assert_eq!(a, b);
    let conflict = keyed(json!([{ "topic": "a", "data": 9 }])).await.unwrap();
    assert_eq!(conflict.status(), 422);

    // Single events: the same key twice is one event; reused for another body, 422.
    let one = ingest
        .publish_raw("a", r#"{"data":5}"#.into(), Some("k1"))
        .await
        .unwrap();
    let again = ingest
        .publish_raw("a", r#"{"data":5}"#.into(), Some("k1"))
        .await
        .unwrap();
    assert_eq!(one.id(), again.id());
    assert!(again.replayed);
    let other = ingest
        .publish_raw("a", r#"{"data":6}"#.into(), Some("k1"))
        .await
        .unwrap();
    assert_eq!(other.status, 422);

    // Limits and validation, exactly as standalone.
    let bad = ingest
        .publish_raw("a%0Ab", r#"{"data":1}"#.into(), None)
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    let too_many: Vec<_> = (0..101)
        .map(|i| json!({ "topic": "a", "data": i }))
        .collect();
    let big = ingest.publish_batch(json!(too_many)).await.unwrap();
    assert_eq!(big.status, 413);
    let large = ingest
        .publish_raw("a", json!({ "data": "x".repeat(70_000) }).to_string(), None)
        .await
        .unwrap();
    assert_eq!(large.status, 413);

    // History and the demo page on the gateway.
    let (status, history) = gateway
        .get_json("/v1/topics/a/events?limit=10")
        .await
        .unwrap();
    assert!(status.is_success());
    let data: Vec<String> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].to_string())
        .collect();
    assert_eq!(data, ["1", "\"three\"", "1", "\"three\"", "5"]);
    // The ingest answers the same history, so an Ingress may route the whole /v1/topics/
    // resource (publish and read back) to it.
    let (status, from_ingest) = ingest
        .get_json("/v1/topics/a/events?limit=10")
        .await
        .unwrap();
    assert!(status.is_success());
    assert_eq!(from_ingest, history);
    let page = gateway.get_text("/").await.unwrap();
    // The demo page streams with herald.js, which the gateway serves too.
    assert!(page.contains(r#"import { connect } from "/herald.js";"#));
    assert!(
        gateway
            .get_text("/herald.js")
            .await
            .unwrap()
            .contains("export function connect(")
    );
    let (status, _) = gateway.get_json("/readyz").await.unwrap();
    assert!(status.is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_has_the_ops_routes_and_the_prestop_hook() {
    let cluster = Cluster::start(0, 0, &[]).await;
    let gateway = cluster
        .deployment
        .gateway(&["--admin-listen", "127.0.0.1:0", "--prestop-delay", "300ms"])
        .await
        .unwrap();
    let (api, admin) = (gateway.api(), gateway.admin_api());
    for path in ["/healthz", "/readyz", "/metrics", "/prestop"] {
        let res = api
            .http
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path} is served on the public port");
    }
    let (status, _) = admin.get_json("/readyz").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        admin
            .get_text("/metrics")
            .await
            .unwrap()
            .contains("herald_connections_open")
    );
    // The stream API stays on the public port.
    let mut stream = api.stream("/v1/stream?topic=a", None).await.unwrap();

    let started = std::time::Instant::now();
    let (status, body) = admin.get_json("/prestop").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["withdrawn"], true);
    assert!(body["waited_ms"].as_u64().unwrap() >= 300);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    // Withdrawn: not ready, still alive, still serving its streams until SIGTERM.
    let (status, readyz) = admin.get_json("/readyz").await.unwrap();
    assert_eq!(status, 503, "{readyz}");
    assert_eq!(readyz["withdrawn"], true);
    let (status, _) = admin.get_json("/healthz").await.unwrap();
    assert_eq!(status, 200);
    let published = cluster_publish(&cluster).await;
    let (events, _) = stream.collect(1).await.unwrap();
    assert_eq!(events[0].id, published);
}

/// Publishes one event on topic `a` through a fresh ingest; its id.
async fn cluster_publish(cluster: &Cluster) -> String {
    let ingest = cluster.deployment.ingest(&[], &[]).await.unwrap();
    let p = ingest
        .api()
        .publish("a", json!("after prestop"))
        .await
        .unwrap();
    assert_eq!(p.status, 201, "{}", p.body);
    p.id()
}

/// Through nginx, a stream no gateway can take is answered the way a native EventSource
/// survives (200, `retry:`, `herald.refused`, the end) instead of a 502; Herald's own refusals of
/// bad requests still pass through as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_turns_a_missing_gateway_into_a_refusal_eventsource_survives() {
    let mut cluster = Cluster::start(1, 1, &[]).await;
    let nginx = cluster.nginx().await;
    let lb = nginx.api();
    let err = lb.stream("/v1/stream?topic=a%0Ab", None).await.unwrap_err();
    assert!(
        err.to_string().contains("400"),
        "a bad topic stays a 400: {err}"
    );
    cluster.gateways[0].kill9().await;
    let mut delays = std::collections::BTreeSet::new();
    for path in ["/v1/stream?topic=a", "/api/updates"].repeat(8) {
        let mut refused = lb.stream(path, Some("x-1")).await.unwrap();
        let events = refused
            .ended_within(std::time::Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "{path}: {events:?}");
        assert_eq!(events[0].event, "herald.refused", "{path}");
        let body: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(body["code"], "unavailable");
        // The delay is the event's `retry_ms` too, spread over 2-4 s by request.
        let retry = refused.decoder().retry().expect("a retry: line");
        assert!((2000..=4000).contains(&retry), "{path}: {retry}");
        assert_eq!(body["retry_ms"], retry, "{path}");
        delays.insert(retry);
    }
    assert!(delays.len() > 1, "the delay is not spread: {delays:?}");
    // Other paths keep nginx's own answer.
    let (status, _) = lb.get_text_status("/").await;
    assert_eq!(status, 502);
}
