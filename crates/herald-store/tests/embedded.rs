//! What only the embedded store promises: durability across reopen, group commit, and replay
//! pages bounded by bytes.

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

/// A reader whose snapshot no longer has the oldest events never sees bounds that still include
/// them: a replay reads its page, then the bounds, and trusts them to tell a page that starts
/// late (retention removed its beginning) from a whole one (G4). Trims race reads here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_read_after_a_page_cover_every_trim_the_page_saw() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        max_bytes: Some(4096),
        ..StoreOptions::default()
    };
    let store = Arc::new(EmbeddedStore::open(dir.path(), options).unwrap());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        tokio::spawn(async move {
            let mut checked = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let query = ReadQuery {
                    filter: TopicFilter::parse([">"]).unwrap(),
                    after: 0,
                    limit: 1,
                };
                let page = store.read(query).await.unwrap();
                let bounds = store.bounds().await.unwrap();
                if let Some(first) = page.events.first() {
                    assert!(
                        bounds.earliest >= first.seq,
                        "the page starts at {} but the bounds read after it say {} is kept",
                        first.seq,
                        bounds.earliest
                    );
                    checked += 1;
                }
            }
            checked
        })
    };
    let padding = "x".repeat(500);
    for round in 0..300 {
        let batch = (0..8)
            .map(|i| NewEvent {
                data: parse_data(format!("[{round},{i},\"{padding}\"]")).unwrap(),
                ..new_event(0)
            })
            .collect();
        store.append(batch, None).await.unwrap();
        store.trim().await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let checked = reader.await.unwrap();
    assert!(checked > 100, "only {checked} pages checked");
}

/// A replay's cursor cuts its pages at the byte budget (past a page's first event) as well as at
/// the event count, for exact topics and for patterns, and still reads every event once.
#[tokio::test]
async fn a_cursor_cuts_its_pages_at_the_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), StoreOptions::default()).unwrap();
    let big = |n: u64| NewEvent {
        data: parse_data(format!("\"{n:0>1000}\"")).unwrap(),
        ..new_event(n)
    };
    store
        .append((1..=20).map(big).collect(), None)
        .await
        .unwrap();
    for names in [["t"], ["*"]] {
        let filter = TopicFilter::parse(names).unwrap();
        // A budget of 1 byte: one event per page.
        let mut cursor = store.cursor(filter.clone(), 0);
        let mut sizes = Vec::new();
        loop {
            let page = cursor.next(100, 1).await.unwrap();
            sizes.push(page.events.len());
            if page.end {
                break;
            }
        }
        assert_eq!(sizes.iter().sum::<usize>(), 20, "{names:?}: {sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 1), "{names:?}: {sizes:?}");
        // Room for about five 1 KB events: pages of five, whatever the count allows.
        let mut cursor = store.cursor(filter, 0);
        let (mut seqs, mut sizes) = (Vec::new(), Vec::new());
        loop {
            let page = cursor.next(100, 5 * 1000).await.unwrap();
            sizes.push(page.events.len());
            seqs.extend(page.events.iter().map(|e| e.seq));
            if page.end {
                break;
            }
        }
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "{names:?}");
        assert!(sizes.iter().all(|&n| n <= 5), "{names:?}: {sizes:?}");
        assert!(sizes.len() >= 4, "{names:?}: {sizes:?}");
    }
}
