//! The HTTP API's contract: limits, validation, idempotency, headers, heartbeats, compatibility.

use std::time::Duration;

use herald_tests::{Herald, seq_of};
use serde_json::json;

async fn node(args: &[&str]) -> (Herald, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), args).await.unwrap();
    (herald, dir)
}

#[tokio::test]
async fn sse_injection_attempts_are_400_and_oversize_bodies_413() {
    let (herald, _dir) = node(&["--max-body", "1KiB", "--max-batch", "3"]).await;
    let api = herald.api();
    let data = json!({"data": 1}).to_string();
    for topic in ["a%0Ab", "a%0Db", "a%00b", "a%0D%0Aid:%201"] {
        let r = api.publish_raw(topic, data.clone(), None).await.unwrap();
        assert_eq!(r.status, 400, "topic {topic}: {}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_topic");
    }
    for kind in ["x\ny", "x\r\nid: 99", "x\0", "\r"] {
        let body = json!({"type": kind, "data": 1}).to_string();
        let r = api.publish_raw("t", body, None).await.unwrap();
        assert_eq!(r.status, 400, "type {kind:?}");
        assert_eq!(r.body["error"]["code"], "invalid_type");
    }
    let r = api
        .publish_batch(json!([{"topic": "ok", "data": 1}, {"topic": "bad\nid: 3", "data": 1}]))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "a batch is all or nothing");
    let big = json!({"data": "x".repeat(2000)}).to_string();
    let r = api.publish_raw("t", big, None).await.unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.body["error"]["code"], "payload_too_large");
    let r = api
        .publish_batch(json!([{"topic":"a","data":1},{"topic":"a","data":2},{"topic":"a","data":3},{"topic":"a","data":4}]))
        .await
        .unwrap();
    assert_eq!(r.status, 413, "batch over --max-batch");
    for (body, code) in [
        ("{", "invalid_json"),
        (r#"{"type":"t"}"#, "invalid_json"),
        (r#"{"data":1,"extra":2}"#, "invalid_json"),
    ] {
        let r = api.publish_raw("t", body.into(), None).await.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.body["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
    let (_, history) = api.get_json("/v1/topics/ok/events").await.unwrap();
    assert_eq!(
        history["events"].as_array().unwrap().len(),
        0,
        "nothing was stored"
    );
    // An id carrying CR/LF: refused as history input, judged malformed on a stream, never echoed.
    let (status, body) = api
        .get_json("/v1/topics/ok/events?after=1%0D%0Aevent:%20evil")
        .await
        .unwrap();
    assert_eq!(
        (status.as_u16(), &body["error"]["code"]),
        (400, &json!("malformed_id"))
    );
    let mut s = api
        .stream(
            "/v1/stream?topic=ok&lastEventId=1%0D%0Aevent:%20evil%0D%0A",
            None,
        )
        .await
        .unwrap();
    let first = s.next().await.unwrap().unwrap();
    assert_eq!(first.event, "herald.resume");
    assert!(first.data.contains(r#""reason":"malformed""#) && !first.data.contains("evil"));
}

#[tokio::test]
async fn idempotency_key_twice_makes_one_event_with_the_same_id() {
    let (herald, _dir) = node(&[]).await;
    let api = herald.api();
    let body = json!({"data": {"n": 1}}).to_string();
    let first = api
        .publish_raw("t", body.clone(), Some("order-42"))
        .await
        .unwrap();
    let second = api.publish_raw("t", body, Some("order-42")).await.unwrap();
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (201, 201));
    assert_eq!(first.id(), second.id());
    assert!(!first.replayed && second.replayed);
    let other = json!({"data": {"n": 2}}).to_string();
    let conflict = api.publish_raw("t", other, Some("order-42")).await.unwrap();
    assert_eq!(conflict.status, 422);
    let (_, history) = api.get_json("/v1/topics/t/events").await.unwrap();
    assert_eq!(history["events"].as_array().unwrap().len(), 1);
    let batch = json!([{"topic": "t", "data": 1}, {"topic": "u", "data": 2}]);
    let b1 = api.publish_batch(batch.clone()).await.unwrap();
    assert_eq!(b1.status, 201);
    let ids: Vec<u64> = b1.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| seq_of(e["id"].as_str().unwrap()))
        .collect();
    assert_eq!(ids, vec![2, 3], "batch ids in order");
}

#[tokio::test]
async fn stream_headers_retry_heartbeats_and_multi_line_data() {
    let (herald, _dir) = node(&["--heartbeat", "200ms", "--retry", "1500ms"]).await;
    let api = herald.api();
    let mut s = api.stream("/v1/stream?topic=t", None).await.unwrap();
    assert_eq!(s.headers["content-type"], "text/event-stream");
    assert_eq!(s.headers["cache-control"], "no-cache");
    assert_eq!(s.headers["x-accel-buffering"], "no");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pretty = "{\n  \"multi\": \"line\"\n}";
    let r = api
        .publish_raw(
            "t",
            format!("{{\"type\":\"note\",\"data\":{pretty}}}"),
            None,
        )
        .await
        .unwrap();
    let ev = s.next().await.unwrap().unwrap();
    assert_eq!(ev.event, "note");
    assert_eq!(
        ev.data, pretty,
        "data split into data: lines and joined back"
    );
    assert_eq!(ev.id, r.id());
    assert_eq!(s.decoder().retry(), Some(1500));
    assert!(
        s.decoder().comments() >= 2,
        "heartbeats while idle: {}",
        s.decoder().comments()
    );
}

#[tokio::test]
async fn heartbeats_reset_on_traffic() {
    let (herald, _dir) = node(&["--heartbeat", "400ms"]).await;
    let api = herald.api();
    let mut s = api.stream("/v1/stream?topic=t", None).await.unwrap();
    for n in 0..8 {
        api.publish("t", json!(n)).await.unwrap();
        s.next().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(
        s.decoder().comments(),
        0,
        "traffic every 150ms leaves no silence of 400ms"
    );
}

#[tokio::test]
async fn stream_limits_answer_clear_errors() {
    let (herald, _dir) = node(&["--max-topics", "2", "--max-connections", "2"]).await;
    let api = herald.api();
    let err = api.stream("/v1/stream", None).await.unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    let err = api
        .stream("/v1/stream?topic=a&topic=b&topic=c", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("too_many_topics"), "{err}");
    let err = api
        .stream("/v1/stream?topic=a%0Ab", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid_topic"), "{err}");
    let _a = api.stream("/v1/stream?topic=a", None).await.unwrap();
    let _b = api.stream("/v1/stream?topic=b.*", None).await.unwrap();
    // Over the limit: not a 503 (a native EventSource would give up for good) but a stream that
    // says so and ends, with a `retry:` of at least the 5 s a full server asks for.
    let mut refused = api.stream("/v1/stream?topic=c", None).await.unwrap();
    let rest = refused.ended_within(Duration::from_secs(2)).await.unwrap();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].event, "herald.refused");
    assert_eq!(rest[0].id, "", "no id: the browser keeps its Last-Event-ID");
    let refusal: serde_json::Value = serde_json::from_str(&rest[0].data).unwrap();
    assert_eq!(refusal["code"], "too_many_connections");
    let retry = refused.decoder().retry().unwrap();
    assert!((5000..=7500).contains(&retry), "retry {retry}");
    assert_eq!(refusal["retry_ms"], retry);
    assert_eq!(
        api.metric("herald_connections_rejected_total{reason=\"limit\"}")
            .await
            .unwrap(),
        1.0
    );
}

#[tokio::test]
async fn the_articles_endpoints_work_unchanged() {
    let (herald, _dir) = node(&[]).await;
    let api = herald.api();
    let mut s = api.stream("/api/updates", None).await.unwrap();
    let res = api
        .http
        .put(format!("{}/api/post-update", api.base))
        .header("content-type", "application/json")
        .body(r#"{"team":"Lions","score":3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let ev = s.next().await.unwrap().unwrap();
    assert_eq!(ev.event, "message", "onmessage receives it");
    assert_eq!(ev.data, r#"{"team":"Lions","score":3}"#);
}

#[tokio::test]
async fn history_lists_and_pages_a_topic() {
    let (herald, _dir) = node(&[]).await;
    let api = herald.api();
    let mut ids = Vec::new();
    for n in 0..5 {
        let body = format!(r#"{{"data":{{"n":{n},"z":0,"a":1}}}}"#);
        ids.push(api.publish_raw("h", body, None).await.unwrap().id());
        api.publish("other", json!(n)).await.unwrap();
    }
    let (status, all) = api.get_json("/v1/topics/h/events?limit=3").await.unwrap();
    assert_eq!(status, 200);
    let got: Vec<&str> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ids[2..].iter().map(String::as_str).collect::<Vec<_>>(),
        "the newest 3, oldest first"
    );
    assert_eq!(all["head"].as_str().map(seq_of), Some(10));
    let (_, after) = api
        .get_json(&format!("/v1/topics/h/events?after={}", ids[0]))
        .await
        .unwrap();
    assert_eq!(after["events"].as_array().unwrap().len(), 4);
    let raw = api.get_text("/v1/topics/h/events?limit=1").await.unwrap();
    assert!(
        raw.contains(r#""data":{"n":4,"z":0,"a":1}"#),
        "data kept byte for byte: {raw}"
    );
    let (status, _) = api
        .get_json("/v1/topics/h/events?after=nonsense")
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (status, _) = api
        .get_json("/v1/topics/h/events?after=00000000-1")
        .await
        .unwrap();
    assert_eq!(status, 410, "another epoch");
}

#[tokio::test]
async fn health_metrics_and_the_demo_page() {
    let (herald, _dir) = node(&[]).await;
    let api = herald.api();
    assert_eq!(api.get_json("/healthz").await.unwrap().0, 200);
    let (status, ready) = api.get_json("/readyz").await.unwrap();
    assert_eq!((status.as_u16(), &ready["ready"]), (200, &json!(true)));
    let id = api
        .publish("scores", json!({"team": "<b>x</b>", "score": 1}))
        .await
        .unwrap()
        .id();
    let html = api.get_text("/").await.unwrap();
    assert!(
        html.contains(r#"import { connect } from "/herald.js";"#),
        "the page streams with herald.js"
    );
    // herald.js itself, as a module the browser takes as JavaScript.
    let script = api
        .http
        .get(format!("{}/herald.js", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(script.headers()["x-content-type-options"], "nosniff");
    assert!(
        script
            .text()
            .await
            .unwrap()
            .contains("export function connect(")
    );
    assert!(
        html.contains(&format!("data-resume-from=\"{id}\"")),
        "resumes from the rendered event"
    );
    assert!(
        html.contains("&lt;b&gt;x&lt;/b&gt;") && !html.contains("<b>x</b>"),
        "escaped"
    );
    for name in [
        "herald_connections_open",
        "herald_events_published_total 1",
        "herald_publish_duration_seconds_bucket",
        "herald_events_delivered_total",
        "herald_events_replayed_total",
        "herald_slow_subscribers_caught_up_total",
        "herald_slow_subscribers_cut_off_total",
    ] {
        let text = api.get_text("/metrics").await.unwrap();
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test]
async fn a_publish_token_is_required_when_configured() {
    let (node, _dir) = node(&["--publish-token", "s3cret"]).await;
    let api = node.api();
    let url = format!("{}/v1/topics/t/events", api.base);
    let send = |auth: Option<&'static str>| {
        let mut req = api
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(r#"{"data":1}"#);
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        req.send()
    };
    assert_eq!(send(None).await.unwrap().status(), 401);
    assert_eq!(send(Some("Bearer wrong")).await.unwrap().status(), 401);
    assert_eq!(send(Some("s3cret")).await.unwrap().status(), 401);
    assert_eq!(send(Some("Bearer s3cret")).await.unwrap().status(), 201);
    // The compatibility endpoint is guarded too; reading is not.
    let compat = api
        .http
        .put(format!("{}/api/post-update", api.base))
        .header("content-type", "application/json")
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(compat.status(), 401);
    let (status, _) = api.get_json("/v1/topics/t/events").await.unwrap();
    assert!(status.is_success());
}

#[tokio::test]
async fn an_admin_listener_takes_the_ops_routes_off_the_public_one() {
    let port = herald_tests::cluster::free_port();
    let admin_addr = format!("127.0.0.1:{port}");
    let (herald, _dir) = node(&["--admin-listen", &admin_addr, "--prestop-delay", "0s"]).await;
    let admin = herald_tests::Api::new(format!("http://{admin_addr}"));
    for path in ["/healthz", "/readyz"] {
        let (status, _) = admin.get_text_status(path).await;
        assert_eq!(status, 200, "{path} on the admin listener");
    }
    assert!(
        admin
            .get_text("/metrics")
            .await
            .unwrap()
            .contains("herald_")
    );
    let api = herald.api();
    for path in ["/metrics", "/readyz", "/healthz", "/prestop"] {
        let (status, body) = api.get_text_status(path).await;
        assert_eq!(status, 404, "{path} on the public listener: {body}");
    }
    // The preStop hook withdraws the node from readiness.
    let (status, _) = admin.get_text_status("/prestop").await;
    assert_eq!(status, 200);
    let (status, _) = admin.get_text_status("/readyz").await;
    assert_eq!(status, 503);
}

/// Every error answer is the API's JSON, the HTTP framework's own refusals included: a query
/// parameter of the wrong kind, a method an endpoint does not take, an unknown path.
#[tokio::test]
async fn the_frameworks_own_refusals_are_json_errors_too() {
    let (herald, _dir) = node(&[]).await;
    let api = herald.api();
    let (status, body) = api.get_json("/v1/topics/t/events?limit=x").await.unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );

    let res = api
        .http
        .delete(format!("{}/v1/stream?topic=t", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert!(res.headers()["allow"].to_str().unwrap().contains("GET"));
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");

    // The limit is 1 or more (0 used to be read as 1); a large one reads at most 1000.
    let (status, body) = api.get_json("/v1/topics/t/events?limit=0").await.unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, body) = api
        .get_json("/v1/topics/t/events?limit=2147483648")
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, _) = api
        .get_json("/v1/topics/t/events?limit=2147483647")
        .await
        .unwrap();
    assert_eq!(status, 200);

    let (status, body) = api.get_json("/v1/nowhere").await.unwrap();
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}
