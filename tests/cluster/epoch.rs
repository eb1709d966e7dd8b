//! NATS loses its disk: the stream is gone while MongoDB keeps the history. The next process to
//! start recreates it in the same epoch, continuing MongoDB's sequence, so old ids stay valid and
//! no id is ever reused.

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
