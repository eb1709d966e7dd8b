//! The store contract, written once and run against every backend.

use std::{sync::Arc, time::Duration};

use herald_core::{EventType, NewEvent, Topic, TopicFilter, event::parse_data};
use herald_store::{
    EmbeddedStore, Idempotency, MemoryStore, ReadQuery, Store, StoreError, StoreOptions, contract,
};

fn new_event(topic: &str, n: u64) -> NewEvent {
    NewEvent {
        topic: Topic::new(topic).unwrap(),
        event_type: EventType::default(),
        data: parse_data(format!("{{\"n\":{n}}}")).unwrap(),
    }
}

fn idem(key: &str, fingerprint: u64) -> Option<Idempotency> {
    Some(Idempotency {
        key: key.into(),
        fingerprint,
    })
}

/// Each backend under test, with the temp dir it lives in (if any).
async fn backends(options: StoreOptions) -> Vec<(Arc<dyn Store>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(dir.path(), options.clone()).unwrap();
    vec![
        (Arc::new(MemoryStore::new(options)), None),
        (Arc::new(embedded), Some(dir)),
    ]
}

async fn read_all(store: &dyn Store, filter: TopicFilter, after: u64, limit: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut after = after;
    loop {
        let page = store
            .read(ReadQuery {
                filter: filter.clone(),
                after,
                limit,
            })
            .await
            .unwrap();
        assert!(page.events.len() <= limit);
        out.extend(page.events.iter().map(|e| e.seq));
        after = page.next_after;
        if page.end {
            return out;
        }
    }
}

#[tokio::test]
async fn appends_are_sequenced_and_read_back_by_topic_in_pages() {
    for (store, _dir) in backends(StoreOptions::default()).await {
        let mut expected_a = Vec::new();
        for n in 1..=50u64 {
            let topic = if n % 3 == 0 { "b" } else { "a.x" };
            let appended = store.append(vec![new_event(topic, n)], None).await.unwrap();
            assert_eq!(appended.seqs, vec![n], "{store:?}");
            assert_eq!(appended.events[0].data.get(), format!("{{\"n\":{n}}}"));
            if topic == "a.x" {
                expected_a.push(n);
            }
        }
        let batch = store
            .append(vec![new_event("c", 0), new_event("a.x", 0)], None)
            .await
            .unwrap();
        assert_eq!(batch.seqs, vec![51, 52]);
        expected_a.push(52);

        let a = TopicFilter::parse(["a.x"]).unwrap();
        assert_eq!(read_all(&*store, a.clone(), 0, 7).await, expected_a);
        let after_10: Vec<u64> = expected_a.iter().copied().filter(|&s| s > 10).collect();
        assert_eq!(read_all(&*store, a, 10, 4).await, after_10);

        let ab = TopicFilter::parse(["a.x", "b"]).unwrap();
        let all_but_c: Vec<u64> = (1..=52).filter(|&s| s != 51).collect();
        assert_eq!(read_all(&*store, ab, 0, 9).await, all_but_c);

        let pattern = TopicFilter::parse(["a.*", "c"]).unwrap();
        let expect: Vec<u64> = (1..=52).filter(|&s| s % 3 != 0 || s > 50).collect();
        assert_eq!(read_all(&*store, pattern, 0, 5).await, expect);

        let bounds = store.bounds().await.unwrap();
        assert_eq!((bounds.earliest, bounds.head), (1, 52));
        let last = store.latest(&Topic::new("b").unwrap(), 3).await.unwrap();
        assert_eq!(
            last.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![42, 45, 48]
        );
    }
}

#[tokio::test]
async fn an_end_page_reports_the_head_it_saw() {
    for (store, _dir) in backends(StoreOptions::default()).await {
        for n in 0..5 {
            store.append(vec![new_event("x", n)], None).await.unwrap();
        }
        let page = store
            .read(ReadQuery {
                filter: TopicFilter::parse(["other"]).unwrap(),
                after: 0,
                limit: 10,
            })
            .await
            .unwrap();
        assert!(page.end && page.events.is_empty());
        assert_eq!(page.next_after, 5, "{store:?}");
    }
}

#[tokio::test]
async fn idempotency_keys_answer_the_first_result() {
    for (store, _dir) in backends(StoreOptions::default()).await {
        let first = store
            .append(vec![new_event("t", 1), new_event("t", 2)], idem("k", 7))
            .await
            .unwrap();
        let again = store
            .append(vec![new_event("t", 1), new_event("t", 2)], idem("k", 7))
            .await
            .unwrap();
        assert!(!first.duplicate && again.duplicate);
        assert_eq!(first.seqs, again.seqs);
        assert!(again.events.is_empty());
        assert_eq!(store.bounds().await.unwrap().head, 2);
        let conflict = store.append(vec![new_event("t", 3)], idem("k", 8)).await;
        assert!(matches!(conflict, Err(StoreError::IdempotencyConflict)));
        let other = store
            .append(vec![new_event("t", 3)], idem("k2", 7))
            .await
            .unwrap();
        assert_eq!(other.seqs, vec![3]);
    }
}

#[tokio::test]
async fn idempotency_keys_expire_after_the_window() {
    let options = StoreOptions {
        idempotency_window: Duration::from_millis(30),
        ..StoreOptions::default()
    };
    for (store, _dir) in backends(options).await {
        store
            .append(vec![new_event("t", 1)], idem("k", 1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        store.trim().await.unwrap();
        let later = store
            .append(vec![new_event("t", 1)], idem("k", 1))
            .await
            .unwrap();
        assert!(!later.duplicate, "{store:?}");
        assert_eq!(later.seqs, vec![2]);
    }
}

#[tokio::test]
async fn retention_by_size_removes_the_oldest_events() {
    let options = StoreOptions {
        max_bytes: Some(10 * 31),
        max_age: None,
        ..StoreOptions::default()
    };
    for (store, _dir) in backends(options).await {
        for n in 0..30 {
            store
                .append(vec![new_event("t", n % 10)], None)
                .await
                .unwrap();
        }
        store.trim().await.unwrap();
        let bounds = store.bounds().await.unwrap();
        assert_eq!(bounds.head, 30);
        assert_eq!(bounds.earliest, 21, "{store:?}: each event weighs 31");
        let left = read_all(&*store, TopicFilter::parse(["t"]).unwrap(), 0, 100).await;
        assert_eq!(left, (21..=30).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn retention_by_age_removes_old_events_and_an_empty_log_keeps_its_head() {
    let options = StoreOptions {
        max_age: Some(Duration::from_millis(20)),
        ..StoreOptions::default()
    };
    for (store, _dir) in backends(options).await {
        for n in 0..5 {
            store.append(vec![new_event("t", n)], None).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.append(vec![new_event("t", 9)], None).await.unwrap();
        store.trim().await.unwrap();
        let bounds = store.bounds().await.unwrap();
        assert_eq!((bounds.earliest, bounds.head), (6, 6), "{store:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.trim().await.unwrap();
        let bounds = store.bounds().await.unwrap();
        assert_eq!((bounds.earliest, bounds.head), (7, 6));
        let next = store.append(vec![new_event("t", 10)], None).await.unwrap();
        assert_eq!(next.seqs, vec![7], "sequences never restart");
    }
}

#[tokio::test]
async fn a_closed_store_refuses_appends() {
    for (store, _dir) in backends(StoreOptions::default()).await {
        store.close().await.unwrap();
        let r = store.append(vec![new_event("t", 1)], None).await;
        assert!(matches!(r, Err(StoreError::Closed)), "{store:?}");
    }
}

#[tokio::test]
async fn every_store_keeps_the_history_contract() {
    for (store, dir) in backends(StoreOptions::default()).await {
        let name = if dir.is_some() { "embedded" } else { "memory" };
        let sample = contract::sample();
        let mut written = Vec::new();
        // Singles and batches of two and three.
        let mut rest = sample.as_slice();
        for size in [1, 2, 3].into_iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, tail) = rest.split_at(size.min(rest.len()));
            rest = tail;
            written.extend(store.append(batch.to_vec(), None).await.unwrap().events);
        }
        contract::check_history(name, &*store, &written).await;
    }
}
