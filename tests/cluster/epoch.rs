//! NATS loses its disk: the stream is gone while MongoDB keeps the history. The running processes
//! (or the next one to start) recreate it in the same epoch, continuing MongoDB's sequence, so old
//! ids stay valid and no id is ever reused.

use std::time::Duration;

use herald_tests::{epoch_of, seq_of};
use serde_json::json;

use crate::common::{Cluster, publish_until_acked};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stream_is_recreated_in_the_same_epoch_after_mongodbs_history() {
    let mut cluster = Cluster::start(1, 1, &[]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let api = cluster.ingests[0].api();
        let (id, _) = publish_until_acked(&api, "t", &format!("before{i}"), json!(i)).await;
        ids.push(id);
    }

    cluster.nats.restart_empty().await.unwrap();
    // An ingest starting now finds no stream and recreates it from MongoDB.
    cluster.ingests[0].restart_same_port().await.unwrap();
    let api = cluster.ingests[0].api();
    let (after, _) = publish_until_acked(&api, "t", "after", json!("after")).await;
    assert_eq!(epoch_of(&after), epoch_of(&ids[0]), "the epoch changed");
    assert_eq!(
        seq_of(&after),
        seq_of(&ids[4]) + 1,
        "the sequence did not continue"
    );

    // The running gateway follows (its live feed re-opens), and an old id resumes across the
    // gap in JetStream: MongoDB for what the lost stream had, JetStream after.
    let gateway = cluster.gateways[0].api();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let events = loop {
        let attempt = async {
            let mut s = gateway.stream("/v1/stream?topic=t", Some(&ids[1])).await?;
            let verdict = s.next().await?.ok_or_else(|| anyhow::anyhow!("ended"))?;
            anyhow::ensure!(verdict.data == r#"{"recovered":true}"#, "{}", verdict.data);
            Ok(s.collect(4).await?.0)
        };
        match attempt.await {
            Ok(events) => break events,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "no resume: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let got: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(got, [&ids[2], &ids[3], &ids[4], &after]);
}

/// NATS loses its disk while every Herald process runs: without a restart, publishes are
/// acknowledged again within seconds (the stream made again in the same epoch, after the ids
/// handed out), a subscriber that stayed connected gets the new events, and an old id resumes.
/// (Before, the ingest answered 503 and streams were refused until a process restarted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_processes_recreate_the_stream_nats_lost() {
    let mut cluster = Cluster::start(2, 2, &[]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let api = cluster.ingests[i % 2].api();
        let (id, _) = publish_until_acked(&api, "t", &format!("before{i}"), json!(i)).await;
        ids.push(id);
    }
    let mut live = cluster.gateways[1]
        .api()
        .stream("/v1/stream?topic=t", None)
        .await
        .unwrap();

    cluster.nats.restart_empty().await.unwrap();
    let lost = tokio::time::Instant::now();
    // Each ingest publishes again once the stream is back; a single and a batch.
    let mut after = Vec::new();
    for (i, ingest) in cluster.ingests.iter().enumerate() {
        let api = ingest.api();
        loop {
            let r = api.publish("t", json!({"after": i})).await.unwrap();
            if r.status == 201 {
                after.push(r.id());
                break;
            }
            assert!(
                lost.elapsed() < Duration::from_secs(15),
                "ingest {i} still answers {} {} after NATS came back without its stream",
                r.status,
                r.body
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let r = cluster.ingests[0]
        .api()
        .publish_batch(json!([{"topic": "t", "data": "b1"}, {"topic": "t", "data": "b2"}]))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    for e in r.body["events"].as_array().unwrap() {
        after.push(e["id"].as_str().unwrap().to_owned());
    }
    println!(
        "publishes acknowledged again {:?} after NATS lost its stream",
        lost.elapsed()
    );
    let last_before = seq_of(&ids[4]);
    for (k, id) in after.iter().enumerate() {
        assert_eq!(epoch_of(id), epoch_of(&ids[0]), "the epoch changed");
        assert_eq!(
            seq_of(id),
            last_before + 1 + k as u64,
            "{after:?} after {ids:?}"
        );
    }

    let (got, _) = live.collect(after.len()).await.unwrap();
    let got: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(got, after, "the connected subscriber's events");

    for gateway in &cluster.gateways {
        let mut s = gateway
            .api()
            .stream("/v1/stream?topic=t", Some(&ids[2]))
            .await
            .unwrap();
        let verdict = s.next().await.unwrap().unwrap();
        assert_eq!(verdict.data, r#"{"recovered":true}"#);
        let (events, _) = s.collect(2 + after.len()).await.unwrap();
        let got: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let want: Vec<&str> = ids[3..].iter().chain(&after).map(String::as_str).collect();
        assert_eq!(got, want, "a resume across the lost stream");
    }
}

/// G2: a stream recreated after MongoDB's retention removed every event never hands out an id
/// again in the same epoch, and a subscriber that stayed connected gets the new events. (The
/// stream restarted at MongoDB's newest event + 1: with none left, at 1 — the old ids again, which
/// the running gateway dropped as already delivered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stream_never_reuses_ids_that_retention_removed() {
    let retention = &["--retention-age", "2s", "--trim-interval", "200ms"];
    let mut cluster = Cluster::start(1, 1, retention).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let api = cluster.ingests[0].api();
        let (id, _) = publish_until_acked(&api, "t", &format!("before{i}"), json!(i)).await;
        ids.push(id);
    }
    let gateway = cluster.gateways[0].api();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, history) = gateway.get_json("/v1/topics/t/events").await.unwrap();
        if history["events"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut live = gateway.stream("/v1/stream?topic=t", None).await.unwrap();

    cluster.nats.restart_empty().await.unwrap();
    cluster.ingests[0].restart_same_port().await.unwrap();
    let api = cluster.ingests[0].api();
    let (after, _) = publish_until_acked(&api, "t", "after", json!("after")).await;
    assert!(
        epoch_of(&after) != epoch_of(&ids[4]) || seq_of(&after) > seq_of(&ids[4]),
        "{after} reuses an id handed out before ({ids:?})"
    );
    let got = live
        .next_within(Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.id, after,
        "the connected subscriber missed the new event"
    );
}

/// G2: an id that only JetStream held (its ingest's MongoDB write failed, no archiver wrote it)
/// is not handed out again by a stream made again after NATS lost its disk, though its ingest is
/// gone and the gateway started after it, never delivering it: the gateway read the stream's
/// state when it started, so it knows every id up to the last. (It knew only what it delivered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_only_jetstream_held_is_not_reused_after_its_ingest_is_gone() {
    let mut cluster = Cluster::start(0, 0, &[]).await;
    let deployment = &cluster.deployment;
    // No archiver anywhere: what JetStream alone holds stays there.
    let healthy = deployment.ingest(&["--archiver", "false"], &[]);
    let healthy = healthy.await.unwrap();
    let failing = deployment.ingest(
        &["--archiver", "false"],
        &[("HERALD_FAULT", "mongodb-fails-after-jetstream-ack:1")],
    );
    let mut failing = failing.await.unwrap();
    let (first, _) = publish_until_acked(&healthy.api(), "t", "first", json!(1)).await;
    let orphan = failing.api().publish("t", json!("orphan")).await.unwrap();
    assert_eq!(orphan.status.as_u16(), 503, "{}", orphan.body);
    failing.kill9().await;
    // A gateway that starts now, after the orphan: it never delivers it.
    let gateway = deployment.gateway(&[]).await.unwrap();

    cluster.nats.restart_empty().await.unwrap();
    // The gateway's live feed notices first and makes the stream again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (after, _) = publish_until_acked(&healthy.api(), "t", "after", json!("after")).await;
    assert_eq!(epoch_of(&after), epoch_of(&first));
    assert!(
        seq_of(&after) > seq_of(&first) + 1,
        "{after} reuses the id of the event only JetStream held (after {first})"
    );
    drop(gateway);
}
