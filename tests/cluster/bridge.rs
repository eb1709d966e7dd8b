//! `herald-redis-bridge` against real servers: legacy publishers and subscribers on Redis beside
//! Herald's HTTP publishers and SSE subscribers, with bridges killed and Redis restarted.
//!
//! Events are told apart by the `id` member legacy messages carry (`L…` from a legacy Redis
//! publisher, `H…` from Herald's HTTP API), so every check is exact: each one seen once.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use herald_tests::{
    Api,
    cluster::{Redis, Service},
    seq_of,
};
use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::common::{Acked, Cluster, Seen, Subscriber, publish_until_acked};

/// The `id` member of an event's or a message's JSON.
fn id_of(json: &str) -> String {
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json:?}: {e}"));
    v["id"].as_str().unwrap_or_default().to_owned()
}

/// Subscribers of `channel` (`PUBSUB NUMSUB`).
async fn numsub(redis: &Redis, channel: &str) -> i64 {
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let reply: (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut conn)
        .await
        .unwrap();
    reply.1
}

async fn wait_numsub(redis: &Redis, channel: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while numsub(redis, channel).await < n {
        assert!(
            Instant::now() < deadline,
            "{channel}: fewer than {n} subscribers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A legacy subscriber: every message on a channel, as the article's SSE servers receive them.
struct LegacySubscriber {
    messages: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl LegacySubscriber {
    async fn start(redis: &Redis, channel: &str) -> Self {
        let mut pubsub = redis.client().get_async_pubsub().await.unwrap();
        pubsub.subscribe(channel).await.unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        let task = tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut stream = pubsub.into_on_message();
            while let Some(m) = stream.next().await {
                sink.lock()
                    .unwrap()
                    .push(m.get_payload::<String>().unwrap());
            }
        });
        Self { messages, task }
    }

    fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the messages received.
    async fn wait(&self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&self.messages()) {
            assert!(Instant::now() < deadline, "legacy subscriber: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LegacySubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sum over the bridges of one sample of their metrics.
async fn bridge_metric(bridges: &[&Service], direction: &str, outcome: &str) -> f64 {
    let sample =
        format!("herald_bridge_messages_total{{direction=\"{direction}\",outcome=\"{outcome}\"}}");
    let mut sum = 0.0;
    for bridge in bridges {
        sum += bridge.api().metric(&sample).await.unwrap();
    }
    sum
}

/// Checks an SSE subscriber's events: strictly increasing ids, and the `id` members are
/// `expected` in this order within each prefix (one publisher each), every one once.
fn check_sse(seen: &Seen, expected: &[String]) {
    assert!(
        seen.seqs.windows(2).all(|w| w[0] < w[1]),
        "ids not strictly increasing"
    );
    let ids: Vec<String> = seen.data.iter().map(|d| id_of(d)).collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "an event was delivered twice");
    let want: BTreeSet<&String> = expected.iter().collect();
    assert_eq!(distinct, want, "not exactly the events published");
    for prefix in ["L", "H", "S", "P"] {
        let got: Vec<&String> = ids.iter().filter(|i| i.starts_with(prefix)).collect();
        let want: Vec<&String> = expected.iter().filter(|i| i.starts_with(prefix)).collect();
        assert_eq!(got, want, "{prefix}: events out of their publisher's order");
    }
}

/// A Herald event on the topic, as the first event subscribers resume after.
async fn start_marker(api: &Api, topic: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let key = format!("start-{nanos}");
    publish_until_acked(api, topic, &key, json!({ "id": "start" }))
        .await
        .0
}

const LEGACY: usize = 300;

/// A legacy publisher on Redis and a Herald publisher over HTTP at once, two bridges both ways:
/// SSE subscribers on two gateways and a legacy Redis subscriber each see every event exactly
/// once; no event goes round the loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn legacy_and_herald_publishers_side_by_side_through_two_bridges() {
    let cluster = Cluster::start(1, 2, &[]).await;
    let redis = Redis::start().await.unwrap();
    let url = redis.url();
    let mut bridges = [
        cluster
            .deployment
            .bridge(&["--redis-url", &url])
            .await
            .unwrap(),
        cluster
            .deployment
            .bridge(&["--redis-url", &url])
            .await
            .unwrap(),
    ];
    let legacy = LegacySubscriber::start(&redis, "updates").await;
    wait_numsub(&redis, "updates", 3).await;
    let api = cluster.ingests[0].api();
    // Herald → Redis is up once an event published now reaches the legacy subscriber.
    let deadline = Instant::now() + Duration::from_secs(30);
    for k in 0.. {
        let (_, _) =
            publish_until_acked(&api, "updates", &format!("w{k}"), json!({ "id": "warmup" })).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if legacy.messages().iter().any(|m| m.contains("warmup")) {
            break;
        }
        assert!(Instant::now() < deadline, "no bridge republishes on redis");
    }
    let from = start_marker(&api, "updates").await;
    let subscribers: Vec<Subscriber> = (0..4)
        .map(|i| Subscriber::start(cluster.gateways[i % 2].api(), vec!["updates"], from.clone()))
        .collect();

    let legacy_publisher = {
        let client = redis.client();
        tokio::spawn(async move {
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            for i in 0..LEGACY {
                let message = json!({ "id": format!("L{i}"), "team": "home", "score": i });
                let receivers: i64 = conn.publish("updates", message.to_string()).await.unwrap();
                assert_eq!(receivers, 3, "L{i}: two bridges and the legacy subscriber");
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let acked = Acked::default();
    for i in 0..LEGACY {
        let data = json!({ "id": format!("H{i}"), "team": "away", "score": i });
        let (id, _) = publish_until_acked(&api, "updates", &format!("H{i}"), data).await;
        acked.add("updates", &id);
    }
    legacy_publisher.await.unwrap();

    let expected: Vec<String> = (0..LEGACY)
        .map(|i| format!("L{i}"))
        .chain((0..LEGACY).map(|i| format!("H{i}")))
        .collect();
    for subscriber in subscribers {
        let seen = subscriber.collect(2 * LEGACY).await;
        check_sse(&seen, &expected);
    }

    // The legacy subscriber: each legacy message once (its own publisher's), each Herald event
    // once (from one of the bridges, marked), and no legacy message back from Herald.
    legacy
        .wait("every Herald event republished", |m| {
            m.iter().filter(|m| id_of(m).starts_with('H')).count() >= LEGACY
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut counts: BTreeMap<(String, bool), usize> = BTreeMap::new();
    for m in legacy.messages() {
        let v: Value = serde_json::from_str(&m).unwrap();
        let id = v["id"].as_str().unwrap().to_owned();
        if id.starts_with(['L', 'H']) {
            *counts.entry((id, v.get("_herald").is_some())).or_default() += 1;
        }
    }
    for i in 0..LEGACY {
        assert_eq!(
            counts.remove(&(format!("L{i}"), false)),
            Some(1),
            "L{i} on redis"
        );
        assert_eq!(
            counts.remove(&(format!("H{i}"), true)),
            Some(1),
            "H{i} on redis"
        );
    }
    assert!(
        counts.is_empty(),
        "unexpected messages on redis: {counts:?}"
    );
    // One replica at a time republishes (the consumer's pinned client): in sequence order.
    let herald_order = |messages: &[String]| -> Vec<u64> {
        messages
            .iter()
            .filter_map(|m| {
                let v: Value = serde_json::from_str(m).ok()?;
                Some(seq_of(v["_herald"]["id"].as_str()?))
            })
            .collect()
    };
    let order = herald_order(&legacy.messages());
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "Herald's events reached redis out of order"
    );
    // The Herald events' payload is the article's shape plus the mark.
    let sample = legacy
        .messages()
        .into_iter()
        .find(|m| id_of(m) == "H0")
        .unwrap();
    let sample: Value = serde_json::from_str(&sample).unwrap();
    assert_eq!(sample["team"], "away");
    assert_eq!(sample["_herald"]["topic"], "updates");
    assert_eq!(
        seq_of(sample["_herald"]["id"].as_str().unwrap()),
        acked.expected(&["updates"], 0)[0]
    );

    // Both bridges heard every legacy message: one published it, the other was told Herald had
    // it. Each heard every Herald event on Redis and left it there; the one legacy event each
    // Herald event of Redis origin reached on the way out was not sent back.
    let all: Vec<&Service> = bridges.iter().collect();
    let published = bridge_metric(&all, "from_redis", "published").await;
    let duplicate = bridge_metric(&all, "from_redis", "duplicate").await;
    let loops_in = bridge_metric(&all, "from_redis", "skipped_loop").await;
    let loops_out = bridge_metric(&all, "to_redis", "skipped_loop").await;
    assert_eq!((published, duplicate), (LEGACY as f64, LEGACY as f64));
    assert!(loops_in >= 2.0 * LEGACY as f64, "{loops_in}");
    assert_eq!(loops_out, LEGACY as f64);

    // The replica that republishes dies: the other takes over, nothing skipped, still in order.
    let mut republished = Vec::new();
    for bridge in &bridges {
        republished.push(bridge_metric(&[bridge], "to_redis", "published").await);
    }
    assert_eq!(
        republished.iter().filter(|&&n| n > 0.0).count(),
        1,
        "one replica republishes at a time: {republished:?}"
    );
    let pinned = republished.iter().position(|&n| n > 0.0).unwrap();
    bridges[pinned].kill9().await;
    let killed = Instant::now();
    for i in 0..20 {
        let data = json!({ "id": format!("T{i}") });
        publish_until_acked(&api, "updates", &format!("T{i}"), data).await;
    }
    legacy
        .wait("the standby replica took over", |m| {
            m.iter().filter(|m| id_of(m).starts_with('T')).count() >= 20
        })
        .await;
    let takeover = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages = legacy.messages();
    let taken_over: Vec<String> = messages
        .iter()
        .map(|m| id_of(m))
        .filter(|id| id.starts_with('T'))
        .collect();
    let want: Vec<String> = (0..20).map(|i| format!("T{i}")).collect();
    assert_eq!(taken_over, want, "after the takeover: each once, in order");
    let order = herald_order(&messages);
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order after the takeover"
    );
    eprintln!(
        "bridge both ways, two replicas: {LEGACY} legacy PUBLISHes and {LEGACY} HTTP publishes; \
         from redis published {published}, duplicate {duplicate}, marked messages left on redis \
         {loops_in}, redis-origin events kept off redis {loops_out}; republishing replica killed: \
         the standby one had the next 20 events on redis {takeover:?} after the kill"
    );
}

const STREAM: &str = "legacy:updates";
const STREAM_TOPIC: &str = "legacy.updates";
const STREAM_ENTRIES: usize = 600;

/// The Streams option: a legacy producer `XADD`s while the bridge is killed with `kill -9` and
/// restarted (same consumer name) and Redis is killed and restarted: Herald has every entry once,
/// in order, and the group has nothing left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_lose_nothing_across_bridge_and_redis_restarts() {
    let cluster = Cluster::start(1, 1, &[]).await;
    let mut redis = Redis::start().await.unwrap();
    let url = redis.url();
    let args = [
        "--redis-url",
        &url,
        "--streams",
        STREAM,
        "--subscribe",
        "",
        "--to-redis",
        "false",
        "--consumer",
        "bridge-1",
    ];
    let mut bridge = cluster.deployment.bridge(&args).await.unwrap();
    let api = cluster.ingests[0].api();
    let from = start_marker(&api, STREAM_TOPIC).await;
    let subscriber = Subscriber::start(cluster.gateways[0].api(), vec![STREAM_TOPIC], from);

    let added = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let producer = {
        let (client, added) = (redis.client(), Arc::clone(&added));
        tokio::spawn(async move {
            let mut conn = client.get_connection_manager().await.unwrap();
            let mut failures = 0;
            for i in 0..STREAM_ENTRIES {
                let data = json!({ "id": format!("S{i}"), "score": i }).to_string();
                // A legacy producer retries until Redis takes the entry.
                loop {
                    let added: redis::RedisResult<String> =
                        conn.xadd(STREAM, "*", &[("data", &data)]).await;
                    if added.is_ok() {
                        break;
                    }
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                added.store(i + 1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            failures
        })
    };
    let reached = async |n: usize| {
        while added.load(std::sync::atomic::Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    reached(STREAM_ENTRIES / 3).await;
    bridge.kill9().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    bridge.restart_same_port().await.unwrap();
    reached(2 * STREAM_ENTRIES / 3).await;
    redis.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.resume().await.unwrap();
    let refused = producer.await.unwrap();
    assert!(refused > 0, "the producer never met the Redis outage");

    let seen = subscriber.collect(STREAM_ENTRIES).await;
    let expected: Vec<String> = (0..STREAM_ENTRIES).map(|i| format!("S{i}")).collect();
    check_sse(&seen, &expected);
    // Everything the bridge read is acknowledged.
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pending: redis::streams::StreamPendingReply =
            conn.xpending(STREAM, "herald-bridge").await.unwrap();
        if pending.count() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} entries left pending",
            pending.count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bridges = [&bridge];
    eprintln!(
        "bridge streams: {STREAM_ENTRIES} entries, bridge kill -9 and restart, redis kill -9 and \
         restart ({refused} XADDs refused meanwhile): all in Herald once, in order; duplicates \
         answered to the restarted bridge {}",
        bridge_metric(&bridges, "from_redis", "duplicate").await
    );
}

const PUBLISHES: usize = 900;

/// One legacy PUBLISH: its receivers count (`None` while Redis refused it) and when.
#[derive(Debug, Clone, Copy)]
struct Sent {
    receivers: Option<i64>,
    at: Instant,
}

/// Plain Pub/Sub: two bridge replicas, one killed (nothing lost: the other one took every
/// message); then the last one killed and restarted, then Redis killed and restarted. Messages
/// published with no bridge subscribed, and those the killed bridge had received and not yet
/// published, are lost: the test measures that window and checks nothing else is lost and
/// nothing is doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pubsub_loses_only_the_window_without_a_bridge_and_doubles_nothing() {
    let cluster = Cluster::start(1, 1, &[]).await;
    let mut redis = Redis::start().await.unwrap();
    let url = redis.url();
    let args = ["--redis-url", &url, "--to-redis", "false"];
    let mut a = cluster.deployment.bridge(&args).await.unwrap();
    let mut b = cluster.deployment.bridge(&args).await.unwrap();
    wait_numsub(&redis, "updates", 2).await;
    let api = cluster.ingests[0].api();
    let from = start_marker(&api, "updates").await;
    let mut stream = cluster.gateways[0]
        .api()
        .stream("/v1/stream?topic=updates", Some(&from))
        .await
        .unwrap();
    let events = tokio::spawn(async move {
        let mut seen = Vec::new();
        let last = format!("P{}", PUBLISHES - 1);
        loop {
            let event = stream
                .next_within(Duration::from_secs(60))
                .await
                .unwrap()
                .expect("the stream ended");
            if event.event.starts_with("herald.") {
                continue;
            }
            let id = id_of(&event.data);
            seen.push((seq_of(&event.id), id.clone()));
            if id == last {
                return seen;
            }
        }
    });

    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let publisher = {
        let (client, sent) = (redis.client(), Arc::clone(&sent));
        tokio::spawn(async move {
            let mut conn = client.get_connection_manager().await.unwrap();
            for i in 0..PUBLISHES {
                let message = json!({ "id": format!("P{i}"), "score": i }).to_string();
                // A legacy publisher that retries until Redis takes the message.
                loop {
                    // When it was sent: Redis counted its receivers after this.
                    let at = Instant::now();
                    let r: redis::RedisResult<i64> = conn.publish("updates", &message).await;
                    match r {
                        Ok(n) => {
                            sent.lock().unwrap().push(Sent {
                                receivers: Some(n),
                                at,
                            });
                            break;
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let reached = async |n: usize| {
        while sent.lock().unwrap().len() < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    // One replica of two dies: the other has every message.
    reached(PUBLISHES / 6).await;
    b.kill9().await;
    // The last replica dies and comes back.
    reached(PUBLISHES / 3).await;
    let bridge_killed = Instant::now();
    a.kill9().await;
    // The publisher goes on while the kill takes effect: a message published up to here may
    // have been heard by the bridge that was dying. Redis counts the dead bridge's subscription
    // (a PUBLISH reports it as a receiver) until it has read the closed socket, so the bridge is
    // gone for the publisher once NUMSUB no longer counts it (CI saw P301 counted after kill9).
    let deadline = Instant::now() + Duration::from_secs(30);
    while numsub(&redis, "updates").await > 0 {
        assert!(
            Instant::now() < deadline,
            "Redis still counts the killed bridges"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let bridge_gone = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.restart_same_port().await.unwrap();
    // Redis dies and comes back; the bridge resubscribes.
    reached(2 * PUBLISHES / 3).await;
    let redis_killed = Instant::now();
    redis.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.resume().await.unwrap();
    let redis_resumed = Instant::now();
    publisher.await.unwrap();
    let seen = events.await.unwrap();
    b.kill9().await;

    let sent = sent.lock().unwrap().clone();
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "ids not increasing"
    );
    let ids: Vec<usize> = seen
        .iter()
        .filter_map(|(_, id)| id.strip_prefix('P')?.parse().ok())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "doubled or out of order: {ids:?}"
    );
    let present: BTreeSet<usize> = ids.iter().copied().collect();
    // What was lost: published to no one, or received by a bridge killed before it published.
    let unheard: Vec<usize> = (0..PUBLISHES)
        .filter(|&i| sent[i].receivers == Some(0))
        .collect();
    let in_flight: Vec<usize> = (0..PUBLISHES)
        .filter(|&i| sent[i].receivers > Some(0) && !present.contains(&i))
        .collect();
    assert!(unheard.iter().all(|i| !present.contains(i)));
    for &i in &in_flight {
        assert!(
            sent[i].at <= bridge_gone,
            "P{i} was heard by a bridge that was not killed afterwards, and is lost"
        );
    }
    assert!(
        (0..PUBLISHES / 3).all(|i| sent[i].receivers >= Some(1)),
        "a message found no bridge while one of two replicas was alive"
    );
    let window = |from: Instant| -> (usize, Duration) {
        let lost: Vec<&Sent> = unheard
            .iter()
            .map(|&i| &sent[i])
            .filter(|s| s.at >= from)
            .filter(|s| from != bridge_killed || s.at < redis_killed)
            .collect();
        let span = lost.last().map_or(Duration::ZERO, |s| s.at - from);
        (lost.len(), span)
    };
    let (bridge_lost, bridge_window) = window(bridge_killed);
    let (redis_lost, _) = window(redis_killed);
    let redis_window = unheard
        .iter()
        .map(|&i| sent[i].at)
        .filter(|&at| at >= redis_resumed)
        .max()
        .map_or(Duration::ZERO, |at| at - redis_resumed);
    assert!(
        bridge_lost > 0,
        "the bridge restart lost nothing: was the test too slow?"
    );
    eprintln!(
        "bridge pub/sub, one message every 5 ms: one replica of two killed: 0 lost; the last \
         replica killed and restarted: {bridge_lost} published to no bridge over {bridge_window:?} \
         and {} received but not yet in Herald; redis killed for 1 s and restarted: \
         {redis_lost} published before the bridge resubscribed, the last {redis_window:?} after \
         redis was back; \
         {} of {PUBLISHES} in Herald, none twice",
        in_flight.len(),
        present.len()
    );
}
