//! The HTTP edge under attack, against the real binary: 1,000 slowloris heads and 1,000
//! slowloris bodies at once are cut off by the head and body timeouts while a control subscriber
//! on the same server keeps receiving every event (its delivery latency is printed); oversized
//! heads, too many headers and overlong URLs get their clear answer; one client address can take
//! neither every stream nor the server's time.

use std::time::{Duration, Instant};

use herald_tests::Herald;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
};

const SLOW_HEADS: usize = 1000;
const SLOW_BODIES: usize = 1000;

/// Reads what the server sends until it closes (or `within` passes): the bytes read.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_and_bodies_are_cut_off_while_a_subscriber_keeps_its_latency() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(
        dir.path(),
        &["--header-timeout", "2s", "--body-timeout", "2s"],
    )
    .await
    .unwrap();
    let api = herald.api();
    let addr = api.base.trim_start_matches("http://").to_owned();
    let mut control = api.stream("/v1/stream?topic=control", None).await.unwrap();

    // The attack: heads that never end, bodies that never end.
    let mut attackers = JoinSet::new();
    for i in 0..SLOW_HEADS + SLOW_BODIES {
        let addr = addr.clone();
        attackers.spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let started = Instant::now();
            if i < SLOW_HEADS {
                s.write_all(b"GET /v1/stream?topic=t HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    .await
                    .unwrap();
            } else {
                s.write_all(
                    b"POST /v1/topics/t/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"data\":",
                )
                .await
                .unwrap();
            }
            let answer = until_closed(&mut s, Duration::from_secs(20)).await;
            (i < SLOW_HEADS, started.elapsed(), answer)
        });
    }

    // Meanwhile the control subscriber receives an event every 20 ms, each timed.
    let mut latencies = Vec::new();
    let publishing = Instant::now();
    let mut n = 0u64;
    while publishing.elapsed() < Duration::from_secs(4) {
        let sent = Instant::now();
        let r = api.publish("control", json!({ "n": n })).await.unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
        let event = control.next().await.unwrap().expect("the stream is open");
        latencies.push(sent.elapsed());
        assert!(event.data.contains(&format!("\"n\":{n}")), "{}", event.data);
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (mut heads_cut, mut bodies_408) = (0, 0);
    while let Some(done) = attackers.join_next().await {
        let (head, took, answer) = done.unwrap();
        let answer = answer.expect("the server closed the connection within 20 s");
        assert!(took < Duration::from_secs(8), "cut off after {took:?}");
        if head {
            heads_cut += 1;
        } else {
            let text = String::from_utf8_lossy(&answer);
            assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            assert!(text.contains("request_timeout"), "{text}");
            bodies_408 += 1;
        }
    }
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    eprintln!(
        "edge: {heads_cut} slow heads cut off, {bodies_408} slow bodies answered 408; control subscriber: {} events, publish→receive p50 {:?} p99 {:?} max {:?}",
        latencies.len(),
        p(0.5),
        p(0.99),
        latencies.last().unwrap()
    );
    assert_eq!((heads_cut, bodies_408), (SLOW_HEADS, SLOW_BODIES));
    assert!(p(0.99) < Duration::from_millis(500), "p99 {:?}", p(0.99));
}

#[tokio::test]
async fn oversized_heads_too_many_headers_and_long_urls_get_their_answer() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &[]).await.unwrap();
    let api = herald.api();
    let addr = api.base.trim_start_matches("http://").to_owned();
    let raw = |request: Vec<u8>| {
        let addr = addr.clone();
        async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(&request).await.unwrap();
            let got = until_closed(&mut s, Duration::from_secs(5)).await.unwrap();
            String::from_utf8_lossy(&got).into_owned()
        }
    };
    // A 20 KiB header (the limit is 16 KiB).
    let big = format!(
        "GET /v1/topics/t/events HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20 << 10)
    );
    let answer = raw(big.into_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // 100 headers (the limit is 64).
    let mut many = String::from("GET /v1/topics/t/events HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-H{i}: 1\r\n"));
    }
    many.push_str("Connection: close\r\n\r\n");
    let answer = raw(many.into_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A 5 KiB URL (the limit is 4 KiB).
    let (status, body) = api
        .get_text_status(&format!("/v1/stream?topic=t&pad={}", "p".repeat(5 << 10)))
        .await;
    assert_eq!(status, 414, "{body}");
    assert!(body.contains("uri_too_long"), "{body}");
    // And the server is fine.
    let (status, _) = api.get_json("/v1/topics/t/events").await.unwrap();
    assert!(status.is_success());
}

/// Opens a stream as the client `ip` (behind the trusted proxy the test plays): the first event's
/// type, or `"open"` when the stream stays open.
async fn stream_as(api: &herald_tests::Api, ip: &str) -> (String, Option<herald_tests::SseStream>) {
    let req = api
        .http
        .get(format!("{}/v1/stream?topic=t", api.base))
        .header("x-forwarded-for", format!("192.0.2.1, {ip}"));
    let mut stream = herald_tests::SseStream::open(req).await.unwrap();
    match stream.next_within(Duration::from_millis(300)).await {
        Ok(Some(ev)) => (format!("{} {}", ev.event, ev.data), None),
        Ok(None) => ("ended".into(), None),
        Err(_) => ("open".into(), Some(stream)),
    }
}

#[tokio::test]
async fn one_client_cannot_take_every_stream_or_flood_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(
        dir.path(),
        &[
            "--trusted-proxies",
            "127.0.0.1",
            "--max-streams-per-ip",
            "3",
            "--stream-open-rate",
            "5/min",
            "--publish-rate",
            "5/min",
        ],
    )
    .await
    .unwrap();
    let api = herald.api();
    let (state, control) = stream_as(&api, "198.51.100.1").await;
    assert_eq!(state, "open");
    let mut control = control.unwrap();

    // One address: three streams, then refusals it survives (in band, never a status).
    let mut held = Vec::new();
    for _ in 0..3 {
        let (state, stream) = stream_as(&api, "203.0.113.7").await;
        assert_eq!(state, "open");
        held.push(stream);
    }
    let (state, _) = stream_as(&api, "203.0.113.7").await;
    assert!(
        state.starts_with("herald.refused") && state.contains("too_many_connections"),
        "{state}"
    );
    // Its opens are counted too, refused ones included: the fifth is its last in the minute,
    // the sixth is refused for the rate.
    let _ = stream_as(&api, "203.0.113.7").await;
    let (state, _) = stream_as(&api, "203.0.113.7").await;
    assert!(state.contains("too_many_requests"), "{state}");
    // Closing a stream frees a slot, but not the rate.
    held.pop();
    let (state, _) = stream_as(&api, "203.0.113.7").await;
    assert!(state.contains("too_many_requests"), "{state}");
    // Another address is not affected.
    let (state, _) = stream_as(&api, "203.0.113.8").await;
    assert_eq!(state, "open");

    // Publishes: five a minute per address, then 429 with Retry-After.
    let publish = |ip: &'static str| {
        api.http
            .post(format!("{}/v1/topics/t/events", api.base))
            .header("x-forwarded-for", ip)
            .json(&json!({ "data": ip }))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(publish("203.0.113.7").await.unwrap().status(), 201);
    }
    let flooded = publish("203.0.113.7").await.unwrap();
    assert_eq!(flooded.status(), 429);
    let retry: u64 = flooded.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry), "{retry}");
    let body: serde_json::Value = flooded.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests");
    // Others publish, and the control subscriber receives everything that was accepted.
    assert_eq!(publish("198.51.100.1").await.unwrap().status(), 201);
    let (events, _) = control.collect(6).await.unwrap();
    assert_eq!(events.last().unwrap().data, "\"198.51.100.1\"");
    // This machine itself (no X-Forwarded-For from the loopback proxy) is not limited by address.
    for _ in 0..10 {
        let r = api.publish("t", json!(1)).await.unwrap();
        assert_eq!(r.status, 201);
    }
}

/// A flood of stream opens from one address (2,000, one after the other as fast as the client
/// can) is refused in band past its rate — every answer a 200 a native EventSource survives —
/// while a control subscriber from another address keeps receiving every event; its
/// publish→receive latency during the flood is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stream_opens_from_one_address_does_not_slow_the_others() {
    const FLOOD: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &["--trusted-proxies", "127.0.0.1"])
        .await
        .unwrap();
    let api = herald.api();
    let req = api
        .http
        .get(format!("{}/v1/stream?topic=control", api.base))
        .header("x-forwarded-for", "198.51.100.1");
    let mut control = herald_tests::SseStream::open(req).await.unwrap();

    // All at once: every open is its own task on its own connection.
    let flood = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut opens = JoinSet::new();
            for _ in 0..FLOOD {
                let api = api.clone();
                opens.spawn(async move {
                    let mut res = api
                        .http
                        .get(format!("{}/v1/stream?topic=t", api.base))
                        .header("x-forwarded-for", "203.0.113.66")
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(
                        res.status(),
                        200,
                        "every answer is one EventSource survives"
                    );
                    // A refusal is a whole answer; an open stream sends `retry:` and waits.
                    let mut text = Vec::new();
                    let ended = tokio::time::timeout(Duration::from_millis(500), async {
                        while let Some(chunk) = res.chunk().await.unwrap() {
                            text.extend_from_slice(&chunk);
                        }
                    })
                    .await
                    .is_ok();
                    let refused =
                        ended && String::from_utf8_lossy(&text).contains("herald.refused");
                    (refused, res)
                });
            }
            let (mut opened, mut refused) = (Vec::new(), 0);
            while let Some(done) = opens.join_next().await {
                match done.unwrap() {
                    (true, _) => refused += 1,
                    (false, res) => opened.push(res),
                }
            }
            (opened.len(), refused)
        })
    };
    let mut latencies = Vec::new();
    let mut n = 0u64;
    // During the flood, and on until 50 events have been timed.
    while !flood.is_finished() || latencies.len() < 50 {
        let sent = Instant::now();
        let r = api.publish("control", json!({ "n": n })).await.unwrap();
        assert_eq!(r.status, 201);
        let event = control
            .next()
            .await
            .unwrap()
            .expect("the control stream is open");
        assert!(event.data.contains(&format!("\"n\":{n}")), "{}", event.data);
        latencies.push(sent.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (opened, refused) = flood.await.unwrap();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    eprintln!(
        "flood: {FLOOD} stream opens from one address: {opened} opened, {refused} refused in band; control subscriber: {} events, publish→receive p50 {:?} p99 {:?} max {:?}",
        latencies.len(),
        p(0.5),
        p(0.99),
        latencies.last().unwrap()
    );
    assert_eq!(opened + refused, FLOOD);
    assert!(refused > FLOOD / 2, "{refused} refused");
    // The attacker shares this machine's two cores with the server and the control client, so
    // its burst shows in everyone's latency; the control stream must keep flowing regardless.
    assert!(p(0.99) < Duration::from_secs(2), "p99 {:?}", p(0.99));
}
