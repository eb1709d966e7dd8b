//! `--bus redis`: the article's topology (MongoDB sequences and keeps events, Redis Pub/Sub
//! carries them, no NATS) with Herald's guarantees. Two ingests publish concurrently, so their
//! Redis messages race; the gateways drop Redis messages on purpose (the fault hook), one of them
//! every message; Redis itself is stopped for a while. Every subscriber still gets exactly its
//! events, in order.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use herald_tests::cluster::{Deployment, Mongo, Nginx, Redis, Service};
use serde_json::json;
use tokio::task::JoinSet;

use crate::common::{
    Acked, FILTERS, Subscriber, TOPICS, check_all, head_id, publish_share, publish_until_acked,
};

const EVENTS: usize = 1500;
const SUBSCRIBERS: usize = 30;

struct RedisCluster {
    redis: Redis,
    _mongo: Mongo,
    ingests: Vec<Service>,
    gateways: Vec<Service>,
}

/// Redis, MongoDB, two ingests and three gateways in the Redis bus mode: the first two gateways
/// drop 30% of the Redis messages, the third drops every one (it learns of events only from gap
/// fills and the poll of MongoDB).
async fn start() -> RedisCluster {
    let redis = Redis::start().await.unwrap();
    let mongo = Mongo::start().await.unwrap();
    let deployment = Deployment::redis_bus(&redis, &mongo, &[]);
    let mut ingests = Vec::new();
    for _ in 0..2 {
        ingests.push(deployment.ingest(&[], &[]).await.unwrap());
    }
    let mut gateways = Vec::new();
    for drop in ["0.3", "0.3", "1"] {
        let fault = format!("drop-redis:{drop}");
        let mut gateway = deployment
            .gateway_env(&["--redis-poll", "200ms"], &[("HERALD_FAULT", &fault)])
            .await
            .unwrap();
        gateway.wait_stderr("fault: dropping").await.unwrap();
        gateways.push(gateway);
    }
    RedisCluster {
        redis,
        _mongo: mongo,
        ingests,
        gateways,
    }
}

async fn burst(redis_outage: bool) {
    let mut cluster = start().await;
    let acked = Acked::default();
    let from = head_id(&cluster.ingests[0].api(), &acked).await;
    // Each subscriber on one gateway, so each gateway's own feed is what is checked.
    let subscribers: Vec<Subscriber> = (0..SUBSCRIBERS)
        .map(|i| {
            Subscriber::start(
                cluster.gateways[i % cluster.gateways.len()].api(),
                FILTERS[i % FILTERS.len()].to_vec(),
                from.clone(),
            )
        })
        .collect();
    let next = Arc::new(AtomicUsize::new(0));
    let mut publishers = JoinSet::new();
    for ingest in &cluster.ingests {
        for _ in 0..6 {
            let (api, next, acked) = (ingest.api(), Arc::clone(&next), acked.clone());
            publishers.spawn(publish_share(api, next, acked, EVENTS, "r"));
        }
    }
    if redis_outage {
        while next.load(Ordering::Relaxed) < EVENTS / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cluster.redis.stop().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.redis.resume().await.unwrap();
    }
    while let Some(r) = publishers.join_next().await {
        r.unwrap();
    }
    assert_eq!(acked.len(), EVENTS + 1);
    let reconnects = check_all(subscribers, &acked).await;
    assert_eq!(reconnects, 0, "no stream should have ended");
    let (mut fills, mut polled) = (Vec::new(), Vec::new());
    for gateway in &cluster.gateways {
        let api = gateway.api();
        fills.push(api.metric("herald_hub_gap_fills_total").await.unwrap());
        polled.push(
            api.metric("herald_redis_bus_polled_events_total")
                .await
                .unwrap(),
        );
    }
    // Messages lost mid-stream are revealed by the next one and filled by the hub; the gateway
    // that hears nothing on Redis learns of every event from its poll of MongoDB.
    assert!(
        fills[..2].iter().all(|&f| f > 0.0),
        "the gateways dropping 30% filled gaps from MongoDB: {fills:?}"
    );
    assert!(
        polled[2] >= EVENTS as f64,
        "the gateway dropping every message read every event through the poll: {polled:?}"
    );
    eprintln!(
        "redis bus: {SUBSCRIBERS} subscribers on 3 gateways (dropping 30%, 30%, 100% of the Redis messages), {EVENTS} events from 2 ingests, redis outage {redis_outage}; gap fills per gateway {fills:?}, events found by the poll {polled:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_ingests_and_dropped_redis_messages_lose_nothing() {
    burst(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_delays_events_and_loses_none() {
    burst(true).await;
}

/// Behind nginx, a client of a killed Redis-bus gateway resumes on another with no gap, and the
/// history and the article's endpoints work as in the JetStream mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_of_a_killed_redis_bus_gateway_resume_on_another() {
    let redis = Redis::start().await.unwrap();
    let mongo = Mongo::start().await.unwrap();
    let deployment = Deployment::redis_bus(&redis, &mongo, &[]);
    let ingest = deployment.ingest(&[], &[]).await.unwrap();
    let mut gateways = [
        deployment.gateway(&[]).await.unwrap(),
        deployment.gateway(&[]).await.unwrap(),
    ];
    let addrs: Vec<&str> = gateways.iter().map(Service::addr).collect();
    let nginx = Nginx::start(&addrs, &[ingest.addr()]).await.unwrap();
    let lb = nginx.api();
    let acked = Acked::default();
    let from = head_id(&lb, &acked).await;
    let subscribers: Vec<Subscriber> = (0..10)
        .map(|i| Subscriber::start(lb.clone(), FILTERS[i].to_vec(), from.clone()))
        .collect();
    for i in 0..400 {
        if i == 150 {
            gateways[0].kill9().await;
        }
        let topic = TOPICS[i % TOPICS.len()];
        let (id, _) = publish_until_acked(&lb, topic, &format!("k{i}"), json!({ "n": i })).await;
        acked.add(topic, &id);
    }
    let reconnects = check_all(subscribers, &acked).await;
    assert!(reconnects > 0, "no subscriber was on the killed gateway");
    let (status, history) = lb.get_json("/v1/topics/a/events?limit=5").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(history["events"].as_array().unwrap().len(), 5);
}

/// G4 with `--bus redis`: once retention has emptied the `events` collection, the last id a
/// client received is still the head — it resumes (`recovered:true`), it is not `unknown`. (The
/// head was MongoDB's newest event, which retention removes; it is the sequence counter.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_id_still_resumes_after_retention_emptied_mongodb() {
    let redis = Redis::start().await.unwrap();
    let mongo = Mongo::start().await.unwrap();
    let deployment = Deployment::redis_bus(&redis, &mongo, &[]);
    let ingest = deployment
        .ingest(&["--retention-age", "1s", "--trim-interval", "200ms"], &[])
        .await
        .unwrap();
    let gateway = deployment.gateway(&[]).await.unwrap();
    let mut last = String::new();
    for n in 0..5 {
        last = ingest.api().publish("t", json!(n)).await.unwrap().id();
    }
    // Retention empties the collection.
    let api = gateway.api();
    for _ in 0..100 {
        let (_, history) = api.get_json("/v1/topics/t/events").await.unwrap();
        if history["events"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, history) = api.get_json("/v1/topics/t/events").await.unwrap();
    assert_eq!(history["events"], json!([]), "retention ran");
    assert_eq!(
        history["head"],
        json!(last),
        "the head is the last id handed out"
    );
    let mut stream = api.stream("/v1/stream?topic=t", Some(&last)).await.unwrap();
    let verdict = stream.next().await.unwrap().unwrap();
    assert_eq!(verdict.event, "herald.resume");
    let verdict: serde_json::Value = serde_json::from_str(&verdict.data).unwrap();
    assert_eq!(verdict["recovered"], true, "{verdict}");
    // And the next event follows it.
    let next = ingest.api().publish("t", json!(5)).await.unwrap().id();
    let mut got = stream.next().await.unwrap().unwrap();
    while got.event == "herald.live" {
        got = stream.next().await.unwrap().unwrap();
    }
    assert_eq!(got.id, next);
    assert_eq!(herald_tests::seq_of(&next), herald_tests::seq_of(&last) + 1);
}
