//! End-to-end benchmark (not a test): publish→SSE latency and fan-out deliveries/s for 1,000
//! subscribers, through the distributed path (herald-ingest → NATS JetStream → herald-gateway,
//! real servers) and through the standalone `herald`, in one run.
//!
//! `cargo bench -p herald-tests --bench e2e` (after `tests/servers/install` and a build of the
//! binaries; `tests/run` does both). Options through the environment: `BENCH_SUBSCRIBERS`
//! (1000), `BENCH_RATE` (events/s in the latency phase, 50), `BENCH_LATENCY_EVENTS` (200),
//! `BENCH_BURST_EVENTS` (500), `BENCH_ROUNDS` (3).
//!
//! The distributed path runs `BENCH_ROUNDS` times with trace export off and as many with it on
//! (OTLP to an in-process receiver, `parentbased_traceidratio` at 1%), alternating, each on
//! fresh ingest and gateway processes; the medians and their ratio are printed.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use herald_tests::{
    Api, Herald,
    cluster::{Deployment, Mongo, Nats},
    otlp::Receiver,
};
use serde_json::json;
use tokio::{sync::Barrier, task::JoinSet};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[derive(Debug, Clone)]
struct Figures {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    deliveries_per_s: f64,
    delivered: usize,
    expected: usize,
}

/// Opens `subscribers` streams, publishes a paced phase (latency) then a burst (throughput).
async fn measure(publish: Api, subscribe: Api, subscribers: usize) -> Figures {
    let (rate, latency_events, burst_events) = (
        env("BENCH_RATE", 50),
        env("BENCH_LATENCY_EVENTS", 200),
        env("BENCH_BURST_EVENTS", 500),
    );
    let total = latency_events + burst_events;
    let warmup = publish
        .publish("bench", json!({ "t": 0 }))
        .await
        .unwrap()
        .id();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(subscribers * latency_events)));
    let last_delivery = Arc::new(Mutex::new(Instant::now()));
    let ready = Arc::new(Barrier::new(subscribers + 1));
    let mut tasks = JoinSet::new();
    for _ in 0..subscribers {
        let (api, warmup, latencies, last_delivery, ready) = (
            subscribe.clone(),
            warmup.clone(),
            Arc::clone(&latencies),
            Arc::clone(&last_delivery),
            Arc::clone(&ready),
        );
        tasks.spawn(async move {
            let mut stream = api
                .stream("/v1/stream?topic=bench", Some(&warmup))
                .await
                .unwrap();
            ready.wait().await;
            let mut got = 0;
            let mut mine = Vec::with_capacity(latency_events);
            while got < total {
                let Ok(Some(ev)) = stream.next_within(Duration::from_secs(60)).await else {
                    break;
                };
                if ev.event.starts_with("herald.") {
                    continue;
                }
                got += 1;
                let sent: u64 = serde_json::from_str::<serde_json::Value>(&ev.data).unwrap()["t"]
                    .as_u64()
                    .unwrap();
                if got <= latency_events {
                    mine.push(now_us().saturating_sub(sent));
                }
            }
            *last_delivery.lock().unwrap() = Instant::now();
            latencies.lock().unwrap().extend(mine);
            got
        });
    }
    ready.wait().await;

    // Latency: a fixed rate.
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(gap);
    for _ in 0..latency_events {
        tick.tick().await;
        let p = publish
            .publish("bench", json!({ "t": now_us() }))
            .await
            .unwrap();
        assert!(p.status.is_success());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Throughput: as fast as 8 publishers go.
    let started = Instant::now();
    let mut publishers = JoinSet::new();
    for w in 0..8 {
        let api = publish.clone();
        publishers.spawn(async move {
            for _ in (w..burst_events).step_by(8) {
                let p = api
                    .publish("bench", json!({ "t": now_us() }))
                    .await
                    .unwrap();
                assert!(p.status.is_success());
            }
        });
    }
    while publishers.join_next().await.is_some() {}
    let mut delivered = 0;
    while let Some(got) = tasks.join_next().await {
        delivered += got.unwrap();
    }
    let elapsed = last_delivery.lock().unwrap().duration_since(started);
    let mut l = latencies.lock().unwrap().clone();
    l.sort_unstable();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Figures {
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: l.last().copied().unwrap_or(0) as f64 / 1000.0,
        deliveries_per_s: (burst_events * subscribers) as f64 / elapsed.as_secs_f64(),
        delivered,
        expected: total * subscribers,
    }
}

/// The run with the median deliveries/s.
fn median(mut runs: Vec<Figures>) -> Figures {
    runs.sort_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s));
    runs[runs.len() / 2].clone()
}

#[tokio::main]
async fn main() {
    let subscribers = env("BENCH_SUBSCRIBERS", 1000);

    let rounds = env("BENCH_ROUNDS", 3).max(1);
    let nats = Nats::start().await.unwrap();
    let mongo = Mongo::start_local().await.unwrap();
    let deployment = Deployment::new(&nats, &mongo, &[]);
    let receiver = Receiver::start().await.unwrap();
    let traced_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
    ];
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for traced in [false, true] {
            let env: &[(&str, &str)] = if traced { &traced_env } else { &[] };
            let ingest = deployment.ingest(&[], env).await.unwrap();
            let gateway = deployment
                .gateway_env(&["--max-connections", "20000"], env)
                .await
                .unwrap();
            let figures = measure(ingest.api(), gateway.api(), subscribers).await;
            if traced { &mut on } else { &mut off }.push(figures);
        }
    }
    // Let the last batch of spans arrive before counting them.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let spans = receiver.count();
    let per_round =
        |runs: &[Figures]| -> Vec<u64> { runs.iter().map(|f| f.deliveries_per_s as u64).collect() };
    println!(
        "\ndistributed deliveries/s per round, trace export off: {:?}; on (1%): {:?}",
        per_round(&off),
        per_round(&on)
    );
    let distributed = median(off);
    let traced = median(on);

    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &["--max-connections", "20000"])
        .await
        .unwrap();
    let standalone = measure(herald.api(), herald.api(), subscribers).await;

    println!("\nend-to-end, {subscribers} subscribers on one topic, one gateway, this machine:");
    println!(
        "{:<13} {:>9} {:>9} {:>9} {:>15} {:>12}",
        "path", "p50 ms", "p99 ms", "max ms", "deliveries/s", "delivered"
    );
    for (name, f) in [
        ("distributed", &distributed),
        ("traced 1%", &traced),
        ("standalone", &standalone),
    ] {
        println!(
            "{name:<13} {:>9.2} {:>9.2} {:>9.2} {:>15.0} {:>12}",
            f.p50_ms,
            f.p99_ms,
            f.max_ms,
            f.deliveries_per_s,
            format!("{}/{}", f.delivered, f.expected)
        );
    }
    let overhead = traced.deliveries_per_s / distributed.deliveries_per_s;
    println!(
        "distributed with trace export on (1% sampled) / off, deliveries/s: {overhead:.3} \
         (medians of {rounds} rounds each; {spans} spans exported)"
    );
    println!(
        "{}",
        json!({
            "bench": "e2e",
            "subscribers": subscribers,
            "rounds": rounds,
            "traced_1pct": { "p50_ms": traced.p50_ms, "p99_ms": traced.p99_ms, "max_ms": traced.max_ms, "deliveries_per_s": traced.deliveries_per_s, "delivered": traced.delivered, "expected": traced.expected, "spans_exported": spans },
            "tracing_overhead_ratio": overhead,
            "distributed": { "p50_ms": distributed.p50_ms, "p99_ms": distributed.p99_ms, "max_ms": distributed.max_ms, "deliveries_per_s": distributed.deliveries_per_s, "delivered": distributed.delivered, "expected": distributed.expected },
            "standalone": { "p50_ms": standalone.p50_ms, "p99_ms": standalone.p99_ms, "max_ms": standalone.max_ms, "deliveries_per_s": standalone.deliveries_per_s, "delivered": standalone.delivered, "expected": standalone.expected },
        })
    );
}
