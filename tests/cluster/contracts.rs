//! The contract suites of `herald-store` (History) and `herald-bus` (a feed), run against the
//! distributed backends on real servers: the two-tier history (JetStream, then MongoDB once
//! JetStream no longer holds the events), the Redis bus mode's MongoDB history, the JetStream
//! feed and the Redis bus feed. The in-process backends run the same suites in their crates.

use std::{sync::Arc, time::Duration};

use futures_util::TryStreamExt;
use herald_bus::contract::check_feed;
use herald_cluster::{
    ClusterConfig, ClusterLog, Mongo, Tiered,
    redis_bus::{self, BusKind, BusOptions, MongoHistory, RedisBus, RedisLog, RedisOptions},
};
use herald_config::Secret;
use herald_core::{Event, NewEvent, event::now_ms};
use herald_store::{
    EventLog, History,
    contract::{check_history, sample},
};
use herald_telemetry::Metrics;
use herald_tests::cluster;

fn config(nats: Option<&cluster::Nats>, mongo: &cluster::Mongo) -> ClusterConfig {
    let nats_url = nats.map(cluster::Nats::url).unwrap_or_default();
    cluster::cluster_config(&nats_url, &mongo.uri, &mongo.database)
}

/// Appends the sample through `log` in singles and small batches.
async fn append_sample(log: &dyn EventLog) -> Vec<Arc<Event>> {
    let sample = sample();
    let mut written = Vec::new();
    for batch in sample.chunks(4).flat_map(|c| c.chunks(c.len().min(3))) {
        written.extend(log.append(batch.to_vec(), None).await.unwrap().events);
    }
    written
}

/// The two-tier history over a test's NATS and MongoDB, holding the sample.
struct TwoTiers {
    tiered: Tiered,
    /// The deployment's stream, for purging it and listing its consumers.
    stream: async_nats::jetstream::stream::Stream,
    written: Vec<Arc<Event>>,
    metrics: Arc<Metrics>,
    _servers: (cluster::Nats, cluster::Mongo),
}

impl TwoTiers {
    async fn start() -> Self {
        let (nats, mongo) = (
            cluster::Nats::start().await.unwrap(),
            cluster::Mongo::start().await.unwrap(),
        );
        let config = config(Some(&nats), &mongo);
        let metrics = Arc::new(Metrics::new());
        let (js, db) = herald_cluster::connect(&config, "contract", Arc::clone(&metrics))
            .await
            .unwrap();
        let written = append_sample(&ClusterLog::new(js.clone(), db.clone())).await;
        let stream = async_nats::jetstream::new(js.client().clone())
            .get_stream(&config.stream)
            .await
            .unwrap();
        Self {
            tiered: Tiered::new(js, db, Arc::clone(&metrics)),
            stream,
            written,
            metrics,
            _servers: (nats, mongo),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_tier_history_keeps_the_history_contract_on_each_tier() {
    let TwoTiers {
        tiered,
        stream,
        written,
        metrics,
        _servers,
    } = TwoTiers::start().await;
    check_history("tiered, from JetStream", &tiered, &written).await;
    // JetStream keeps the second half only: a read that starts in MongoDB goes on in JetStream.
    let middle = written[written.len() / 2 + 3].seq;
    stream.purge().sequence(middle).await.unwrap();
    check_history("tiered, from both", &tiered, &written).await;
    // JetStream purged: every read goes to MongoDB.
    stream.purge().await.unwrap();
    check_history("tiered, from MongoDB", &tiered, &written).await;
    let read_from = |tier: &str| metrics.render().contains(&format!("tier=\"{tier}\""));
    assert!(
        read_from("jetstream") && read_from("mongodb"),
        "both tiers were read"
    );
}

/// A replay is one consumer on the server for all its pages, not one per page, and the consumer
/// is gone once the replay is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_holds_one_jetstream_consumer_for_all_its_pages() {
    let TwoTiers {
        tiered,
        stream,
        written,
        _servers,
        ..
    } = TwoTiers::start().await;
    let consumers = || async {
        let mut names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
        names.sort();
        names
    };
    let all = herald_core::TopicFilter::parse([">"]).unwrap();
    let mut cursor = tiered.cursor(all, 0);
    let (mut read, mut held) = (Vec::new(), None);
    loop {
        let page = cursor.next(7, usize::MAX).await.unwrap();
        read.extend(page.events.iter().map(|e| e.seq));
        if page.end {
            break;
        }
        let names = consumers().await;
        assert_eq!(
            names.len(),
            1,
            "one consumer while the replay reads: {names:?}"
        );
        assert!(
            held.get_or_insert_with(|| names.clone()) == &names,
            "the same consumer for every page: {names:?}, then {held:?}"
        );
    }
    let seqs: Vec<u64> = written.iter().map(|e| e.seq).collect();
    assert_eq!(read, seqs);
    drop(cursor);
    for _ in 0..50 {
        if consumers().await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the replay's consumer outlived it: {:?}", consumers().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jetstream_feed_keeps_the_feed_contract() {
    let (nats, mongo) = (
        cluster::Nats::start().await.unwrap(),
        cluster::Mongo::start().await.unwrap(),
    );
    let (js, db) = herald_cluster::connect(
        &config(Some(&nats), &mongo),
        "contract",
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap();
    let log = ClusterLog::new(js.clone(), db);
    let publish = |batch: Vec<NewEvent>| {
        let log = &log;
        async move { log.append(batch, None).await.unwrap().events }
    };
    check_feed("jetstream", &js, publish).await;
}

/// The Redis bus mode over a test's Redis and MongoDB: the database prepared, the options, the
/// publish side.
struct RedisSetup {
    db: Mongo,
    epoch: herald_core::Epoch,
    metrics: Arc<Metrics>,
    options: BusOptions,
    log: RedisLog,
}

impl RedisSetup {
    async fn new(redis: &cluster::Redis, mongo: &cluster::Mongo) -> Self {
        let db = Mongo::connect(&config(None, mongo)).await.unwrap();
        let epoch = redis_bus::prepare(&db).await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let options = BusOptions {
            bus: BusKind::Redis,
            redis: RedisOptions {
                redis_url: Secret::new(redis.url()),
                redis_ca_file: None,
                redis_tls_cert_file: None,
                redis_tls_key_file: None,
            },
            redis_channel: redis_bus::DEFAULT_CHANNEL.into(),
        };
        let log = RedisLog::connect(&options, db.clone(), epoch, Arc::clone(&metrics))
            .await
            .unwrap();
        Self {
            db,
            epoch,
            metrics,
            options,
            log,
        }
    }

    /// A gateway's feed on this setup, polling MongoDB every `poll`.
    fn bus(&self, poll: Duration) -> RedisBus {
        RedisBus::new(
            &self.options,
            self.db.clone(),
            self.epoch,
            poll,
            Arc::clone(&self.metrics),
        )
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_bus_keeps_both_contracts() {
    let (redis, mongo) = (
        cluster::Redis::start().await.unwrap(),
        cluster::Mongo::start().await.unwrap(),
    );
    let setup = RedisSetup::new(&redis, &mongo).await;
    let bus = setup.bus(Duration::from_secs(1));
    let RedisSetup { metrics, log, .. } = setup;
    let publish = |batch: Vec<NewEvent>| {
        let log = &log;
        async move { log.append(batch, None).await.unwrap().events }
    };
    check_feed("redis bus", &bus, publish).await;

    // A fresh database for the history: the sample alone, sequenced by MongoDB.
    let mut fresh = config(None, &mongo);
    fresh.mongodb_database = format!("{}_history", mongo.database);
    let db = Mongo::connect(&fresh).await.unwrap();
    let epoch = redis_bus::prepare(&db).await.unwrap();
    let mut written = Vec::new();
    for batch in sample().chunks(3) {
        match db
            .append_sequenced(batch, now_ms(), None, None)
            .await
            .unwrap()
        {
            herald_cluster::mongo::Sequenced::Stored(events) => written.extend(events),
            other => panic!("not stored: {other:?}"),
        }
    }
    check_history(
        "MongoDB (redis bus)",
        &MongoHistory::new(db, epoch, metrics),
        &written,
    )
    .await;
}

/// G7 in the Redis bus mode: a feed the hub does not take from (a busy hub) lets go of the
/// channel once its queue is full — the Redis client would otherwise buffer every message
/// without bound — then catches up from MongoDB and subscribes again: every event once, in
/// order. (Before, the feed waited on the hub with the channel subscribed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_feed_that_falls_behind_lets_go_of_the_channel_and_catches_up() {
    use futures_util::StreamExt as _;
    use herald_bus::Bus as _;

    let (redis, mongo) = (
        cluster::Redis::start().await.unwrap(),
        cluster::Mongo::start().await.unwrap(),
    );
    let setup = RedisSetup::new(&redis, &mongo).await;
    let bus = setup.bus(Duration::from_millis(200));
    let log = setup.log;
    let mut feed = bus.subscribe().await.unwrap();
    let subscribers = || async {
        let mut conn = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(redis_bus::DEFAULT_CHANNEL)
            .query_async(&mut conn)
            .await
            .unwrap();
        n
    };
    assert_eq!(subscribers().await, 1);

    // More than the feed's queue, while nothing takes from it.
    let total = 6000;
    let mut published = Vec::new();
    for chunk in 0..total / 100 {
        let batch: Vec<NewEvent> = (0..100)
            .map(|i| {
                NewEvent::checked(
                    "t",
                    None,
                    serde_json::value::to_raw_value(&(chunk * 100 + i)).unwrap(),
                )
                .unwrap()
            })
            .collect();
        let appended = log.append(batch, None).await.unwrap();
        published.extend(appended.seqs);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while subscribers().await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed kept the channel subscribed with its queue full"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The hub takes again: everything, once, in order (a redelivered event is passed over, as
    // the hub does), and the feed is back on the channel.
    let mut got = Vec::new();
    while got.len() < total {
        let event = tokio::time::timeout(Duration::from_secs(20), feed.next())
            .await
            .expect("the feed caught up")
            .expect("the feed goes on");
        if got.last().is_none_or(|&last| event.seq > last) {
            got.push(event.seq);
        }
    }
    assert_eq!(got, published);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while subscribers().await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed did not subscribe again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = log
        .append(
            vec![
                NewEvent::checked("t", None, serde_json::value::to_raw_value(&"live").unwrap())
                    .unwrap(),
            ],
            None,
        )
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.seq, after.seqs[0], "live again");
}
