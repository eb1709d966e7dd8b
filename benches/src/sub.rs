//! SSE subscribers: one task per stream, reading it the way a browser's `EventSource` does
//! (HTTP/1.1, WHATWG parsing, `Last-Event-ID` and `retry:` on reconnect), and checking what
//! arrives. Over HTTP/2 ([`H2Pool`]), as a browser with many tabs does, the streams share
//! connections.
//!
//! Each published message carries its number `n` (1, 2, …) and its publish time `t` (µs since the
//! Unix epoch) in its data, as JSON members `"n":` and `"t":`. A [`Tracker`] counts each `n` once,
//! counts duplicates, and counts an `n` below an earlier one from the same publisher as out of
//! order (publisher `k` of `C` sends `n ≡ k+1 (mod C)` one at a time, so the server must keep that
//! order).

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use herald_core::sse::decode::{Decoder, SseEvent};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{OnceCell, watch},
};

use crate::http::{self, Chunked, Url};

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// Counters every subscriber task updates, for the coordinator to watch.
#[derive(Debug, Default)]
pub struct Progress {
    /// Distinct messages received, over all subscribers.
    pub delivered: AtomicU64,
    /// Subscribers that have had a response head (first connection).
    pub connected: AtomicU64,
    /// Connections opened again after one ended.
    pub reconnects: AtomicU64,
    /// Connection attempts that failed (refused, non-200, closed early).
    pub failures: AtomicU64,
    /// Subscribers whose contiguous prefix reached [`Progress::threshold`].
    pub caught_up: AtomicU64,
    /// The `n` a subscriber's contiguous prefix must reach to count as caught up.
    pub threshold: AtomicU64,
    /// The most messages any subscriber is expected to receive, for sizing.
    pub expected: AtomicU64,
}

impl Progress {
    /// Fresh counters; nothing counts as caught up until a threshold is set.
    pub fn new(expected: u64) -> Arc<Self> {
        let p = Self::default();
        p.threshold.store(u64::MAX, Ordering::Relaxed);
        p.expected.store(expected, Ordering::Relaxed);
        Arc::new(p)
    }
}

/// What one subscriber saw.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    seen: Vec<u64>,
    last_in_class: Vec<u64>,
    /// Every `n` in `1..=contiguous` has arrived.
    pub contiguous: u64,
    /// Distinct messages.
    pub received: u64,
    /// Messages that arrived again.
    pub duplicates: u64,
    /// Messages that arrived after a later one from the same publisher.
    pub out_of_order: u64,
    /// Events without a message number (a server's control events).
    pub other_events: u64,
    /// Publish→receive times, µs (when asked for).
    pub latencies_us: Vec<u32>,
    record_latency: bool,
    /// When the first and the last message arrived.
    pub first_at: Option<Instant>,
    /// When the last message arrived.
    pub last_at: Option<Instant>,
    /// When the contiguous prefix reached the threshold.
    pub caught_up_at: Option<Instant>,
    /// The browser's `lastEventId`.
    pub last_event_id: String,
}

impl Tracker {
    /// A tracker for `classes` publishers.
    pub fn new(classes: u64, record_latency: bool) -> Self {
        Self {
            last_in_class: vec![0; classes.max(1) as usize],
            record_latency,
            ..Self::default()
        }
    }

    fn record(&mut self, n: u64, t_us: Option<u64>, progress: &Progress) {
        let now = Instant::now();
        let (word, bit) = ((n / 64) as usize, n % 64);
        if word >= self.seen.len() {
            let want = (progress.expected.load(Ordering::Relaxed) / 64 + 1) as usize;
            self.seen.resize(want.max(word + 1), 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.received += 1;
        let class = ((n - 1) % self.last_in_class.len() as u64) as usize;
        if n < self.last_in_class[class] {
            self.out_of_order += 1;
        }
        self.last_in_class[class] = self.last_in_class[class].max(n);
        while self.is_seen(self.contiguous + 1) {
            self.contiguous += 1;
        }
        if self.record_latency
            && let Some(t) = t_us
        {
            self.latencies_us
                .push(now_us().saturating_sub(t).min(u32::MAX as u64) as u32);
        }
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
        progress.delivered.fetch_add(1, Ordering::Relaxed);
        if self.caught_up_at.is_none()
            && self.contiguous >= progress.threshold.load(Ordering::Relaxed)
        {
            self.caught_up_at = Some(now);
            progress.caught_up.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn is_seen(&self, n: u64) -> bool {
        self.seen
            .get((n / 64) as usize)
            .is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    /// How many of `1..=total` never arrived.
    pub fn missing(&self, total: u64) -> u64 {
        (1..=total).filter(|&n| !self.is_seen(n)).count() as u64
    }
}

/// Reads the unsigned integer after `"key":` in a JSON text (no full JSON parse per delivery).
pub fn json_u64(data: &str, key: &str) -> Option<u64> {
    let at = data.find(key)? + key.len();
    let rest = data[at..].trim_start();
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// HTTP/2 connections (cleartext, prior knowledge: Herald's `--h2c true`) that subscribers
/// share, `streams` to a connection, opened as they are first needed. A connection that ends is
/// not opened again: HTTP/2 subscribers are for the fan-out, latency and idle scenarios.
#[derive(Debug)]
pub struct H2Pool {
    addr: std::net::SocketAddr,
    streams: u64,
    connections: Vec<OnceCell<h2::client::SendRequest<Bytes>>>,
}

impl H2Pool {
    /// Room for `subscribers` streams, `streams` per connection.
    pub fn new(addr: std::net::SocketAddr, streams: u64, subscribers: u64) -> Arc<Self> {
        let streams = streams.max(1);
        Arc::new(Self {
            addr,
            streams,
            connections: (0..subscribers.div_ceil(streams))
                .map(|_| OnceCell::new())
                .collect(),
        })
    }

    /// The connection of subscriber `i`.
    async fn sender(&self, i: u64) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
        let cell = self
            .connections
            .get((i / self.streams) as usize)
            .ok_or_else(|| anyhow::anyhow!("subscriber {i} has no HTTP/2 connection"))?;
        let send = cell
            .get_or_try_init(|| async {
                let tcp = http::connect(self.addr, None).await?;
                let (send, connection) = h2::client::Builder::new()
                    .initial_window_size(1 << 20)
                    .initial_connection_window_size(16 << 20)
                    .handshake::<_, Bytes>(tcp)
                    .await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                anyhow::Ok(send)
            })
            .await?;
        Ok(send.clone())
    }
}

/// How one subscriber connects.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The stream URL.
    pub url: Url,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Source address.
    pub local: Option<IpAddr>,
    /// Reconnect (with `Last-Event-ID`, after the server's `retry:`) when the stream ends.
    pub reconnect: bool,
    /// `Last-Event-ID` for the first connection.
    pub last_event_id: Option<String>,
    /// The delay before a reconnection when the server sent no `retry:` (browsers use ~3 s).
    pub default_retry: Duration,
    /// Over HTTP/2: the shared connections and this subscriber's index among them.
    pub h2: Option<(Arc<H2Pool>, u64)>,
}

/// Runs one subscriber until `stop` turns true (or, without `reconnect`, until its stream ends).
pub async fn run(
    spec: Spec,
    mut tracker: Tracker,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> Tracker {
    let mut first = true;
    let mut last_event_id = spec.last_event_id.clone().unwrap_or_default();
    let mut retry = spec.default_retry;
    loop {
        if *stop.borrow() {
            return tracker;
        }
        let outcome = tokio::select! {
            r = connection(&spec, &last_event_id, &mut first, &mut tracker, &progress) => Some(r),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(outcome) = outcome else {
            return tracker;
        };
        match outcome {
            Ok(ended) => {
                if let Some(r) = ended.retry {
                    retry = r;
                }
            }
            Err(_) => {
                progress.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        // As EventSource does, however the connection ended (a clean end, a reset, a broken
        // chunk): the next one resumes after the last event received.
        if !tracker.last_event_id.is_empty() {
            last_event_id.clone_from(&tracker.last_event_id);
        }
        if !spec.reconnect {
            return tracker;
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            _ = stop.wait_for(|s| *s) => return tracker,
        }
        progress.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

struct Ended {
    retry: Option<Duration>,
}

/// Counts what a stream delivered.
fn take(events: Vec<SseEvent>, tracker: &mut Tracker, progress: &Progress) {
    for event in events {
        tracker.last_event_id.clone_from(&event.id);
        match json_u64(&event.data, "\"n\":") {
            Some(n) if n > 0 && event.event == "message" => {
                tracker.record(n, json_u64(&event.data, "\"t\":"), progress);
            }
            _ => tracker.other_events += 1,
        }
    }
}

/// One stream over a shared HTTP/2 connection.
async fn stream_h2(
    spec: &Spec,
    (pool, i): &(Arc<H2Pool>, u64),
    last_event_id: &str,
    first: &mut bool,
    tracker: &mut Tracker,
    progress: &Progress,
) -> anyhow::Result<Ended> {
    let mut send = pool.sender(*i).await?.ready().await?;
    let mut request = ::http::Request::get(format!("http://{}{}", spec.url.host, spec.url.target))
        .header("accept", "text/event-stream")
        .header("cache-control", "no-cache");
    if !last_event_id.is_empty() {
        request = request.header("last-event-id", last_event_id);
    }
    for (name, value) in &spec.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let (response, _) = send.send_request(request.body(())?, true)?;
    let response = response.await?;
    anyhow::ensure!(
        response.status() == 200,
        "{} answered {}",
        spec.url.target,
        response.status()
    );
    if std::mem::take(first) {
        progress.connected.fetch_add(1, Ordering::Relaxed);
    }
    let mut body = response.into_body();
    let mut decoder = Decoder::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        take(decoder.feed(&chunk), tracker, progress);
    }
    Ok(Ended {
        retry: decoder.retry().map(Duration::from_millis),
    })
}

async fn connection(
    spec: &Spec,
    last_event_id: &str,
    first: &mut bool,
    tracker: &mut Tracker,
    progress: &Progress,
) -> anyhow::Result<Ended> {
    if let Some(h2) = &spec.h2 {
        return stream_h2(spec, h2, last_event_id, first, tracker, progress).await;
    }
    let mut stream = http::connect(spec.url.addr, spec.local).await?;
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
        spec.url.target, spec.url.host
    );
    if !last_event_id.is_empty() {
        req.push_str(&format!("Last-Event-ID: {last_event_id}\r\n"));
    }
    for (name, value) in &spec.headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let head = http::read_head(&mut stream, &mut buf).await?;
    anyhow::ensure!(
        head.status == 200,
        "{} answered {}",
        spec.url.target,
        head.status
    );
    if std::mem::take(first) {
        progress.connected.fetch_add(1, Ordering::Relaxed);
    }
    let mut chunked = head.chunked().then(Chunked::default);
    let mut decoder = Decoder::new();
    let mut body = Vec::with_capacity(4096);
    let mut input = buf;
    input.reserve(16 * 1024);
    loop {
        // What was decoded before a broken chunk still counts (it reached the client).
        let (data, fed): (&[u8], _) = match &mut chunked {
            Some(c) => {
                body.clear();
                let fed = c.feed(&input, &mut body);
                (&body, fed)
            }
            None => (&input, Ok(())),
        };
        take(decoder.feed(data), tracker, progress);
        fed?;
        if chunked.as_ref().is_some_and(|c| c.done) {
            break;
        }
        input.clear();
        if stream.read_buf(&mut input).await? == 0 {
            break;
        }
    }
    Ok(Ended {
        retry: decoder.retry().map(Duration::from_millis),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_from_json() {
        assert_eq!(json_u64(r#"{"n":12,"t":34}"#, "\"n\":"), Some(12));
        assert_eq!(json_u64(r#"{"n": 12,"t":34}"#, "\"t\":"), Some(34));
        assert_eq!(json_u64(r#"{"x":1}"#, "\"n\":"), None);
    }

    #[test]
    fn tracker_counts_missing_duplicates_and_order() {
        let p = Progress::new(10);
        let mut t = Tracker::new(1, false);
        for n in [1, 2, 4, 3, 4, 6] {
            t.record(n, None, &p);
        }
        assert_eq!(t.received, 5);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.out_of_order, 1, "3 after 4");
        assert_eq!(t.contiguous, 4);
        assert_eq!(t.missing(6), 1);
        // Two publishers: 1,3,5 from one and 2,4,6 from the other may interleave freely.
        let mut t = Tracker::new(2, false);
        for n in [2, 1, 4, 3, 6, 5] {
            t.record(n, None, &p);
        }
        assert_eq!(t.out_of_order, 0);
    }
}

#[cfg(test)]
mod reconnect_tests {
    use std::sync::Arc;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A stream broken mid-chunk is an error, and the next connection still resumes after the
    /// last event received.
    #[tokio::test]
    async fn a_broken_stream_resumes_after_the_last_event_received() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut heads = Vec::new();
            let chunk = |text: &str| format!("{:x}\r\n{text}\r\n", text.len());
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            for answer in [
                // One event, then a chunk header that is not hex: the stream is broken.
                format!(
                    "{head}{}zz\r\n",
                    chunk("retry: 10\nid: e1\ndata: {\"n\":1}\n\n")
                ),
                // The resumed stream: the next event, then a clean end.
                format!("{head}{}0\r\n\r\n", chunk("id: e2\ndata: {\"n\":2}\n\n")),
            ] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut head = vec![0; 4096];
                let n = socket.read(&mut head).await.unwrap();
                heads.push(String::from_utf8_lossy(&head[..n]).into_owned());
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
            heads
        });
        let spec = Spec {
            url: Url::parse(&format!("http://{addr}/s")).await.unwrap(),
            headers: Vec::new(),
            local: None,
            reconnect: true,
            last_event_id: None,
            default_retry: Duration::from_millis(10),
            h2: None,
        };
        let progress = Arc::new(Progress::new(2));
        let (stop, stopped) = watch::channel(false);
        let subscriber = tokio::spawn(run(
            spec,
            Tracker::new(1, false),
            Arc::clone(&progress),
            stopped,
        ));
        let heads = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the subscriber reconnected")
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while progress.delivered.load(Ordering::Relaxed) < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "both events received"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).unwrap();
        let tracker = subscriber.await.unwrap();
        assert!(!heads[0].to_ascii_lowercase().contains("last-event-id"));
        assert!(heads[1].contains("Last-Event-ID: e1\r\n"), "{}", heads[1]);
        assert_eq!(tracker.received, 2);
        assert_eq!(
            progress.failures.load(Ordering::Relaxed),
            1,
            "the broken stream"
        );
        assert_eq!(
            progress.connected.load(Ordering::Relaxed),
            1,
            "one subscriber"
        );
    }
}
