//! HTTP/2's limits, exercised with raw frames (a client library would keep to them): a client
//! opening more streams than `--h2-max-streams` gets REFUSED_STREAM for the excess, and a
//! rapid-reset burst (streams opened and cancelled at once, CVE-2023-44487) gets a GOAWAY with
//! ENHANCE_YOUR_CALM once more than 20 were cancelled before being accepted, as Herald sets it.
//! Meanwhile a subscriber on another connection keeps receiving every event, and its delivery p99
//! is reported beside a quiet run's. And the write timeout holds per stream: a stream whose
//! flow-control window the client keeps shut, while it reads another on the same connection, is
//! reset after `--write-timeout`, and the other goes on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_tests::{Api, Herald};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;
const ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK string literal, not Huffman-coded (short strings only).
fn hpack_string(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 127);
    out.push(s.len() as u8);
    out.extend(s.as_bytes());
}

/// `GET path` on `stream`, its header block in HPACK: `:method GET` and `:scheme http` from the
/// static table, `:path` and `:authority` as literals with indexed names.
fn get(stream: u32, authority: &str, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    block.push(0x04);
    hpack_string(&mut block, path);
    block.push(0x01);
    hpack_string(&mut block, authority);
    frame(HEADERS, END_STREAM_AND_HEADERS, stream, &block)
}

fn reset(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// A prior-knowledge HTTP/2 connection (`--h2c true`) that writes raw frames.
struct RawH2 {
    socket: TcpStream,
    authority: String,
}

impl RawH2 {
    async fn connect(base: &str) -> Self {
        Self::connect_with(base, &[]).await
    }

    /// Connects with these settings of the client's.
    async fn connect_with(base: &str, settings: &[(u16, u32)]) -> Self {
        let authority = base.trim_start_matches("http://").to_owned();
        let mut socket = TcpStream::connect(&authority).await.unwrap();
        socket.write_all(PREFACE).await.unwrap();
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend(id.to_be_bytes());
            payload.extend(value.to_be_bytes());
        }
        socket
            .write_all(&frame(SETTINGS, 0, 0, &payload))
            .await
            .unwrap();
        Self { socket, authority }
    }

    /// Opens `n` more bytes of the window of `stream` (0: the connection's).
    async fn window_update(&mut self, stream: u32, n: usize) {
        let update = frame(WINDOW_UPDATE, 0, stream, &(n as u32).to_be_bytes());
        self.socket.write_all(&update).await.unwrap();
    }

    /// The next frame, `None` at the end of the connection. Acknowledges the server's settings.
    async fn next(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.socket.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.socket.read_exact(&mut payload).await.ok()?;
        let frame = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
            payload,
        };
        if frame.kind == SETTINGS && frame.flags & ACK == 0 {
            self.socket
                .write_all(&self::frame(SETTINGS, ACK, 0, &[]))
                .await
                .ok()?;
        }
        Some(frame)
    }

    /// Frames until `done` says so (then `true`), the end of the connection or 10 s (`false`).
    async fn read_until(&mut self, mut done: impl FnMut(&Frame) -> bool) -> bool {
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(frame) = self.next().await {
                if done(&frame) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false)
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Publishes `n` events on topic `c`, one per 20 ms, each carrying its send time; returns the
/// ids.
async fn publish_timed(api: &Api, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(api.publish("c", json!(now_us())).await.unwrap().id());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ids
}

/// Publishes 100 timed events while `stream` reads them; checks it got each once, in order, and
/// returns their delivery delays (µs), sorted.
async fn delivery_delays(api: &Api, stream: &mut herald_tests::SseStream) -> Vec<u64> {
    let read = async {
        let mut got = Vec::new();
        while got.len() < 100 {
            match stream.next().await.unwrap() {
                Some(e) if e.event == "message" => {
                    let sent: u64 = e.data.parse().unwrap();
                    got.push((e.id, now_us().saturating_sub(sent)));
                }
                Some(_) => {}
                None => panic!("the control stream ended"),
            }
        }
        got
    };
    let (ids, got) = tokio::join!(publish_timed(api, 100), read);
    let got_ids: Vec<&String> = got.iter().map(|(id, _)| id).collect();
    assert_eq!(
        got_ids,
        ids.iter().collect::<Vec<_>>(),
        "the control subscriber gets every event once, in order"
    );
    let mut delays: Vec<u64> = got.into_iter().map(|(_, d)| d).collect();
    delays.sort_unstable();
    delays
}

fn p99_ms(sorted: &[u64]) -> f64 {
    sorted[((sorted.len() - 1) as f64 * 0.99).round() as usize] as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_refuses_streams_past_its_limit_and_ends_a_rapid_reset_burst() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &["--h2c", "true", "--h2-max-streams", "10"])
        .await
        .unwrap();
    let api = herald.api();
    let mut control = api.stream("/v1/stream?topic=c", None).await.unwrap();

    // A quiet run first, for the p99 to compare with.
    let quiet = delivery_delays(&api, &mut control).await;

    // Both attacks, over and over, while the control subscriber is measured.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attack = {
        let (base, stop) = (herald.base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                attack(&base).await;
                rounds += 1;
            }
            rounds
        })
    };
    let during = delivery_delays(&api, &mut control).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = attack.await.unwrap();
    let (quiet_p99, during_p99) = (p99_ms(&quiet), p99_ms(&during));
    eprintln!(
        "control subscriber p99: {quiet_p99:.1} ms quiet, {during_p99:.1} ms during {rounds} \
         rounds of both HTTP/2 attacks (100 events each)"
    );
    assert!(rounds > 0);
    assert!(
        during_p99 < quiet_p99.max(20.0) * 10.0,
        "the attacks delayed the control subscriber: p99 {during_p99:.1} ms against \
         {quiet_p99:.1} ms"
    );
    // The process is still there and serving.
    assert_eq!(api.get_text_status("/healthz").await.0, 200);
}

/// One round of both attacks, each checked for the server's answer.
async fn attack(base: &str) {
    // Eleven streams at once where ten are allowed.
    let mut h2 = RawH2::connect(base).await;
    let mut burst = Vec::new();
    for n in 0..11 {
        burst.extend(get(1 + 2 * n, &h2.authority, "/v1/stream?topic=x"));
    }
    h2.socket.write_all(&burst).await.unwrap();
    let (mut limit, mut answered) = (None, 0);
    let refused = h2
        .read_until(|f| {
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                for setting in f.payload.chunks(6) {
                    if u16::from_be_bytes([setting[0], setting[1]])
                        == SETTINGS_MAX_CONCURRENT_STREAMS
                    {
                        limit = Some(u32::from_be_bytes(setting[2..6].try_into().unwrap()));
                    }
                }
            }
            if f.kind == HEADERS && f.stream < 21 {
                answered += 1;
            }
            f.kind == RST_STREAM && f.stream == 21 && f.code() == REFUSED_STREAM
        })
        .await;
    assert_eq!(limit, Some(10), "the server announces its limit");
    assert!(refused, "the eleventh stream was not refused");
    // The ten allowed streams are answered (their heads may follow the refusal).
    while answered < 10 {
        let f = h2.next().await.expect("the connection ended");
        if f.kind == HEADERS && f.stream < 21 {
            answered += 1;
        }
    }

    // A rapid-reset burst on a second connection: fifty streams, each cancelled as soon as it
    // is opened, past the 20 cancelled-before-accepted streams allowed. (Not more: a server that
    // closes with unread bytes resets the TCP connection, and its GOAWAY may be lost with it.)
    let mut h2 = RawH2::connect(base).await;
    let mut burst = Vec::new();
    for n in 0..50 {
        let stream = 1 + 2 * n;
        burst.extend(get(stream, &h2.authority, "/v1/stream?topic=x"));
        burst.extend(reset(stream, CANCEL));
    }
    h2.socket.write_all(&burst).await.unwrap();
    let calmed = h2
        .read_until(|f| f.kind == GOAWAY && f.code() == ENHANCE_YOUR_CALM)
        .await;
    assert!(
        calmed,
        "no GOAWAY ENHANCE_YOUR_CALM after a rapid-reset burst"
    );
}

/// Two streams on one HTTP/2 connection with a 1 KiB window each: the client opens the window of
/// one as it reads, and never the other's. With `--write-timeout 2s`, the shut stream is reset
/// (CANCEL) about two seconds after its window filled, counted as a subscriber cut off; the open
/// stream keeps receiving on the same connection, which stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_whose_window_stays_shut_is_reset_after_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &["--h2c", "true", "--write-timeout", "2s"])
        .await
        .unwrap();
    let api = herald.api();
    let mut h2 = RawH2::connect_with(&herald.base, &[(SETTINGS_INITIAL_WINDOW_SIZE, 1024)]).await;
    let (shut, open) = (1, 3);
    let mut opening = get(shut, &h2.authority, "/v1/stream?topic=w");
    opening.extend(get(open, &h2.authority, "/v1/stream?topic=w"));
    h2.socket.write_all(&opening).await.unwrap();
    for _ in 0..100 {
        if api.metric("herald_connections_open").await.unwrap() >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api.metric("herald_connections_open").await.unwrap(), 2.0);

    // Events of about 300 bytes every 50 ms: four fill the shut stream's window.
    let publisher = {
        let api = api.clone();
        tokio::spawn(async move {
            for n in 0..200 {
                let data = json!({"n": n, "pad": "p".repeat(256)});
                api.publish("w", data).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = std::time::Instant::now();
    let (mut shut_bytes, mut filled, mut reset, mut open_after_reset) = (0, None, None, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while open_after_reset < 20 {
        let f = tokio::time::timeout_at(deadline, h2.next())
            .await
            .expect("neither a reset of the shut stream nor events on the open one")
            .expect("the connection ended");
        match (f.kind, f.stream) {
            (DATA, _) if !f.payload.is_empty() => {
                // The connection's window is always given back; the shut stream's never.
                h2.window_update(0, f.payload.len()).await;
                if f.stream == open {
                    h2.window_update(open, f.payload.len()).await;
                    open_after_reset += usize::from(reset.is_some());
                } else if f.stream == shut {
                    assert!(reset.is_none(), "data on the shut stream after its reset");
                    shut_bytes += f.payload.len();
                    if shut_bytes >= 1024 {
                        filled.get_or_insert_with(|| started.elapsed());
                    }
                }
            }
            (RST_STREAM, s) => {
                assert_eq!(s, shut, "only the shut stream is reset");
                assert_eq!(f.code(), CANCEL);
                reset = Some(started.elapsed());
            }
            (GOAWAY, _) => panic!("the connection was closed: GOAWAY {}", f.code()),
            _ => {}
        }
    }
    publisher.abort();
    let (filled, reset) = (filled.expect("the window filled"), reset.unwrap());
    eprintln!(
        "the shut stream's window filled at {filled:?}; the stream was reset at {reset:?}; \
         the open stream read 20 more events on the same connection"
    );
    assert!(
        reset >= filled + Duration::from_millis(1900),
        "reset before the write timeout: filled at {filled:?}, reset at {reset:?}"
    );
    assert!(
        reset <= filled + Duration::from_secs(4),
        "reset long after the write timeout: filled at {filled:?}, reset at {reset:?}"
    );
    assert_eq!(
        api.metric("herald_slow_subscribers_cut_off_total")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(api.metric("herald_connections_open").await.unwrap(), 1.0);
}

/// A certificate that does not load stops `herald` with exit code 1 and the file's name, before
/// it prints its "listening on" line (which scripts and supervisors take as up).
#[tokio::test]
async fn a_tls_pair_that_does_not_load_stops_herald_before_it_says_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(herald_tests::process::herald_bin())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(&missing)
            .arg("--tls-key")
            .arg(&missing)
            .output(),
    )
    .await
    .expect("herald did not exit")
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "", "nothing said before the failure");
    assert!(
        stderr.contains("missing.pem"),
        "the error names the file: {stderr}"
    );
}
