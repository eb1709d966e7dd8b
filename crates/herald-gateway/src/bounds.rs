//! One store-bounds read shared by every connection that asks while it is waiting.
//!
//! Every new stream reads the store's bounds (after registering with the hub). When a gateway dies,
//! its clients all reconnect to the others at once; with one read each, a storm of 10,000
//! reconnects became 10,000 concurrent JetStream and MongoDB reads, which timed out and turned
//! into 503s. Here the callers queue, and one read answers everyone queued when it started.
//!
//! A caller is only answered by a read that started after it asked, so the answer is as fresh as
//! its own read would have been: "register, then read the head" still holds for every stream.

use std::{error::Error, fmt, sync::Arc};

use async_trait::async_trait;
use herald_core::{Bounds, Event, Topic, TopicFilter};
use herald_store::{Cursor, History, Page, ReadQuery, StoreError};
use tokio::sync::{mpsc, oneshot};

type Answer = Result<Bounds, Arc<StoreError>>;

/// A [`History`] whose [`History::bounds`] calls share reads; other calls go straight through.
#[derive(Debug)]
pub struct SharedBounds {
    inner: Arc<dyn History>,
    asks: mpsc::UnboundedSender<oneshot::Sender<Answer>>,
}

impl SharedBounds {
    /// Wraps `inner` and starts the task that reads its bounds for the queued callers; the task
    /// ends when this is dropped. Call it inside a Tokio runtime.
    pub fn new(inner: Arc<dyn History>) -> Self {
        let (asks, mut queue) = mpsc::unbounded_channel::<oneshot::Sender<Answer>>();
        let store = Arc::clone(&inner);
        tokio::spawn(async move {
            let mut waiting = Vec::new();
            // Everyone queued now asked before this read starts.
            while queue.recv_many(&mut waiting, usize::MAX).await > 0 {
                let answer = store.bounds().await.map_err(Arc::new);
                for caller in waiting.drain(..) {
                    let _ = caller.send(answer.clone());
                }
            }
        });
        Self { inner, asks }
    }
}

#[async_trait]
impl History for SharedBounds {
    async fn read(&self, query: ReadQuery) -> Result<Page, StoreError> {
        self.inner.read(query).await
    }

    fn cursor<'a>(&'a self, filter: TopicFilter, after: u64) -> Box<dyn Cursor + 'a> {
        self.inner.cursor(filter, after)
    }

    async fn latest(&self, topic: &Topic, limit: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        self.inner.latest(topic, limit).await
    }

    async fn bounds(&self) -> Result<Bounds, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.asks.send(tx).map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(bounds)) => Ok(bounds),
            Ok(Err(e)) if matches!(*e, StoreError::Closed) => Err(StoreError::Closed),
            Ok(Err(e)) => Err(StoreError::Unavailable(Box::new(Shared(e)))),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

/// A read error handed to every caller that shared the read.
#[derive(Debug)]
struct Shared(Arc<StoreError>);

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for Shared {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicU64, Ordering},
        time::Duration,
    };

    use herald_core::Epoch;
    use tokio::sync::Semaphore;

    use super::*;

    /// Bounds whose head is the number of reads started so far; each read waits for a permit.
    #[derive(Debug)]
    struct Gated {
        reads: AtomicU64,
        gate: Semaphore,
        fail: bool,
    }

    #[async_trait]
    impl History for Gated {
        async fn read(&self, _: ReadQuery) -> Result<Page, StoreError> {
            unreachable!()
        }

        async fn latest(&self, _: &Topic, _: usize) -> Result<Vec<Arc<Event>>, StoreError> {
            unreachable!()
        }

        async fn bounds(&self) -> Result<Bounds, StoreError> {
            let head = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
            self.gate.acquire().await.unwrap().forget();
            if self.fail {
                return Err(StoreError::Unavailable("mongodb timed out".into()));
            }
            Ok(Bounds {
                epoch: Epoch(7),
                earliest: 1,
                head,
            })
        }
    }

    fn gated(fail: bool) -> Arc<Gated> {
        Arc::new(Gated {
            reads: AtomicU64::new(0),
            gate: Semaphore::new(0),
            fail,
        })
    }

    #[tokio::test]
    async fn callers_that_ask_during_a_read_share_the_next_one() {
        let store = gated(false);
        let shared = Arc::new(SharedBounds::new(Arc::clone(&store) as Arc<dyn History>));
        let ask = |shared: &Arc<SharedBounds>| {
            let shared = Arc::clone(shared);
            tokio::spawn(async move { shared.bounds().await.unwrap().head })
        };
        // The first caller starts read 1, which waits at the gate.
        let first = ask(&shared);
        while store.reads.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        // 1,000 callers ask while read 1 is under way: it started before they asked, so none
        // of them may be answered by it.
        let later: Vec<_> = (0..1000).map(|_| ask(&shared)).collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        store.gate.add_permits(2);
        // With a read per caller, most callers would wait at the gate for good.
        let answer = |caller: tokio::task::JoinHandle<u64>| async {
            tokio::time::timeout(Duration::from_secs(5), caller)
                .await
                .expect("answered by one of two reads")
                .unwrap()
        };
        assert_eq!(answer(first).await, 1);
        for caller in later {
            assert_eq!(
                answer(caller).await,
                2,
                "answered by a read started after asking"
            );
        }
        assert_eq!(
            store.reads.load(Ordering::SeqCst),
            2,
            "two reads for 1,001 callers"
        );
    }

    #[tokio::test]
    async fn a_failed_read_fails_every_caller_that_shared_it() {
        let store = gated(true);
        let shared = Arc::new(SharedBounds::new(Arc::clone(&store) as Arc<dyn History>));
        let callers: Vec<_> = (0..10)
            .map(|_| {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move { shared.bounds().await })
            })
            .collect();
        store.gate.add_permits(10);
        for caller in callers {
            let err = caller.await.unwrap().unwrap_err();
            assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
            assert!(err.to_string().contains("mongodb timed out"), "{err}");
        }
    }

    /// The shared bounds are a `History` like any other: the contract holds through them.
    #[tokio::test]
    async fn shared_bounds_keep_the_history_contract() {
        use herald_store::{MemoryStore, Store, StoreOptions, contract};
        let store = Arc::new(MemoryStore::new(StoreOptions::default()));
        let mut written = Vec::new();
        for batch in contract::sample().chunks(2) {
            written.extend(store.append(batch.to_vec(), None).await.unwrap().events);
        }
        let shared = SharedBounds::new(store as Arc<dyn History>);
        contract::check_history("shared bounds", &shared, &written).await;
    }
}
