//! What only the embedded store promises: durability across reopen and group commit.

use std::sync::Arc;

use herald_core::{EventType, NewEvent, Topic, TopicFilter, event::parse_data};
use herald_store::{EmbeddedStore, History, Idempotency, ReadQuery, Store, StoreOptions};

fn new_event(n: u64) -> NewEvent {
    NewEvent {
        topic: Topic::new("t").unwrap(),
        event_type: EventType::new("kind").unwrap(),
        data: parse_data(format!("[{n}]")).unwrap(),
    }
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), StoreOptions::default()).unwrap();
    let key = Some(Idempotency {
        key: "k".into(),
        fingerprint: 1,
    });
    store.append(vec![new_event(1)], key.clone()).await.unwrap();
    store.append(vec![new_event(2)], None).await.unwrap();
    let epoch = store.bounds().await.unwrap().epoch;
    store.close().await.unwrap();
    drop(store);

    let store = EmbeddedStore::open(dir.path(), StoreOptions::default()).unwrap();
    let bounds = store.bounds().await.unwrap();
    assert_eq!((bounds.epoch, bounds.head), (epoch, 2));
    let again = store.append(vec![new_event(1)], key).await.unwrap();
    assert!(again.duplicate && again.seqs == vec![1]);
    let page = store
        .read(ReadQuery {
            filter: TopicFilter::parse(["t"]).unwrap(),
            after: 0,
            limit: 10,
        })
        .await
        .unwrap();
    let data: Vec<&str> = page.events.iter().map(|e| e.data.get()).collect();
    assert_eq!(data, ["[1]", "[2]"]);
    assert_eq!(page.events[1].event_type.as_str(), "kind");
    assert_eq!(
        store.append(vec![new_event(3)], None).await.unwrap().seqs,
        vec![3]
    );
}

#[tokio::test]
async fn a_new_data_dir_gets_a_new_epoch() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ea = EmbeddedStore::open(a.path(), StoreOptions::default()).unwrap();
    let eb = EmbeddedStore::open(b.path(), StoreOptions::default()).unwrap();
    assert_ne!(
        ea.bounds().await.unwrap().epoch,
        eb.bounds().await.unwrap().epoch
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path(), StoreOptions::default()).unwrap());
    let before = store.commits();
    let tasks: Vec<_> = (0..400)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.append(vec![new_event(n)], None).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap().unwrap().seqs);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    let commits = store.commits() - before;
    println!("400 concurrent appends took {commits} commits");
    assert!(
        commits < 400,
        "group commit: {commits} commits for 400 appends"
    );
}
