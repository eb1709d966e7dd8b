//! Access control in the distributed mode: the gateways and the ingests verify the same tokens
//! with the same key, and enforce the same grants; a gateway's stream ends with `herald.auth`
//! when its token expires.

use std::time::Duration;

use herald_tests::process::mint_token as mint;
use serde_json::Value;

use crate::common::Cluster;

const KEY: &str = "a-cluster-hmac-key-long-enough-for-hs256!";

async fn status(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    if status == 200 && res.headers()["content-type"] == "text/event-stream" {
        return (status, Value::Null);
    }
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_and_ingests_enforce_the_same_grants() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hmac.key");
    std::fs::write(&key, KEY).unwrap();
    let key_arg = key.to_str().unwrap();
    let cluster = Cluster::start(
        1,
        1,
        &[
            "--auth-hmac-key-file",
            key_arg,
            "--anonymous-subscribe",
            "public.>",
            "--auth-leeway",
            "0s",
        ],
    )
    .await;
    let (ingest, gateway) = (cluster.ingests[0].api(), cluster.gateways[0].api());
    let reader = mint(&key, &["--subscribe", "a.*"]);
    let writer = mint(&key, &["--publish", "a.>"]);
    let http = &gateway.http;

    // The gateway: streams and history.
    let stream = |q: &str| http.get(format!("{}/v1/stream?{q}", gateway.base));
    assert_eq!(status(stream("topic=public.x")).await.0, 200);
    assert_eq!(status(stream("topic=a.b")).await.0, 401);
    assert_eq!(
        status(stream("topic=a.b").bearer_auth(&reader)).await.0,
        200
    );
    let (code, body) = status(stream("topic=a.%3E").bearer_auth(&reader)).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (code, _) = status(stream("topic=a.b").bearer_auth(&writer)).await;
    assert_eq!(code, 403, "a publish grant does not let a client read");
    // History on both services.
    for base in [&gateway.base, &ingest.base] {
        let history = |t: &str| http.get(format!("{base}/v1/topics/{t}/events"));
        assert_eq!(status(history("a.b")).await.0, 401, "{base}");
        assert_eq!(
            status(history("a.b").bearer_auth(&reader)).await.0,
            200,
            "{base}"
        );
        assert_eq!(
            status(history("b").bearer_auth(&reader)).await.0,
            403,
            "{base}"
        );
        assert_eq!(status(history("public.x")).await.0, 200, "{base}");
    }

    // The ingest: publishes.
    let publish = |t: &str| {
        http.post(format!("{}/v1/topics/{t}/events", ingest.base))
            .header("content-type", "application/json")
            .body(r#"{"data":1}"#)
    };
    assert_eq!(status(publish("a.b")).await.0, 401);
    assert_eq!(status(publish("a.b").bearer_auth(&reader)).await.0, 403);
    assert_eq!(status(publish("b").bearer_auth(&writer)).await.0, 403);

    // A short token's stream gets what it may read, then `herald.auth` when the token expires.
    let short = mint(&key, &["--subscribe", "a.*", "--ttl", "2s"]);
    let mut sse = herald_tests::SseStream::open(stream("topic=a.*").bearer_auth(&short))
        .await
        .unwrap();
    let (code, body) = status(publish("a.b").bearer_auth(&writer)).await;
    assert_eq!(code, 201, "{body}");
    let event = sse.next().await.unwrap().unwrap();
    assert_eq!(event.id, body["id"].as_str().unwrap());
    let rest = sse.ended_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!(rest.last().map(|e| e.event.as_str()), Some("herald.auth"));
}
