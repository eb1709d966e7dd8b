//! An ingest killed between the JetStream ack and the MongoDB write: the archiver writes the
//! event to MongoDB, and a resume from before it, beyond JetStream's retention, gets it.

use std::time::Duration;

use herald_tests::{Published, cluster::Service, epoch_of, seq_of};
use serde_json::json;

use crate::common::{Cluster, publish_until_acked};

/// JetStream keeps only this much, so a few hundred events push the first ones out.
const SHARED: &[&str] = &["--stream-max-bytes", "16KiB"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archiver_repairs_an_ingest_killed_between_its_two_writes() {
    // A healthy ingest (with the archiver) and a gateway.
    let cluster = Cluster::start_windowless(1, 1, SHARED).await;
    let healthy = cluster.ingests[0].api();
    let gateway = cluster.gateways[0].api();
    // A faulty ingest: it stops after the JetStream ack, before MongoDB. No archiver of its own.
    let mut faulty = cluster
        .deployment
        .ingest(
            &["--archiver", "false"],
            &[("HERALD_FAULT", "pause-after-jetstream-ack")],
        )
        .await
        .unwrap();

    let (before, _) = publish_until_acked(&healthy, "orders", "before", json!("before")).await;
    let lost = tokio::spawn({
        let api = faulty.api();
        async move { api.publish("orders", json!("in-between")).await }
    });
    let notice = faulty
        .wait_stderr("fault: paused after the JetStream ack")
        .await
        .unwrap();
    let orphan_seq = seq_of(&before) + 1;
    assert!(notice.contains(&format!("[{orphan_seq}]")), "{notice}");
    faulty.kill9().await;
    let answer = lost.await.unwrap();
    assert!(
        answer.is_err() || !answer.unwrap().status.is_success(),
        "the killed publish was acknowledged"
    );

    // The archiver (in the healthy ingest) writes the orphan to MongoDB by itself.
    let mongo = herald_cluster::Mongo::connect(&mongo_config(&cluster))
        .await
        .unwrap();
    let orphan_filter = herald_core::TopicFilter::parse(["orders"]).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = mongo
            .read(&orphan_filter, orphan_seq - 1, orphan_seq, 1)
            .await
            .unwrap();
        if let Some(event) = found.first() {
            assert_eq!(event.data.get(), r#""in-between""#);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the archiver never wrote the orphan to MongoDB"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Push the orphan out of JetStream's retention.
    let filler = "x".repeat(200);
    let mut last = before.clone();
    for i in 0..200 {
        let (id, _) =
            publish_until_acked(&healthy, "orders", &format!("fill{i}"), json!(filler)).await;
        last = id;
    }
    let (status, first) = gateway
        .get_json("/v1/topics/orders/events?limit=1")
        .await
        .unwrap();
    assert!(status.is_success());
    let tiers_before = gateway
        .metric("herald_replay_reads_total{tier=\"mongodb\"}")
        .await
        .unwrap();

    // Resume from before the orphan: JetStream no longer has it, MongoDB does (the archiver).
    let mut stream = gateway
        .stream("/v1/stream?topic=orders", Some(&before))
        .await
        .unwrap();
    let verdict = stream.next().await.unwrap().unwrap();
    assert_eq!(verdict.event, "herald.resume");
    assert_eq!(
        verdict.data, r#"{"recovered":true}"#,
        "first retained: {first}"
    );
    let (events, _) = stream.collect(201).await.unwrap();
    assert_eq!(seq_of(&events[0].id), orphan_seq);
    assert_eq!(events[0].data, r#""in-between""#);
    assert_eq!(epoch_of(&events[0].id), epoch_of(&before));
    assert_eq!(events.last().unwrap().id, last);
    let seqs: Vec<u64> = events.iter().map(|e| seq_of(&e.id)).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap or a duplicate in the replay"
    );
    let tiers_after = gateway
        .metric("herald_replay_reads_total{tier=\"mongodb\"}")
        .await
        .unwrap();
    assert!(
        tiers_after > tiers_before,
        "the replay did not read MongoDB"
    );

    // The archiver counted it (on the healthy ingest).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let archived = healthy
        .metric("herald_events_archived_total")
        .await
        .unwrap();
    assert!(archived >= 1.0);
}

/// G1 for the MongoDB tier: when the archiver's insert of an orphan fails, the orphan comes back
/// and is written — the acknowledgement of a later chunk must not cover it. (With
/// `AckPolicy::All`, acknowledging the next chunk's last message acknowledged the failed one's
/// too, and the orphan never reached MongoDB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_whose_archiving_fails_is_archived_on_the_retry() {
    let cluster = Cluster::start(0, 0, &[]).await;
    let deployment = &cluster.deployment;
    // An orphan: in JetStream only (its ingest killed between the two writes).
    let mut faulty = deployment
        .ingest(
            &["--archiver", "false"],
            &[("HERALD_FAULT", "pause-after-jetstream-ack")],
        )
        .await
        .unwrap();
    let lost = tokio::spawn({
        let api = faulty.api();
        async move { api.publish("orders", json!("orphan")).await }
    });
    faulty
        .wait_stderr("fault: paused after the JetStream ack")
        .await
        .unwrap();
    faulty.kill9().await;
    let _ = lost.await;
    // The archiving ingest's first insert of the orphan fails; then more events follow.
    let fault = "archiver-fails-once:1";
    let mut archiving = deployment
        .ingest(&[], &[("HERALD_FAULT", fault)])
        .await
        .unwrap();
    archiving
        .wait_stderr("fault: the archiver's insert of [1] fails")
        .await
        .unwrap();
    let api = archiving.api();
    for i in 0..20 {
        publish_until_acked(&api, "orders", &format!("after{i}"), json!(i)).await;
    }
    let mongo = herald_cluster::Mongo::connect(&mongo_config(&cluster))
        .await
        .unwrap();
    let orders = herald_core::TopicFilter::parse(["orders"]).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let found = mongo.read(&orders, 0, 1, 1).await.unwrap();
        if let Some(event) = found.first() {
            assert_eq!(event.data.get(), r#""orphan""#);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the orphan never reached MongoDB: its failed insert was acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A deployment upgraded from a Herald whose archiver acknowledged with `AckPolicy::All` gets
/// its durable consumer made again with explicit acks (the old one's acks cannot be trusted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archiver_consumer_with_cumulative_acks_is_made_again() {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    let cluster = Cluster::start(0, 0, &[]).await;
    // An ingest without an archiver makes the stream.
    let _first = cluster
        .deployment
        .ingest(&["--archiver", "false"], &[])
        .await
        .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(cluster.nats.url()).await.unwrap());
    let stream = js.get_stream("HERALD").await.unwrap();
    let old = pull::Config {
        durable_name: Some(herald_cluster::archiver::CONSUMER.to_owned()),
        ack_policy: AckPolicy::All,
        ..Default::default()
    };
    stream.create_consumer(old).await.unwrap();
    let _archiving = cluster.deployment.ingest(&[], &[]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Between its deletion and its creation the consumer is briefly missing.
        let policy = match stream
            .get_consumer::<pull::Config>(herald_cluster::archiver::CONSUMER)
            .await
        {
            Ok(mut consumer) => consumer.info().await.ok().map(|i| i.config.ack_policy),
            Err(_) => None,
        };
        if policy == Some(AckPolicy::Explicit) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still cumulative acks"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// G5 past JetStream's duplicate window: a keyed publish, and a keyed batch, whose MongoDB write
/// failed after the JetStream ack (answered 503) make no second event when retried after the
/// window: the archiver recorded their keys. (The ingest records a key only after its own
/// MongoDB write; a batch has no `Nats-Msg-Id` at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_mongodb_write_failed_still_answers_after_the_duplicate_window() {
    let cluster = Cluster::start(0, 0, &["--duplicate-window", "1s"]).await;
    let fault = [("HERALD_FAULT", "mongodb-fails-after-jetstream-ack")];
    // The fault fires once per process: one ingest for the single publish, one for the batch.
    let mut single = cluster.deployment.ingest(&[], &fault).await.unwrap();
    let mut batch = cluster.deployment.ingest(&[], &fault).await.unwrap();
    let body = json!({"data": "once"}).to_string();
    let first = single
        .api()
        .publish_raw("orders", body.clone(), Some("k-single"))
        .await
        .unwrap();
    assert_eq!(first.status.as_u16(), 503, "{}", first.body);
    single.wait_stderr("fault: MongoDB fails").await.unwrap();
    let (status, _, answer) = keyed_batch(batch.api()).await;
    assert_eq!(status, 503, "{answer}");
    batch.wait_stderr("fault: MongoDB fails").await.unwrap();
    // Past the duplicate window, and time for an archiver to write the events.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let again = single
        .api()
        .publish_raw("orders", body, Some("k-single"))
        .await
        .unwrap();
    assert_eq!(again.status.as_u16(), 201, "{}", again.body);
    assert!(again.replayed, "a second event: {}", again.body);
    assert_eq!(seq_of(&again.id()), 1, "the first publish's id");
    assert_first_batch(keyed_batch(batch.api()).await, [2, 3]);
}

/// G5 while an archiver holds a key's first publish: a key whose first publish reached
/// JetStream but not MongoDB (answered 503) is retried past the duplicate window while the
/// archiver that was handed its message holds it (stopped mid-chunk, as a killed process does
/// until the ack wait runs out). MongoDB has no record of the key yet, and JetStream no longer
/// remembers it (a batch never had a message id): the retry must wait for the archiver (503
/// past the backend timeout), not make a second event. Once the message comes back to a
/// working archiver, the retry answers the first ids. (The batch goes first: while no archiver
/// has read the stream, a new batch key waits for one unless the stream is empty.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_retried_while_an_archiver_holds_its_first_publish_makes_no_second_event() {
    let (cluster, failing, retrying) = without_archivers().await;
    let (status, _, body) = keyed_batch(failing.api()).await;
    assert_eq!(status, 503, "{body}");
    let single = json!({"data": "once"}).to_string();
    let first = failing
        .api()
        .publish_raw("orders", single.clone(), Some("k-single"))
        .await
        .unwrap();
    assert_eq!(first.status.as_u16(), 503, "{}", first.body);
    // The only archiver, started now: it is handed the three messages and holds them.
    let mut holding = cluster
        .deployment
        .ingest(&[], &[("HERALD_FAULT", "archiver-stalls")])
        .await
        .unwrap();
    holding
        .wait_stderr("fault: the archiver stalls")
        .await
        .unwrap();
    // Past JetStream's duplicate window (it forgets a message id up to a window late).
    tokio::time::sleep(Duration::from_secs(3)).await;

    let again = retrying
        .api()
        .publish_raw("orders", single.clone(), Some("k-single"))
        .await
        .unwrap();
    assert_eq!(
        again.status.as_u16(),
        503,
        "the key was published again while the archiver held its first event: {}",
        again.body
    );
    let (status, _, body) = keyed_batch(retrying.api()).await;
    assert_eq!(
        status, 503,
        "the batch was published again while the archiver held it: {body}"
    );

    // The holding archiver's process dies; after the ack wait its messages go to a working one.
    holding.kill9().await;
    let _archiver = cluster.deployment.ingest(&[], &[]).await.unwrap();
    let answered = retry_single(retrying.api(), &single, Duration::from_secs(40)).await;
    assert!(answered.replayed, "a second event: {}", answered.body);
    assert_eq!(seq_of(&answered.id()), 3, "the first publish's id");
    assert_first_batch(keyed_batch(retrying.api()).await, [1, 2]);
}

/// G5 while no archiver has read the stream (they are all starting, or NATS lost the stream and
/// they have not noticed the new one yet; found by the checker, seed 1631959444): a key whose
/// first publish is in JetStream only must not be taken as new once JetStream's window is over.
/// The retry answers 503 until an archiver has written the first event and its key, then the
/// first id. The retrying ingest first publishes a new key of its own while the stream is empty:
/// it remembers that check (every unwritten message young) for half the duplicate window only,
/// not until the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_retried_before_any_archiver_read_the_stream_makes_no_second_event() {
    let (cluster, failing, retrying) = without_archivers().await;
    let warm = retrying
        .api()
        .publish_raw(
            "orders",
            json!({"data": "warm"}).to_string(),
            Some("k-warm"),
        )
        .await
        .unwrap();
    assert_eq!(warm.status.as_u16(), 201, "{}", warm.body);
    let single = json!({"data": "once"}).to_string();
    let first = failing
        .api()
        .publish_raw("orders", single.clone(), Some("k-single"))
        .await
        .unwrap();
    assert_eq!(first.status.as_u16(), 503, "{}", first.body);
    // Past JetStream's duplicate window (it forgets a message id up to a window late).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = retrying
        .api()
        .publish_raw("orders", single.clone(), Some("k-single"))
        .await
        .unwrap();
    assert_eq!(
        again.status.as_u16(),
        503,
        "the key was published again before any archiver read its first event: {}",
        again.body
    );
    // An archiver starts: it reads the stream from the start, the first event and its key.
    let _archiver = cluster.deployment.ingest(&[], &[]).await.unwrap();
    let answered = retry_single(retrying.api(), &single, Duration::from_secs(20)).await;
    assert!(answered.replayed, "a second event: {}", answered.body);
    assert_eq!(seq_of(&answered.id()), 2, "the first publish's id");
}

/// A cluster with a one-second duplicate window and backend timeout, and no archiver anywhere:
/// an ingest whose MongoDB writes fail after the JetStream ack (every publish answers 503), and
/// a healthy one for the retries.
async fn without_archivers() -> (Cluster, Service, Service) {
    let cluster = Cluster::start(
        0,
        0,
        &["--duplicate-window", "1s", "--backend-timeout", "1s"],
    )
    .await;
    let failing = cluster
        .deployment
        .ingest(
            &["--archiver", "false"],
            &[("HERALD_FAULT", "mongodb-fails-after-jetstream-ack:1")],
        )
        .await
        .unwrap();
    let retrying = cluster
        .deployment
        .ingest(&["--archiver", "false"], &[])
        .await
        .unwrap();
    (cluster, failing, retrying)
}

/// Retries the single publish `body` with the Idempotency-Key `k-single` while it answers 503,
/// for at most `wait`: its first 201.
async fn retry_single(api: herald_tests::Api, body: &str, wait: Duration) -> Published {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let again = api
            .publish_raw("orders", body.to_owned(), Some("k-single"))
            .await
            .unwrap();
        match again.status.as_u16() {
            201 => return again,
            503 if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            other => panic!("the retry answered {other}: {}", again.body),
        }
    }
}

/// A batch of two events on `orders` with the Idempotency-Key `k-batch`: the answer's status,
/// whether it replays a first answer, and its body.
async fn keyed_batch(api: herald_tests::Api) -> (u16, bool, serde_json::Value) {
    let events = json!([{"topic": "orders", "data": 1}, {"topic": "orders", "data": 2}]);
    let res = api
        .http
        .post(format!("{}/v1/events", api.base))
        .header("idempotency-key", "k-batch")
        .json(&events)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let replayed = res.headers().contains_key("idempotent-replayed");
    (status, replayed, res.json().await.unwrap())
}

/// The answer is the first `k-batch`'s (ids `first`), replayed.
fn assert_first_batch((status, replayed, body): (u16, bool, serde_json::Value), first: [u64; 2]) {
    assert_eq!(status, 201, "{body}");
    assert!(replayed, "a second batch: {body}");
    let seqs: Vec<u64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| seq_of(e["id"].as_str().unwrap()))
        .collect();
    assert_eq!(seqs, first, "the first batch's ids");
}

fn mongo_config(cluster: &Cluster) -> herald_cluster::ClusterConfig {
    let d = &cluster.deployment;
    herald_tests::cluster::cluster_config(&d.nats_url, &d.mongodb_uri, &d.database)
}
