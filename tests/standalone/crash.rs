//! `kill -9` during a publish burst: every event answered 201 survives and replays.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use herald_tests::{Herald, epoch_of, seq_of};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_kill_9_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let mut herald = Herald::start(dir.path(), &[]).await.unwrap();
    let api = herald.api();
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let publishers: Vec<_> = (0..8)
        .map(|p| {
            let (api, acked) = (api.clone(), Arc::clone(&acked));
            tokio::spawn(async move {
                for n in 0.. {
                    let topic = if n % 2 == 0 { "even" } else { "odd" };
                    match api.publish(topic, json!({"p": p, "n": n})).await {
                        Ok(r) if r.status == 201 => {
                            acked.lock().unwrap().insert(r.id());
                        }
                        // The process died under this request: no 201, no promise.
                        _ => return,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    herald.kill9().await;
    for p in publishers {
        p.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(
        acked.len() > 50,
        "the burst got going: {} acks",
        acked.len()
    );
    println!("{} events acknowledged before kill -9", acked.len());

    herald.restart().await.unwrap();
    let api = herald.api();
    let epoch = epoch_of(&acked[0]).to_owned();
    // Replay everything from the start of this epoch.
    let mut all = api
        .stream(
            "/v1/stream?topic=even&topic=odd",
            Some(&format!("{epoch}-0")),
        )
        .await
        .unwrap();
    let (_, head) = api
        .get_json("/v1/topics/even/events?limit=1")
        .await
        .unwrap();
    let head = seq_of(head["head"].as_str().unwrap());
    let (events, control) = all.collect(head as usize).await.unwrap();
    assert_eq!(control[0].data, r#"{"recovered":true}"#);
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let seqs: Vec<u64> = ids.iter().map(|i| seq_of(i)).collect();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<_>>(),
        "no hole in the sequence"
    );
    let present: BTreeSet<&String> = ids.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");

    // A client resuming from any id it had gets exactly the rest.
    for from in [&acked[0], &acked[acked.len() / 2], acked.last().unwrap()] {
        let mut s = api
            .stream("/v1/stream?topic=even&topic=odd", Some(from))
            .await
            .unwrap();
        let rest = (head - seq_of(from)) as usize;
        let (got, _) = s.collect(rest).await.unwrap();
        let got: Vec<u64> = got.iter().map(|e| seq_of(&e.id)).collect();
        assert_eq!(got, (seq_of(from) + 1..=head).collect::<Vec<_>>());
    }
    // New publishes continue the same sequence.
    let next = api.publish("even", json!("after")).await.unwrap().id();
    assert_eq!((epoch_of(&next), seq_of(&next)), (epoch.as_str(), head + 1));
}
