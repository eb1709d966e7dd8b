//! G6: a slow or stalled subscriber never delays the others, is caught up from the store or cut
//! off, and memory stays bounded.

use std::{
    io::Write as _,
    net::TcpStream,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::future::join_all;
use herald_tests::{Api, Herald, seq_of};
use serde_json::json;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Opens a stream on a raw socket and never reads from it.
fn stalled_subscriber(base: &str, query: &str) -> TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut socket = TcpStream::connect(addr).unwrap();
    write!(
        socket,
        "GET /v1/stream?{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    socket
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_delay_the_others_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(
        dir.path(),
        &[
            "--subscriber-queue",
            "16",
            "--write-timeout",
            "120s",
            "--retention-bytes",
            "off",
            // The window of recent events is a fixed bound of its own; small, the warm-up fills
            // it too, and what is measured is only what the stalled subscribers cost.
            "--replay-window",
            "1MiB",
        ],
    )
    .await
    .unwrap();
    let api = herald.api();
    let baseline = latency_run(&api, 4, 150).await;

    let payload = "x".repeat(16 * 1024);
    let bulk_events = 2000;
    // Warm up: the store's page cache fills to its bound before memory is measured.
    publish_bulk(&api, &payload, bulk_events).await;

    let stalled: Vec<TcpStream> = (0..3)
        .map(|_| stalled_subscriber(&herald.base, "topic=t&topic=bulk"))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = herald.rss_kib();
    publish_bulk(&api, &payload, bulk_events).await;
    let rss_after = herald.rss_kib();
    let with_stalled = latency_run(&api, 4, 150).await;
    drop(stalled);

    let data_mib = (bulk_events * payload.len()) as f64 / (1 << 20) as f64;
    let grew_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    println!(
        "latency p50/p99 µs: baseline {}/{}, with 3 stalled subscribers {}/{}; RSS grew {grew_mib:.1} MiB while {data_mib:.1} MiB went to 3 stalled subscribers",
        baseline.0, baseline.1, with_stalled.0, with_stalled.1
    );
    assert!(
        with_stalled.0 <= baseline.0 * 3 + 5_000 && with_stalled.1 <= baseline.1 * 3 + 50_000,
        "others' latency changed: baseline {baseline:?} µs, with stalled subscribers {with_stalled:?} µs"
    );
    assert!(
        grew_mib < data_mib / 2.0,
        "memory grew {grew_mib:.1} MiB for {data_mib:.1} MiB sent to each of 3 stalled subscribers"
    );
}

async fn publish_bulk(api: &Api, payload: &str, events: usize) {
    for chunk in 0..events / 8 {
        join_all((0..8).map(|k| async move {
            let r = api
                .publish("bulk", json!({"n": chunk * 8 + k, "pad": payload}))
                .await
                .unwrap();
            assert_eq!(r.status, 201);
        }))
        .await;
    }
}

/// `subscribers` readers on `t`, `n` paced publishes; (p50, p99) publish→receive in µs.
async fn latency_run(api: &Api, subscribers: usize, n: usize) -> (u64, u64) {
    let mut streams = Vec::new();
    for _ in 0..subscribers {
        streams.push(api.stream("/v1/stream?topic=t", None).await.unwrap());
    }
    let readers = streams.into_iter().map(|mut s| {
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            let mut last = 0;
            while latencies.len() < n {
                let ev = s.next().await.unwrap().expect("stream open");
                let received = now_us();
                let data: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
                assert!(seq_of(&ev.id) > last, "in order");
                last = seq_of(&ev.id);
                latencies.push(received.saturating_sub(data["t"].as_u64().unwrap()));
            }
            latencies
        })
    });
    let readers: Vec<_> = readers.collect();
    for i in 0..n {
        api.publish("t", json!({"t": now_us(), "i": i}))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    let mut all: Vec<u64> = Vec::new();
    for r in readers {
        all.extend(r.await.unwrap());
    }
    all.sort_unstable();
    (percentile(&all, 0.5), percentile(&all, 0.99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_catches_up_in_place_and_a_stopped_one_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(
        dir.path(),
        &[
            "--subscriber-queue",
            "4",
            "--write-timeout",
            "1s",
            "--max-body",
            "1MiB",
        ],
    )
    .await
    .unwrap();
    let api = herald.api();
    let stopped = stalled_subscriber(&herald.base, "topic=t");
    let mut slow = api.stream("/v1/stream?topic=t", None).await.unwrap();
    // The stopped reader's stream must be open before the first publish: opened late, it would
    // be sent only the tail, which its socket buffers can hold whole, and never be cut off.
    let mut open = 0.0;
    for _ in 0..100 {
        open = api.metric("herald_connections_open").await.unwrap();
        if open >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 2.0, "both streams are open");
    let payload = "y".repeat(16 * 1024);
    let total = 600usize;
    let publisher = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for chunk in 0..total / 6 {
                let batch = json!(
                    (0..6)
                        .map(
                            |k| json!({"topic": "t", "data": {"n": chunk * 6 + k, "pad": payload}})
                        )
                        .collect::<Vec<_>>()
                );
                let r = api.publish_batch(batch).await.unwrap();
                assert_eq!(r.status, 201);
                ids.extend(
                    r.body["events"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e["id"].as_str().unwrap().to_owned()),
                );
            }
            ids
        })
    };
    // Read slowly: a pause after every event.
    let mut got = Vec::new();
    while got.len() < total {
        let ev = slow
            .next()
            .await
            .unwrap()
            .expect("the slow reader is not cut off");
        got.push(ev.id);
        if got.len() < total / 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let ids = publisher.await.unwrap();
    assert_eq!(
        got, ids,
        "every event exactly once, in order, despite falling behind"
    );
    let caught_up = api
        .metric("herald_slow_subscribers_caught_up_total")
        .await
        .unwrap();
    assert!(
        caught_up >= 1.0,
        "the slow reader overflowed its queue and caught up in place"
    );
    let mut cut_off = 0.0;
    for _ in 0..50 {
        cut_off = api
            .metric("herald_slow_subscribers_cut_off_total")
            .await
            .unwrap();
        if cut_off >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cut_off, 1.0,
        "the stopped reader was cut off by the write timeout"
    );
    println!("slow reader caught up {caught_up} time(s); stopped reader cut off");
    drop(stopped);
}
