//! Access control against the real binary: tokens minted by `herald token`, grants enforced on
//! streams, history and publishes, anonymous access only as configured, a stream cut off with
//! `herald.auth` when its token expires and resumed with a fresh one, and the safe default.

use std::{process::Stdio, time::Duration};

use herald_tests::{
    Herald,
    process::{herald_bin, mint_token as mint},
};
use serde_json::{Value, json};

const KEY: &str = "an-hmac-key-for-the-tests-that-is-long-enough";

struct Node {
    herald: Herald,
    key: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn node(extra: &[&str]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hmac.key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let data = dir.path().join("data");
    let mut args = vec!["--auth-hmac-key-file", key.to_str().unwrap()];
    args.extend(extra);
    let herald = Herald::start(&data, &args).await.unwrap();
    Node {
        herald,
        key,
        _dir: dir,
    }
}

impl Node {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.herald.api().base)
    }

    /// Status and error code of `GET path` with an optional bearer token and cookie.
    async fn get(&self, path: &str, bearer: Option<&str>, cookie: Option<&str>) -> (u16, Value) {
        let mut req = self.herald.api().http.get(self.url(path));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        if status == 200 {
            return (status, Value::Null);
        }
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn publish(&self, topic: &str, bearer: Option<&str>) -> (u16, Value) {
        let mut req = self
            .herald
            .api()
            .http
            .post(self.url(&format!("/v1/topics/{topic}/events")))
            .header("content-type", "application/json")
            .body(r#"{"data":1}"#);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn grants_decide_every_stream_history_and_publish() {
    let node = node(&["--anonymous-subscribe", "public.>"]).await;
    let token = mint(
        &node.key,
        &["--subscribe", "a.*", "--publish", "a.>", "--sub", "alice"],
    );

    // Anonymous: only what --anonymous-subscribe allows, and no publishing.
    assert_eq!(
        node.get("/v1/stream?topic=public.news", None, None).await.0,
        200
    );
    for path in [
        "/v1/stream?topic=a.b",
        "/v1/stream?topic=public.news&topic=a.b",
        "/v1/topics/a.b/events",
        "/api/updates",
    ] {
        let (status, body) = node.get(path, None, None).await;
        assert_eq!(
            (status, code(&body)),
            (401, "unauthorized"),
            "{path}: {body}"
        );
    }
    let (status, body) = node.publish("public.news", None).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));

    // A token: what it grants, by header or by cookie; nothing more, named in the refusal.
    let cookie = format!("other=1; herald_token={token}");
    for (bearer, cookie) in [(Some(token.as_str()), None), (None, Some(cookie.as_str()))] {
        for path in [
            "/v1/stream?topic=a.b",
            "/v1/stream?topic=a.*",
            "/v1/topics/a.b/events",
        ] {
            assert_eq!(node.get(path, bearer, cookie).await.0, 200, "{path}");
        }
        for (asked, path) in [
            ("a.>", "/v1/stream?topic=a.b&topic=a.%3E"),
            (">", "/v1/stream?topic=%3E"),
            ("b", "/v1/stream?topic=b"),
            ("a.b.c", "/v1/topics/a.b.c/events"),
        ] {
            let (status, body) = node.get(path, bearer, cookie).await;
            assert_eq!((status, code(&body)), (403, "forbidden"), "{path}: {body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(&format!("`{asked}`")), "{message}");
        }
        // The anonymous grants come with the token.
        assert_eq!(
            node.get("/v1/stream?topic=public.x", bearer, cookie)
                .await
                .0,
            200
        );
    }
    // The query parameter is not a token source unless enabled.
    let path = format!("/v1/stream?topic=a.b&access_token={token}");
    assert_eq!(node.get(&path, None, None).await.0, 401);
    // A broken token is refused even where anonymous access would do.
    let (status, body) = node
        .get("/v1/stream?topic=public.x", Some("x.y.z"), None)
        .await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));
    let other_key = node._dir.path().join("other.key");
    std::fs::write(&other_key, "another-hmac-key-that-is-also-long-enough").unwrap();
    let bad = mint(&other_key, &["--subscribe", "a.*"]);
    let (status, body) = node.get("/v1/stream?topic=a.b", Some(&bad), None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{body}"
    );

    // Publishing: each topic checked; a batch is all or nothing.
    assert_eq!(node.publish("a.b.c", Some(&token)).await.0, 201);
    let (status, body) = node.publish("b", Some(&token)).await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    let res = node
        .herald
        .api()
        .http
        .post(node.url("/v1/events"))
        .bearer_auth(&token)
        .json(&json!([{"topic": "a.x", "data": 1}, {"topic": "b", "data": 2}]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let read = mint(&node.key, &["--subscribe", ">"]);
    let (_, history) = node.get_json("/v1/topics/a.x/events", &read).await;
    assert_eq!(
        history["events"].as_array().unwrap().len(),
        0,
        "nothing of the batch was stored"
    );
    // Reserved types cannot be published, whoever asks.
    let res = node
        .herald
        .api()
        .http
        .post(node.url("/v1/topics/a.b/events"))
        .bearer_auth(&token)
        .json(&json!({"type": "herald.resume", "data": {"recovered": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

impl Node {
    async fn get_json(&self, path: &str, bearer: &str) -> (u16, Value) {
        let res = self
            .herald
            .api()
            .http
            .get(self.url(path))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }
}

#[tokio::test]
async fn an_allowed_stream_delivers_exactly_its_events() {
    let node = node(&["--auth-query-param", "access_token"]).await;
    let writer = mint(&node.key, &["--publish", ">"]);
    let reader = mint(&node.key, &["--subscribe", "a.*"]);
    // Through the query parameter, enabled here.
    let api = node.herald.api();
    let mut stream = api
        .stream(&format!("/v1/stream?topic=a.*&access_token={reader}"), None)
        .await
        .unwrap();
    for topic in ["a.b", "b", "a.b.c", "a.c"] {
        assert_eq!(node.publish(topic, Some(&writer)).await.0, 201);
    }
    let (events, _) = stream.collect(2).await.unwrap();
    let ids: Vec<_> = events.iter().map(|e| e.id.clone()).collect();
    let (_, a_b) = node.get_json("/v1/topics/a.b/events", &reader).await;
    let (_, a_c) = node.get_json("/v1/topics/a.c/events", &reader).await;
    let want = [&a_b, &a_c].map(|h| h["events"][0]["id"].as_str().unwrap().to_owned());
    assert_eq!(ids, want);
    assert!(
        stream
            .next_within(Duration::from_millis(300))
            .await
            .is_err(),
        "nothing else arrives"
    );
}

#[tokio::test]
async fn a_stream_whose_token_expires_is_told_and_resumes_with_a_fresh_one() {
    let node = node(&["--auth-leeway", "0s"]).await;
    let writer = mint(&node.key, &["--publish", ">"]);
    let short = mint(&node.key, &["--subscribe", "t", "--ttl", "2s"]);
    let api = node.herald.api();
    let open = |token: String, last: Option<String>| {
        let mut req = api
            .http
            .get(node.url("/v1/stream?topic=t"))
            .header("cookie", format!("herald_token={token}"));
        if let Some(id) = last {
            req = req.header("last-event-id", id);
        }
        herald_tests::SseStream::open(req)
    };
    let mut stream = open(short.clone(), None).await.unwrap();
    assert_eq!(node.publish("t", Some(&writer)).await.0, 201);
    let first = stream.next().await.unwrap().unwrap();
    // Within the token's two seconds (and a margin), the named event, then the end.
    let rest = stream.ended_within(Duration::from_secs(5)).await.unwrap();
    let last = rest.last().expect("an event before the end");
    assert_eq!(last.event, "herald.auth");
    assert_eq!(
        serde_json::from_str::<Value>(&last.data).unwrap(),
        json!({"reason": "expired"})
    );
    // What was published meanwhile comes on the resume with a fresh token, exactly once.
    assert_eq!(node.publish("t", Some(&writer)).await.0, 201);
    assert_eq!(node.publish("t", Some(&writer)).await.0, 201);
    let err = open(short, Some(first.id.clone())).await.unwrap_err();
    assert!(
        err.to_string().contains("401"),
        "the expired token is refused: {err}"
    );
    let fresh = mint(&node.key, &["--subscribe", "t"]);
    let mut resumed = open(fresh, Some(first.id.clone())).await.unwrap();
    let (events, control) = resumed.collect(2).await.unwrap();
    assert_eq!(control[0].event, "herald.resume");
    assert!(
        control[0].data.contains("\"recovered\":true"),
        "{}",
        control[0].data
    );
    let seqs: Vec<u64> = events.iter().map(|e| herald_tests::seq_of(&e.id)).collect();
    let first_seq = herald_tests::seq_of(&first.id);
    assert_eq!(seqs, [first_seq + 1, first_seq + 2]);
}

/// `herald ARGS` on its own (no --listen given by the harness): its exit code and stderr.
async fn run(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(herald_bin())
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("herald exits")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_server_beyond_loopback_needs_access_control_to_start() {
    let (code, stderr) = run(&["--listen", "0.0.0.0:0"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    for hint in [
        "--listen",
        "--auth-hmac-key-file",
        "--anonymous-subscribe",
        "--anonymous-publish",
    ] {
        assert!(stderr.contains(hint), "{hint} missing from: {stderr}");
    }
    let (code, stderr) = run(&[
        "--listen",
        "0.0.0.0:0",
        "--auth-hmac-key-file",
        "/nonexistent/key",
    ])
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--auth-hmac-key-file") && stderr.contains("/nonexistent/key"),
        "{stderr}"
    );
    let (code, stderr) = run(&["--anonymous-subscribe", "not a topic"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    // Explicit anonymous access on every interface starts (and is stopped here).
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(herald_bin())
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ])
        .args(["--anonymous-subscribe", ">"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(line.starts_with("herald listening on"), "{line}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn herald_token_refuses_what_it_cannot_sign() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, "short").unwrap();
    let long = dir.path().join("long.key");
    std::fs::write(&long, KEY).unwrap();
    for (key, args, want) in [
        (&short, &["--subscribe", "a"][..], "at least 32 bytes"),
        (&long, &[][..], "grant something"),
        (&long, &["--subscribe", "a b"][..], "not a topic or pattern"),
    ] {
        let out = std::process::Command::new(herald_bin())
            .args(["token", "--auth-hmac-key-file", key.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn cross_origin_pages_get_cors_only_when_listed_and_cross_site_writes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &["--cors-origins", "https://app.example"])
        .await
        .unwrap();
    let api = herald.api();
    let url = |p: &str| format!("{}{p}", api.base);
    let own_origin = api.base.clone();

    // Preflight: the listed origin gets the methods and headers Herald reads; another gets none.
    let preflight = |origin: &'static str| {
        api.http
            .request(reqwest::Method::OPTIONS, url("/v1/topics/t/events"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, idempotency-key",
            )
            .send()
    };
    let ok = preflight("https://app.example").await.unwrap();
    assert_eq!(ok.status(), 204);
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    for needed in [
        "authorization",
        "content-type",
        "idempotency-key",
        "last-event-id",
    ] {
        assert!(allowed.contains(needed), "{allowed}");
    }
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert_eq!(h["vary"], "origin");
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // A stream for the listed origin carries the CORS headers; for another, none.
    let stream = |origin: &'static str| {
        api.http
            .get(url("/v1/stream?topic=t"))
            .header("origin", origin)
            .send()
    };
    let listed = stream("https://app.example").await.unwrap();
    assert_eq!(
        listed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(listed.headers()["access-control-allow-credentials"], "true");
    let unlisted = stream("https://evil.example").await.unwrap();
    assert!(
        unlisted
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert_eq!(unlisted.headers()["vary"], "origin");
    drop((listed, unlisted));

    // Writes: a foreign origin is refused before anything is read; the listed one, the server's
    // own and a client with no Origin (curl, a backend) pass.
    let publish = |origin: Option<&str>, content_type: &str| {
        let mut req = api
            .http
            .post(url("/v1/topics/t/events"))
            .header("content-type", content_type)
            .body(r#"{"data":1}"#);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let json = "application/json";
    let foreign = publish(Some("https://evil.example"), json).await.unwrap();
    assert_eq!(foreign.status(), 403);
    let body: Value = foreign.json().await.unwrap();
    assert_eq!(code(&body), "forbidden");
    assert_eq!(publish(Some("null"), json).await.unwrap().status(), 403);
    for origin in [Some("https://app.example"), Some(own_origin.as_str()), None] {
        let res = publish(origin, json).await.unwrap();
        assert_eq!(res.status(), 201, "{origin:?}");
    }
    // A write's body must be declared JSON: what an HTML form can send is 415.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let res = publish(None, ct).await.unwrap();
        assert_eq!(res.status(), 415, "{ct}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(code(&body), "unsupported_media_type");
    }
    assert_eq!(
        publish(None, "application/json; charset=utf-8")
            .await
            .unwrap()
            .status(),
        201
    );
    let (_, history) = api.get_json("/v1/topics/t/events").await.unwrap();
    assert_eq!(
        history["events"].as_array().unwrap().len(),
        4,
        "only the allowed writes stored"
    );
    let res = api
        .http
        .put(url("/api/post-update"))
        .header("origin", "https://evil.example")
        .header("content-type", "application/json")
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "the article's publish is guarded too");
}

#[tokio::test]
async fn a_verified_token_becomes_an_http_only_cookie() {
    let node = node(&["--auth-cookie", "hk", "--auth-cookie-same-site", "none"]).await;
    let token = mint(&node.key, &["--subscribe", "a", "--ttl", "10m"]);
    let http = &node.herald.api().http;
    let post = |auth: Option<&str>| {
        let mut req = http.post(node.url("/v1/auth/cookie"));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(post(Some("not.a.token")).await.unwrap().status(), 401);
    let res = post(Some(&token)).await.unwrap();
    assert_eq!(res.status(), 204);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with(&format!("hk={token}; ")), "{cookie}");
    for attribute in ["HttpOnly", "Path=/", "SameSite=None", "Secure"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    let max_age: u64 = cookie
        .split("Max-Age=")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((590..=631).contains(&max_age), "{max_age}");
    // The cookie opens what the token grants.
    let (status, _) = node
        .get("/v1/stream?topic=a", None, Some(&format!("hk={token}")))
        .await;
    assert_eq!(status, 200);
    let cleared = http
        .delete(node.url("/v1/auth/cookie"))
        .send()
        .await
        .unwrap();
    assert!(
        cleared.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

#[tokio::test]
async fn the_demo_page_is_held_to_the_grants_and_served_with_security_headers() {
    let node = node(&["--anonymous-subscribe", "scores"]).await;
    // The default topic is public here; another topic's history is not rendered for anyone.
    let (status, _) = node.get("/", None, None).await;
    assert_eq!(status, 200);
    let (status, body) = node.get("/?topic=private", None, None).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));
    let token = mint(&node.key, &["--subscribe", "private"]);
    let cookie = format!("herald_token={token}");
    let (status, _) = node.get("/?topic=private", None, Some(&cookie)).await;
    assert_eq!(status, 200);
    let (status, body) = node.get("/?topic=other", None, Some(&cookie)).await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    for path in ["/", "/article", "/article?client=herald"] {
        let res = node
            .herald
            .api()
            .http
            .get(node.url(path))
            .send()
            .await
            .unwrap();
        let h = res.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
    }
    let (status, body) = node.get("/article?client=other", None, None).await;
    assert_eq!((status, code(&body)), (400, "invalid_request"));
    // Switched off, the pages are not there at all.
    let dir = tempfile::tempdir().unwrap();
    let off = Herald::start(dir.path(), &["--demo-pages", "false"])
        .await
        .unwrap();
    for path in ["/", "/article"] {
        let (status, _) = off.api().get_text_status(path).await;
        assert_eq!(status, 404, "{path}");
    }
    // Lag reports switched off: the endpoint is gone and the page asks for none.
    let dir = tempfile::tempdir().unwrap();
    let quiet = Herald::start(dir.path(), &["--lag-reports", "false"])
        .await
        .unwrap();
    let report = quiet
        .api()
        .http
        .post(format!("{}/v1/telemetry/lag", quiet.base))
        .json(&json!({ "samples": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), 404);
    let (_, page) = quiet.api().get_text_status("/").await;
    assert!(page.contains(r#"data-lag-sample="0""#), "{page}");
}

#[tokio::test]
async fn a_token_subject_is_held_to_the_rates_from_any_address() {
    let node = node(&["--trusted-proxies", "127.0.0.1", "--publish-rate", "3/min"]).await;
    let alice = mint(&node.key, &["--publish", ">", "--sub", "alice"]);
    let bob = mint(&node.key, &["--publish", ">", "--sub", "bob"]);
    let http = &node.herald.api().http;
    let publish = |token: &str, ip: &str| {
        http.post(node.url("/v1/topics/t/events"))
            .bearer_auth(token)
            .header("x-forwarded-for", ip)
            .json(&json!({ "data": 1 }))
            .send()
    };
    // Three publishes from three addresses: each address has room left, the subject does not.
    for ip in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        assert_eq!(publish(&alice, ip).await.unwrap().status(), 201, "{ip}");
    }
    let res = publish(&alice, "203.0.113.4").await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(code(&body), "too_many_requests");
    // Another subject from an address alice used is served.
    assert_eq!(publish(&bob, "203.0.113.1").await.unwrap().status(), 201);
}

/// base64url without padding (RFC 7515's encoding of a JWK's `k`).
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A JWKS document of one HMAC key (an `oct` JWK), the kind `herald token` signs with.
fn oct_jwks(secret: &str) -> String {
    json!({"keys": [{"kty": "oct", "alg": "HS256", "k": b64url(secret.as_bytes())}]}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_an_https_jwks_url_and_rotate_on_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let (first, second) = (dir.path().join("first.key"), dir.path().join("second.key"));
    std::fs::write(&first, KEY).unwrap();
    std::fs::write(&second, format!("{KEY}-rotated")).unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("jwks.json"), oct_jwks(KEY)).unwrap();
    // The identity provider: Python's HTTP server over TLS with the test CA's certificate.
    let port = herald_tests::cluster::free_port();
    let script = "import http.server, ssl, sys\n\
        port, root, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]\n\
        handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=root)\n\
        server = http.server.ThreadingHTTPServer(('127.0.0.1', port), handler)\n\
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
        context.load_cert_chain(cert, key)\n\
        server.socket = context.wrap_socket(server.socket, server_side=True)\n\
        server.serve_forever()\n";
    let _idp = tokio::process::Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .arg(&site)
        .arg(certs.join("server.pem"))
        .arg(certs.join("server.key"))
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    herald_tests::cluster::wait_port(port).await.unwrap();
    let url = format!("https://127.0.0.1:{port}/jwks.json");
    let ca = certs.join("ca.pem");
    let herald = Herald::start(
        &dir.path().join("data"),
        &[
            "--auth-jwks-url",
            &url,
            "--auth-jwks-ca-file",
            ca.to_str().unwrap(),
            "--auth-jwks-refresh",
            "1s",
        ],
    )
    .await
    .unwrap();
    let status = |token: String| {
        let req = herald
            .api()
            .http
            .get(format!("{}/v1/stream?topic=a", herald.api().base))
            .bearer_auth(token);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let old = mint(&first, &["--subscribe", "a"]);
    let new = mint(&second, &["--subscribe", "a", "--publish", "a"]);
    assert_eq!(status(old.clone()).await, 200);
    assert_eq!(status(new.clone()).await, 401);
    // A stream opened with the old key stays open through the rotation.
    let mut open = herald_tests::SseStream::open(
        herald
            .api()
            .http
            .get(format!("{}/v1/stream?topic=a", herald.api().base))
            .bearer_auth(&old),
    )
    .await
    .unwrap();
    // The provider rotates its key: within a refresh the new one is accepted, the old refused.
    std::fs::write(site.join("jwks.json"), oct_jwks(&format!("{KEY}-rotated"))).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status(new.clone()).await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated key was not fetched"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status(old).await, 401);
    let published = herald
        .api()
        .http
        .post(format!("{}/v1/topics/a/events", herald.api().base))
        .bearer_auth(&new)
        .json(&json!({"data": "after the rotation"}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    let event = loop {
        let e = open
            .next_within(Duration::from_secs(5))
            .await
            .unwrap()
            .expect("the stream opened before the rotation is still open");
        if e.event == "message" {
            break e;
        }
    };
    assert_eq!(event.data, "\"after the rotation\"");

    // A URL that is not https, and a CA file without a URL, do not start.
    for args in [
        &["--auth-jwks-url", "http://127.0.0.1/jwks.json"][..],
        &[
            "--auth-jwks-ca-file",
            ca.to_str().unwrap(),
            "--anonymous-subscribe",
            ">",
        ][..],
    ] {
        let (code, stderr) = run(args).await;
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
    }
}
