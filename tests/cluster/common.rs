//! A deployment for one test, subscribers that resume like a browser, and the checks.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use herald_core::TopicFilter;
use herald_tests::{
    Api,
    cluster::{Deployment, Mongo, Nats, Nginx, Service},
    seq_of,
};
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinHandle};

/// Servers and processes of one test.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) nats: Nats,
    pub(crate) mongo: Mongo,
    pub(crate) deployment: Deployment,
    pub(crate) ingests: Vec<Service>,
    pub(crate) gateways: Vec<Service>,
}

impl Cluster {
    /// NATS, MongoDB, then `ingests` ingests and `gateways` gateways sharing `shared` flags.
    pub(crate) async fn start(ingests: usize, gateways: usize, shared: &[&str]) -> Self {
        Self::start_on(Mongo::start().await.unwrap(), ingests, gateways, shared).await
    }

    /// The same with gateways that keep no window of recent events, so every replay reads the
    /// tiers (for tests of JetStream and MongoDB replay).
    pub(crate) async fn start_windowless(ingests: usize, gateways: usize, shared: &[&str]) -> Self {
        let mut cluster = Self::start(ingests, 0, shared).await;
        for _ in 0..gateways {
            let gateway = cluster.deployment.gateway(&["--replay-window", "0"]);
            cluster.gateways.push(gateway.await.unwrap());
        }
        cluster
    }

    /// The same over a given MongoDB.
    pub(crate) async fn start_on(
        mongo: Mongo,
        ingests: usize,
        gateways: usize,
        shared: &[&str],
    ) -> Self {
        let nats = Nats::start().await.unwrap();
        let deployment = Deployment::new(&nats, &mongo, shared);
        let mut cluster = Self {
            nats,
            mongo,
            deployment,
            ingests: Vec::new(),
            gateways: Vec::new(),
        };
        for _ in 0..ingests {
            cluster
                .ingests
                .push(cluster.deployment.ingest(&[], &[]).await.unwrap());
        }
        for _ in 0..gateways {
            cluster
                .gateways
                .push(cluster.deployment.gateway(&[]).await.unwrap());
        }
        cluster
    }

    /// nginx over every gateway and ingest.
    pub(crate) async fn nginx(&self) -> Nginx {
        let gateways: Vec<&str> = self.gateways.iter().map(Service::addr).collect();
        let ingests: Vec<&str> = self.ingests.iter().map(Service::addr).collect();
        Nginx::start(&gateways, &ingests).await.unwrap()
    }
}

/// The acknowledged publishes of a test: topic and sequence of each.
#[derive(Debug, Default, Clone)]
pub(crate) struct Acked(pub(crate) Arc<Mutex<Vec<(String, u64)>>>);

impl Acked {
    pub(crate) fn add(&self, topic: &str, id: &str) {
        self.0.lock().unwrap().push((topic.to_owned(), seq_of(id)));
    }

    /// The sequences after `after` a filter should see, in order.
    pub(crate) fn expected(&self, filter: &[&str], after: u64) -> Vec<u64> {
        let filter = TopicFilter::parse(filter.iter().copied()).unwrap();
        let mut seqs: Vec<u64> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|&(t, s)| *s > after && filter.matches(t))
            .map(|&(_, s)| s)
            .collect();
        seqs.sort_unstable();
        seqs
    }

    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Publishes `{"data": data}` on `topic` with an Idempotency-Key, retrying (same key) through
/// 503s and connection failures until it is acknowledged. Answers the id and how many attempts
/// failed.
pub(crate) async fn publish_until_acked(
    api: &Api,
    topic: &str,
    key: &str,
    data: Value,
) -> (String, usize) {
    let body = json!({ "data": data }).to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut failures = 0;
    loop {
        match api.publish_raw(topic, body.clone(), Some(key)).await {
            Ok(p) if p.status.as_u16() == 201 => return (p.id(), failures),
            Ok(p) => assert!(
                p.status.as_u16() == 503 || p.status.as_u16() == 502,
                "publish answered {} {}",
                p.status,
                p.body
            ),
            Err(_) => {}
        }
        failures += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "publish of {key} never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One of several publishers sharing `events` publishes: each takes the next index from `next`
/// and publishes `{"n": i}` on a topic of [`TOPICS`] under the key `{prefix}{i}`, until none is
/// left.
pub(crate) async fn publish_share(
    api: Api,
    next: Arc<AtomicUsize>,
    acked: Acked,
    events: usize,
    prefix: &'static str,
) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= events {
            return;
        }
        let topic = TOPICS[i % TOPICS.len()];
        let (id, _) =
            publish_until_acked(&api, topic, &format!("{prefix}{i}"), json!({ "n": i })).await;
        acked.add(topic, &id);
    }
}

/// What a subscriber saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) seqs: Vec<u64>,
    /// Each event's data, in the order of `seqs`.
    pub(crate) data: Vec<String>,
    pub(crate) reconnects: usize,
    pub(crate) verdicts: Vec<String>,
    /// For each time a stream ended or failed: how long until the next stream was open again
    /// (the reconnection delay, refused attempts and the new stream's response head).
    pub(crate) gaps: Vec<Duration>,
}

/// A subscriber that behaves like EventSource: on any end or error it reconnects (through the
/// same base URL) with the last id it saw, until it has `target` events.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(crate) filter: Vec<&'static str>,
    after: u64,
    task: JoinHandle<Seen>,
    target: watch::Sender<Option<usize>>,
}

/// Streams opened by all subscribers (for checking reconnections happened).
pub(crate) static OPENED: AtomicUsize = AtomicUsize::new(0);

impl Subscriber {
    /// Starts following `filter` through `api`, resuming after `from`; reconnects 50 ms after a
    /// stream ends (100 ms after a refused attempt).
    pub(crate) fn start(api: Api, filter: Vec<&'static str>, from: String) -> Self {
        Self::spawn(api, filter, from, false)
    }

    /// The same, waiting before each reconnection as a browser's EventSource does: the stream's
    /// last `retry:` value (3 s until one arrived, the usual browser default).
    pub(crate) fn start_like_browser(api: Api, filter: Vec<&'static str>, from: String) -> Self {
        Self::spawn(api, filter, from, true)
    }

    fn spawn(api: Api, filter: Vec<&'static str>, from: String, honour_retry: bool) -> Self {
        let after = seq_of(&from);
        let (target, mut target_rx) = watch::channel(None::<usize>);
        let path = format!(
            "/v1/stream?{}",
            filter
                .iter()
                .map(|t| format!("topic={t}"))
                .collect::<Vec<_>>()
                .join("&")
        );
        let task = tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut last = from;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            let mut retry = Duration::from_secs(3);
            let mut lost_at: Option<tokio::time::Instant> = None;
            let delay = |retry: Duration, fallback: u64| {
                if honour_retry {
                    retry
                } else {
                    Duration::from_millis(fallback)
                }
            };
            'connect: loop {
                if let Some(t) = *target_rx.borrow()
                    && seen.seqs.len() >= t
                {
                    return seen;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "subscriber timed out with {} events",
                    seen.seqs.len()
                );
                OPENED.fetch_add(1, Ordering::Relaxed);
                let mut stream = match api.stream(&path, Some(&last)).await {
                    Ok(s) => s,
                    Err(_) => {
                        seen.reconnects += 1;
                        lost_at.get_or_insert_with(tokio::time::Instant::now);
                        tokio::time::sleep(delay(retry, 100)).await;
                        continue;
                    }
                };
                if let Some(at) = lost_at.take() {
                    seen.gaps.push(at.elapsed());
                }
                loop {
                    let next = tokio::select! {
                        n = stream.next_within(Duration::from_secs(30)) => n,
                        _ = target_rx.changed() => continue 'connect,
                    };
                    if let Some(ms) = stream.decoder().retry() {
                        retry = Duration::from_millis(ms);
                    }
                    match next {
                        Ok(Some(ev)) if ev.event == "herald.resume" => seen.verdicts.push(ev.data),
                        Ok(Some(ev)) if ev.event.starts_with("herald.") => {}
                        Ok(Some(ev)) => {
                            seen.seqs.push(seq_of(&ev.id));
                            seen.data.push(ev.data);
                            last = ev.id;
                            if let Some(t) = *target_rx.borrow()
                                && seen.seqs.len() >= t
                            {
                                return seen;
                            }
                        }
                        Ok(None) | Err(_) => {
                            seen.reconnects += 1;
                            lost_at = Some(tokio::time::Instant::now());
                            tokio::time::sleep(delay(retry, 50)).await;
                            continue 'connect;
                        }
                    }
                }
            }
        });
        Self {
            filter,
            after,
            task,
            target,
        }
    }

    /// Tells the subscriber how many events it should end with, and waits for it.
    pub(crate) async fn finish(self, acked: &Acked) -> (Vec<u64>, Seen) {
        let expected = acked.expected(&self.filter, self.after);
        let seen = self.collect(expected.len()).await;
        (expected, seen)
    }

    /// Waits for the subscriber to have `events` events (it fails the test after its deadline)
    /// and answers what it saw.
    pub(crate) async fn collect(self, events: usize) -> Seen {
        self.target.send(Some(events)).unwrap();
        self.task.await.unwrap()
    }
}

/// Checks every subscriber got exactly its events, in one strictly increasing order.
pub(crate) async fn check_all(subscribers: Vec<Subscriber>, acked: &Acked) -> usize {
    check_each(subscribers, acked)
        .await
        .iter()
        .map(|seen| seen.reconnects)
        .sum()
}

/// The same, answering what each subscriber saw. Counts, then asserts, per subscriber: events
/// missing, duplicated and out of order (all must be zero), and resumes that did not recover.
pub(crate) async fn check_each(subscribers: Vec<Subscriber>, acked: &Acked) -> Vec<Seen> {
    let mut all = Vec::with_capacity(subscribers.len());
    for sub in subscribers {
        let name = sub.filter.join(",");
        let (expected, seen) = sub.finish(acked).await;
        let distinct: std::collections::BTreeSet<u64> = seen.seqs.iter().copied().collect();
        let duplicates = seen.seqs.len() - distinct.len();
        let missing = expected.iter().filter(|s| !distinct.contains(s)).count();
        let out_of_order = seen.seqs.windows(2).filter(|w| w[0] >= w[1]).count();
        assert_eq!(
            (missing, duplicates, out_of_order),
            (0, 0, 0),
            "{name}: (missing, duplicated, out of order) events"
        );
        assert_eq!(seen.seqs, expected, "{name}: not exactly its events");
        assert!(
            seen.verdicts
                .iter()
                .all(|v| v.contains("\"recovered\":true")),
            "{name}: a resume was not recovered: {:?}",
            seen.verdicts
        );
        all.push(seen);
    }
    all
}

/// The head id now, from a throwaway publish (subscribers resume after it).
pub(crate) async fn head_id(api: &Api, acked: &Acked) -> String {
    let (id, _) =
        publish_until_acked(api, "warmup", &format!("warmup-{}", fastrand()), json!(0)).await;
    acked.add("warmup", &id);
    id
}

fn fastrand() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

/// Topic sets for subscribers: exact topics, several topics, and patterns.
pub(crate) const FILTERS: &[&[&str]] = &[
    &["a"],
    &["b"],
    &["a", "b"],
    &["c.*"],
    &["c.>"],
    &["c.x", "d"],
    &["d"],
    &["a", "c.y"],
    &[">"],
    &["b", "d", "c.x"],
];

/// Topics publishers use.
pub(crate) const TOPICS: &[&str] = &["a", "b", "c.x", "c.y", "d"];
