//! The contract suites of `herald-store` (History) and `herald-bus` (a feed), run against the
//! distributed backends on real servers: the two-tier history (JetStream, then MongoDB once
//! JetStream no longer holds the events), the Redis bus mode's MongoDB history, the JetStream
//! feed and the Redis bus feed. The in-process backends run the same suites in their crates.

use std::{sync::Arc, time::Duration};

use herald_bus::contract::check_feed;
use herald_cluster::{
    ClusterConfig, ClusterLog, Mongo, Tiered,
    redis_bus::{self, BusKind, BusOptions, MongoHistory, RedisBus, RedisLog, RedisOptions},
};
use herald_config::Secret;
use herald_core::{Event, NewEvent, event::now_ms};
use herald_store::{
    EventLog,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_tier_history_keeps_the_history_contract_on_each_tier() {
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
    let tiered = Tiered::new(js.clone(), db, Arc::clone(&metrics));
    check_history("tiered, from JetStream", &tiered, &written).await;
    // JetStream purged: every read goes to MongoDB.
    async_nats::jetstream::new(js.client().clone())
        .get_stream(&config.stream)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    check_history("tiered, from MongoDB", &tiered, &written).await;
    let read_from = |tier: &str| metrics.render().contains(&format!("tier=\"{tier}\""));
    assert!(
        read_from("jetstream") && read_from("mongodb"),
        "both tiers were read"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_bus_keeps_both_contracts() {
    let (redis, mongo) = (
        cluster::Redis::start().await.unwrap(),
        cluster::Mongo::start().await.unwrap(),
    );
    let db = Mongo::connect(&config(None, &mongo)).await.unwrap();
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
    let bus = RedisBus::new(
        &options,
        db.clone(),
        epoch,
        Duration::from_secs(1),
        Arc::clone(&metrics),
    )
    .unwrap();
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
