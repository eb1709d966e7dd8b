//! A randomized fault-schedule checker over real Herald processes (Jepsen-style, seeded and
//! reproducible), for any deployment that implements [`System`]: the standalone `herald`
//! (`tests/standalone/checker.rs`) and the distributed mode behind nginx
//! (`tests/cluster/checker.rs`). A schedule interleaves publishes (single, batch, keyed, and
//! retries of a key after a success or an error, including a keyed publish in flight when a
//! process dies), subscribers on topics and patterns that disconnect and resume from their last
//! id, from an old id they saw, or from a foreign one, and the system's faults (`kill -9` or
//! SIGTERM plus restart of its processes, backend restarts and pauses, network faults through
//! the harness's fault proxy), stalled readers (a subscriber that stops reading for up to 3 s
//! over a narrow receive window, so the server's queue takes the backlog and it catches up in
//! place) and floods. Subscribers behave like `EventSource`: when the stream ends they come
//! back with their last id. Every acknowledgement and every event every subscriber read is
//! recorded, then the history is checked:
//!
//! - G1: every acknowledged event is in the final replay of everything, with its topic and data;
//! - G2/G3: no id ever names two different events, and each connection's ids only go up;
//! - G4: a resume from an id of this server is judged recovered (no retention here), and from a
//!   foreign id is told `recovered:false`; a recovered connection gets every event after its id
//!   that its topics match, up to the last one it read — none missing, none twice;
//! - G5: a key answers with one id however often it is retried, and its data is stored once
//!   (unless a fault lost the storage that held its record: [`DATA_LOST`]);
//! - through a Redis bridge: every entry a legacy publisher added to the bridged Redis Stream
//!   (acknowledged by Redis) comes into Herald once, on its topic.
//!
//! One fault changes what may be seen: a single-replica NATS that loses its disk loses what only
//! JetStream held, which can be events whose publish was never acknowledged (their ingest died
//! before its MongoDB write and the archiver had not caught up). Such an event may vanish after
//! a subscriber read it, and a resume from before one that vanished at the very start of the
//! history is honestly `expired`; both are accepted, only for unacknowledged events, only in a
//! schedule with that fault.
//!
//! On a violation it shrinks the schedule (drops runs of operations while the rest still fails,
//! each try on fresh processes, for at most `HERALD_CHECKER_SHRINK_SECONDS`), then prints the
//! seed, the violation and the shrunk schedule; the whole schedule is run again from its seed
//! (`HERALD_CHECKER_SEED=N`), the shrunk one with the positions it kept as well
//! (`HERALD_CHECKER_KEEP=0-4,7`, printed with it). `tests/run` runs a few schedules with new seeds each time
//! (`HERALD_CHECKER_SCHEDULES`, default 4); `HERALD_CHECKER_SCHEDULES=200` runs for hours.

use std::{collections::BTreeMap, time::Duration};

use herald_core::{EventId, TopicFilter};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{Api, Published, SseStream};

/// A deployment the checker drives: where publishes go, where each subscriber connects (stable
/// across the system's faults), and the faults.
#[allow(async_fn_in_trait)]
pub trait System {
    /// The API publishes are sent to.
    fn publisher(&self) -> Api;
    /// `http://HOST:PORT` subscriber `i` connects to.
    fn stream_base(&self, i: usize) -> String;
    /// One fault picked with `rng` (`graceful`: SIGTERM rather than `kill -9` where it applies),
    /// done and recovered from (the process restarted); what it was, for the schedule.
    async fn fault(&mut self, rng: &mut fastrand::Rng, graceful: bool) -> String;
    /// Kills and restarts the process the publisher's requests reach, picked with `rng` where
    /// there are several (an in-flight publish then has an unknown outcome).
    async fn crash_publisher(&mut self, rng: &mut fastrand::Rng);
    /// Whether retention removes events during a schedule (then events before the final
    /// replay's earliest cannot be checked, and resumes from before it are honestly `expired`).
    fn retention(&self) -> bool {
        false
    }
    /// The size of a flood (a batch of this many events on one topic, each padded with that
    /// many bytes), or `None` where the schedule's floods are skipped. A flood overflows every
    /// matching subscriber's queue at once, and a stalled reader's connection with it, so the
    /// subscriber catches up from the store while the trimmer runs.
    fn flood(&self) -> Option<(usize, usize)> {
        None
    }
    /// Adds `data` as an entry of the legacy Redis Stream a Redis bridge brings into Herald on
    /// `topic`: `Some(true)` when Redis acknowledged it (then it must reach Herald exactly
    /// once), `Some(false)` when that is unknown, `None` where there is no bridge.
    async fn publish_legacy(&mut self, _topic: &str, _data: &Value) -> Option<bool> {
        None
    }
    /// Waits until the bridge has brought in every legacy entry Redis acknowledged.
    async fn settle_legacy(&mut self) {}
}
/// In a fault's description: the fault lost a storage's data (the MongoDB-wire test server's
/// `kill -9` loses its journaled writes). A key answered before it may be answered anew after
/// it, once JetStream's duplicate window is over: its only record was lost.
pub const DATA_LOST: &str = "its data lost";
const TOPICS: &[&str] = &["t.a", "t.b", "u.c"];
const FILTERS: &[&[&str]] = &[&["t.a"], &["t.*"], &[">"], &["u.c", "t.b"]];
const SUBSCRIBERS: usize = 4;
/// How long a key that got an error waits before it is retried: well past any duplicate window
/// the systems set (1 s; JetStream forgets a message id up to a window late), so the answer
/// comes from MongoDB's record of the key, not from JetStream's memory of it.
const KEY_BACKOFF: Duration = Duration::from_secs(3);
const OPERATIONS: usize = 100;

/// One step of a schedule.
#[derive(Debug, Clone)]
enum Op {
    Publish(&'static str),
    Batch(Vec<&'static str>),
    Keyed(&'static str),
    RetryKey,
    Resume(usize),
    ResumeOld(usize),
    ResumeForeign(usize),
    Kill9,
    Sigterm,
    CrashPublishing,
    /// Subscriber stops reading for this many milliseconds (publishes go on).
    Stall(usize, u64),
    /// A large batch on one topic ([`System::flood`]).
    Flood(&'static str),
    /// A legacy publisher's entry on the Redis Stream a bridge brings in.
    Legacy(&'static str),
    Pause(u64),
}

fn schedule(seed: u64) -> Vec<Op> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let topic = |rng: &mut fastrand::Rng| TOPICS[rng.usize(..TOPICS.len())];
    (0..OPERATIONS)
        .map(|_| match rng.usize(0..100) {
            0..30 => Op::Publish(topic(&mut rng)),
            30..40 => Op::Batch((0..rng.usize(2..5)).map(|_| topic(&mut rng)).collect()),
            40..52 => Op::Keyed(topic(&mut rng)),
            52..60 => Op::RetryKey,
            60..68 => Op::Resume(rng.usize(..SUBSCRIBERS)),
            68..74 => Op::ResumeOld(rng.usize(..SUBSCRIBERS)),
            74..78 => Op::ResumeForeign(rng.usize(..SUBSCRIBERS)),
            78..81 => Op::Kill9,
            81..83 => Op::Sigterm,
            83..85 => Op::CrashPublishing,
            85..89 => Op::Stall(rng.usize(..SUBSCRIBERS), rng.u64(300..3000)),
            89..92 => Op::Flood(topic(&mut rng)),
            92..95 => Op::Legacy(topic(&mut rng)),
            _ => Op::Pause(rng.u64(0..150)),
        })
        .collect()
}

/// What a subscriber is told to do.
#[derive(Debug)]
enum Command {
    /// Drop the connection and come back with this Last-Event-ID (its own last id when `None`);
    /// `true` when the id is not one this server handed out.
    Reconnect(Option<String>, bool),
    /// Stop reading for a while, the connection kept open.
    Stall(Duration),
    Stop,
}

/// One connection of a subscriber, as read.
#[derive(Debug, Default, Clone)]
struct Session {
    /// The Last-Event-ID it was opened with.
    from: Option<String>,
    /// Whether that id is not one this server handed out (it must not be judged recovered;
    /// any other must, with no retention).
    foreign: bool,
    /// `recovered` of its `herald.resume`, if one came.
    recovered: Option<bool>,
    /// `(id, topic, n)` of every event read, in order.
    events: Vec<(EventId, String, u64)>,
}

/// A subscriber that behaves like EventSource: it reconnects with its last id when the stream
/// ends, retrying while the server is down. Its socket has a narrow receive window, so a stall
/// backs events up into the server sooner than a default socket would.
async fn subscriber(
    filter: &'static [&'static str],
    base: String,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> Vec<Session> {
    let query: String = filter
        .iter()
        .map(|t| format!("topic={}", t.replace('>', "%3E")))
        .collect::<Vec<_>>()
        .join("&");
    let mut sessions = Vec::new();
    let mut last: Option<String> = None;
    // A Last-Event-ID given by the schedule for the next connection, and whether it is foreign.
    let mut given: Option<(String, bool)> = None;
    loop {
        let (from, foreign) = match given.take() {
            Some((id, foreign)) => (Some(id), foreign),
            None => (last.clone(), false),
        };
        let url = format!("{base}/v1/stream?{query}");
        let mut stream = match SseStream::open_narrow(&url, from.as_deref()).await {
            Ok(s) => s,
            Err(_) => {
                // Down: wait (a browser waits its retry) or take a command.
                tokio::select! {
                    c = commands.recv() => match c {
                        Some(Command::Stop) | None => return sessions,
                        Some(Command::Reconnect(id, foreign)) => given = id.map(|id| (id, foreign)),
                        Some(Command::Stall(_)) => {}
                    },
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
        };
        let mut session = Session {
            from: from.clone(),
            foreign,
            ..Session::default()
        };
        let stop = loop {
            tokio::select! {
                c = commands.recv() => match c {
                    Some(Command::Stop) | None => break true,
                    Some(Command::Reconnect(id, foreign)) => {
                        given = id.map(|id| (id, foreign));
                        break false;
                    }
                    Some(Command::Stall(d)) => tokio::time::sleep(d).await,
                },
                ev = stream.next_within(Duration::from_secs(60)) => match ev {
                    Ok(Some(ev)) if ev.event == "herald.resume" => {
                        let v: Value = serde_json::from_str(&ev.data).unwrap_or_default();
                        if !session.events.is_empty() {
                            // A verdict in the middle of a connection (a catch-up that fell
                            // behind retention): what follows is checked as a new, live part.
                            sessions.push(std::mem::take(&mut session));
                        }
                        session.recovered = v["recovered"].as_bool();
                    }
                    Ok(Some(ev)) if ev.event.starts_with("herald.") => {}
                    Ok(Some(ev)) => {
                        let id: EventId = ev.id.parse().expect("an event id");
                        let data: Value = serde_json::from_str(&ev.data).expect("JSON data");
                        let n = data["n"].as_u64().expect("n");
                        let topic = data["topic"].as_str().expect("topic").to_owned();
                        session.events.push((id, topic, n));
                        last = Some(ev.id);
                    }
                    // The server went away: EventSource reconnects with its last id.
                    Ok(None) | Err(_) => break false,
                },
            }
        };
        sessions.push(session);
        if stop {
            return sessions;
        }
        // A browser waits its `retry:` before reconnecting (a draining server refuses at once).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything a schedule saw.
#[derive(Debug, Default)]
struct History {
    /// n → (id, topic) of acknowledged publishes.
    acked: BTreeMap<u64, (EventId, String)>,
    /// n → topic of publishes whose outcome is unknown (an error or a timeout).
    maybe: BTreeMap<u64, String>,
    /// key → (n, id) of its first acknowledgement.
    keys: BTreeMap<String, (u64, EventId)>,
    /// n of a keyed event → how many storage losses came before its key was first tried.
    first_try: BTreeMap<u64, usize>,
    /// Faults so far that lost a storage's data ([`DATA_LOST`]).
    losses: usize,
    /// n → (topic, storage losses before it) of legacy entries Redis acknowledged.
    legacy: BTreeMap<u64, (&'static str, usize)>,
    /// n of keyed events whose record a storage loss took: G5 cannot hold for them.
    forgotten: std::collections::BTreeSet<u64>,
    /// n of keyed publishes.
    keyed: Vec<u64>,
    /// Every id this server handed out, as text.
    ids: Vec<String>,
}

impl History {
    /// Notes that the key of keyed event `n` is being tried (the first time counts).
    fn tried(&mut self, n: u64) {
        self.first_try.entry(n).or_insert(self.losses);
    }

    /// Whether a storage lost its data after the key of keyed event `n` was first tried: then
    /// its record may be gone, and a retry past JetStream's window makes a new event.
    fn lost_since_first_try(&self, n: u64) -> bool {
        self.first_try.get(&n).is_some_and(|&at| at < self.losses)
    }
}

struct Run<S> {
    system: S,
    subs: Vec<mpsc::UnboundedSender<Command>>,
    history: History,
    next_n: u64,
    last_key: Option<(String, &'static str, u64)>,
    /// Keys whose last publish got no answer or an error, and when: retried after
    /// [`KEY_BACKOFF`] by `RetryKey` before the last key, and at the end until answered, as an
    /// app retries a failed publish.
    unsettled: BTreeMap<String, (&'static str, u64, tokio::time::Instant)>,
    /// Keyed publishes answered with an error or not at all.
    key_errors: usize,
    /// Violations seen while the schedule ran (the rest is checked on the history at the end).
    violations: Vec<String>,
    log: Vec<String>,
}

impl<S: System> Run<S> {
    fn data(&mut self, topic: &str) -> (u64, Value) {
        self.next_n += 1;
        (self.next_n, data(self.next_n, topic, 0))
    }

    fn ack(&mut self, n: u64, id: &str, topic: &str) {
        let id_parsed: EventId = id.parse().expect("an id in the answer");
        self.history.acked.insert(n, (id_parsed, topic.to_owned()));
        self.history.maybe.remove(&n);
        self.history.ids.push(id.to_owned());
    }

    /// Publishes a batch, one event on each of `topics`, each with `padding` bytes.
    async fn batch(&mut self, topics: &[&'static str], padding: usize) {
        let items: Vec<(u64, Value)> = topics
            .iter()
            .map(|t| {
                self.next_n += 1;
                (self.next_n, data(self.next_n, t, padding))
            })
            .collect();
        let batch: Vec<Value> = items
            .iter()
            .zip(topics)
            .map(|((_, data), t)| json!({ "topic": t, "data": data }))
            .collect();
        match self.system.publisher().publish_batch(json!(batch)).await {
            Ok(p) if p.status.is_success() => {
                let ids: Vec<String> = p.body["events"]
                    .as_array()
                    .expect("events in a batch answer")
                    .iter()
                    .map(|e| e["id"].as_str().unwrap().to_owned())
                    .collect();
                assert_eq!(ids.len(), items.len());
                for (((n, _), t), id) in items.iter().zip(topics).zip(&ids) {
                    self.ack(*n, id, t);
                }
            }
            Ok(p) if p.status.is_server_error() => {
                for ((n, _), t) in items.iter().zip(topics) {
                    self.history.maybe.insert(*n, t.to_string());
                }
            }
            Ok(p) => panic!("batch answered {}: {}", p.status, p.body),
            Err(_) => {
                for ((n, _), t) in items.iter().zip(topics) {
                    self.history.maybe.insert(*n, t.to_string());
                }
            }
        }
    }

    async fn keyed(&mut self, key: String, topic: &'static str, n: u64) {
        self.history.tried(n);
        let answer = keyed_publish(self.system.publisher(), &key, topic, n).await;
        self.record_keyed(key, topic, n, answer);
    }

    fn record_keyed(
        &mut self,
        key: String,
        topic: &'static str,
        n: u64,
        answer: anyhow::Result<Published>,
    ) {
        match answer {
            Ok(p) if p.status.is_success() => {
                self.unsettled.remove(&key);
                let id = p.id();
                match self.history.keys.get(&key) {
                    Some(&(_, first)) if id != first.to_string() => {
                        if self.history.lost_since_first_try(n) {
                            self.history.forgotten.insert(n);
                        } else {
                            self.violations
                                .push(format!("G5: key {key} answered {first}, then {id}"));
                        }
                    }
                    Some(_) => {}
                    None => {
                        self.history
                            .keys
                            .insert(key.clone(), (n, id.parse().unwrap()));
                        self.ack(n, &id, topic);
                    }
                }
            }
            Ok(p) if p.status.is_server_error() => {
                self.history.maybe.insert(n, topic.to_owned());
                let now = tokio::time::Instant::now();
                self.unsettled.insert(key.clone(), (topic, n, now));
                self.key_errors += 1;
            }
            Ok(p) => panic!("keyed publish answered {}: {}", p.status, p.body),
            Err(_) => {
                self.history.maybe.insert(n, topic.to_owned());
                let now = tokio::time::Instant::now();
                self.unsettled.insert(key.clone(), (topic, n, now));
                self.key_errors += 1;
            }
        }
        self.last_key = Some((key, topic, n));
    }

    async fn apply(&mut self, op: &Op, rng: &mut fastrand::Rng) {
        match op {
            Op::Publish(topic) => {
                let (n, data) = self.data(topic);
                match self.system.publisher().publish(topic, data).await {
                    Ok(p) if p.status.is_success() => self.ack(n, &p.id(), topic),
                    Ok(p) if p.status.is_server_error() => {
                        self.history.maybe.insert(n, topic.to_string());
                    }
                    Ok(p) => panic!("publish answered {}: {}", p.status, p.body),
                    Err(_) => {
                        self.history.maybe.insert(n, topic.to_string());
                    }
                }
            }
            Op::Batch(topics) => self.batch(topics, 0).await,
            Op::Flood(topic) => {
                if let Some((events, padding)) = self.system.flood() {
                    self.batch(&vec![*topic; events], padding).await;
                }
            }
            Op::Keyed(topic) => {
                self.next_n += 1;
                let n = self.next_n;
                self.history.keyed.push(n);
                self.keyed(format!("key-{n}"), topic, n).await;
            }
            Op::RetryKey => {
                let mut due = self
                    .unsettled
                    .iter()
                    .filter(|(_, (_, _, at))| at.elapsed() >= KEY_BACKOFF);
                let retry = due
                    .next()
                    .map(|(key, &(topic, n, _))| (key.clone(), topic, n));
                if let Some((key, topic, n)) = retry.or_else(|| self.last_key.clone()) {
                    self.keyed(key, topic, n).await;
                }
            }
            Op::Resume(s) => {
                let _ = self.subs[*s].send(Command::Reconnect(None, false));
            }
            Op::ResumeOld(s) => {
                let ids = &self.history.ids;
                if !ids.is_empty() {
                    let id = ids[rng.usize(..ids.len())].clone();
                    self.log
                        .push(format!("  (subscriber {s} resumes from {id})"));
                    let _ = self.subs[*s].send(Command::Reconnect(Some(id), false));
                }
            }
            Op::ResumeForeign(s) => {
                let foreign = ["9999-1", "not-an-id"][rng.usize(..2)].to_owned();
                let _ = self.subs[*s].send(Command::Reconnect(Some(foreign), true));
            }
            Op::Kill9 | Op::Sigterm => {
                let what = self.system.fault(rng, matches!(op, Op::Sigterm)).await;
                if what.contains(DATA_LOST) {
                    self.history.losses += 1;
                }
                self.log.push(format!("  ({what})"));
            }
            Op::CrashPublishing => {
                // A keyed publish in flight when the process it reached dies: acknowledged, or
                // unknown until a retry of its key settles it.
                self.next_n += 1;
                let n = self.next_n;
                self.history.keyed.push(n);
                let (key, topic) = (format!("key-{n}"), TOPICS[rng.usize(..TOPICS.len())]);
                self.history.tried(n);
                let api = self.system.publisher();
                let k = key.clone();
                let in_flight = tokio::spawn(async move { keyed_publish(api, &k, topic, n).await });
                tokio::time::sleep(Duration::from_micros(rng.u64(0..3000))).await;
                self.system.crash_publisher(rng).await;
                let answer = in_flight.await.unwrap();
                self.record_keyed(key, topic, n, answer);
            }
            Op::Stall(s, ms) => {
                let _ = self.subs[*s].send(Command::Stall(Duration::from_millis(*ms)));
            }
            Op::Legacy(topic) => {
                let (n, data) = self.data(topic);
                match self.system.publish_legacy(topic, &data).await {
                    Some(true) => {
                        self.history.legacy.insert(n, (topic, self.history.losses));
                    }
                    Some(false) => {
                        self.history.maybe.insert(n, topic.to_string());
                    }
                    None => {}
                }
            }
            Op::Pause(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
        }
    }
}

/// Event `n`'s data: its number, its topic and `padding` bytes.
fn data(n: u64, topic: &str, padding: usize) -> Value {
    match padding {
        0 => json!({ "n": n, "topic": topic }),
        _ => json!({ "n": n, "topic": topic, "pad": ".".repeat(padding) }),
    }
}

async fn keyed_publish(api: Api, key: &str, topic: &str, n: u64) -> anyhow::Result<Published> {
    let body = json!({ "data": data(n, topic, 0) }).to_string();
    api.publish_raw(topic, body, Some(key)).await
}

/// What one schedule did.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Operations run.
    pub operations: usize,
    /// Faults injected, by kind (process kills and restarts, backend restarts and pauses).
    pub faults: BTreeMap<String, usize>,
    /// Events read by subscribers and checked.
    pub events: usize,
    /// Events the final replay no longer had: removed by retention (or lost with a disk).
    pub removed: u64,
    /// Connections told `recovered:false` about their own ids (retention, a lost disk).
    pub not_recovered: usize,
    /// Keyed publishes answered with an error or not at all (each retried until answered).
    pub key_errors: usize,
    /// Keys answered anew after a storage loss took their record.
    pub forgotten: usize,
    /// Legacy Redis Stream entries a bridge brought in, checked once each.
    pub legacy: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.operations += other.operations;
        self.events += other.events;
        self.removed += other.removed;
        self.not_recovered += other.not_recovered;
        self.key_errors += other.key_errors;
        self.forgotten += other.forgotten;
        self.legacy += other.legacy;
        for (kind, n) in other.faults {
            *self.faults.entry(kind).or_default() += n;
        }
    }
}

/// A fault's kind: its description without the process number and the durations
/// (`MongoDB paused 120 ms` → `MongoDB paused`).
fn fault_kind(what: &str) -> String {
    let words: Vec<&str> = what
        .split(' ')
        .filter(|w| !w.chars().next().is_some_and(|c| c.is_ascii_digit()) && *w != "ms")
        .collect();
    let words = match words.as_slice() {
        [rest @ .., "for"] => rest,
        all => all,
    };
    words.join(" ")
}

/// A violation, and the log of the schedule that showed it (operations and the faults they
/// injected).
#[derive(Debug)]
struct Violation {
    what: String,
    log: String,
}

/// Runs `ops` (a schedule of `seed`, or part of one) against `system`: what it did, or the first
/// violation.
async fn run<S: System>(system: S, seed: u64, ops: &[Op]) -> Result<Tally, Violation> {
    let mut subs = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..SUBSCRIBERS {
        let (tx, rx) = mpsc::unbounded_channel();
        subs.push(tx);
        tasks.push(tokio::spawn(subscriber(
            FILTERS[i % FILTERS.len()],
            system.stream_base(i),
            rx,
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut run = Run {
        system,
        subs,
        history: History::default(),
        next_n: 0,
        last_key: None,
        unsettled: BTreeMap::new(),
        key_errors: 0,
        violations: Vec::new(),
        log: Vec::new(),
    };
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    for op in ops {
        run.log.push(format!("{op:?}"));
        run.apply(op, &mut rng).await;
    }
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    for line in &run.log {
        if let Some(what) = line.strip_prefix("  (").and_then(|l| l.strip_suffix(')'))
            && !what.starts_with("subscriber")
        {
            *faults.entry(fault_kind(what)).or_default() += 1;
        }
        if line == "CrashPublishing" {
            *faults.entry("crash while publishing".into()).or_default() += 1;
        }
        if line.starts_with("Stall") {
            *faults.entry("stalled reader".into()).or_default() += 1;
        }
    }
    // Settle the last key: its retry answers with the first id, or stores it once now.
    if run.last_key.is_some() {
        run.apply(&Op::RetryKey, &mut rng).await;
    }
    // Settle every key that got no answer: its retry must answer with the event its first
    // publish made, if any.
    for _ in 0..20 {
        if run.unsettled.is_empty() {
            break;
        }
        tokio::time::sleep(KEY_BACKOFF).await;
        let keys: Vec<_> = std::mem::take(&mut run.unsettled).into_iter().collect();
        for (key, (topic, n, _)) in keys {
            run.log.push(format!("(settle {key})"));
            run.keyed(key, topic, n).await;
        }
    }
    if let Some(key) = run.unsettled.keys().next() {
        run.violations
            .push(format!("key {key} is still answered with an error"));
    }
    // The bridge brings in what is left of the legacy entries; a last publish then puts the
    // head of the final replay after them.
    if !run.history.legacy.is_empty() {
        run.system.settle_legacy().await;
        run.log.push("(legacy entries settled)".into());
        let acked = run.history.acked.len();
        for _ in 0..20 {
            run.apply(&Op::Publish(TOPICS[0]), &mut rng).await;
            if run.history.acked.len() > acked {
                break;
            }
        }
    }
    // Let the subscribers catch up with the last acknowledged event, then stop them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for sub in &run.subs {
        let _ = sub.send(Command::Stop);
    }
    let mut all = Vec::new();
    for task in tasks {
        all.push(task.await.unwrap());
    }
    let log = run.log.join("\n");
    let fail = |what: String| {
        Err(Violation {
            what,
            log: log.clone(),
        })
    };
    if let Some(what) = run.violations.first() {
        return fail(what.clone());
    }

    // The final replay of everything, from before the first event, up to the newest event
    // anyone saw (acknowledged, or read by a subscriber after an unanswered publish).
    let seen = all
        .iter()
        .flatten()
        .flat_map(|session| session.events.iter().map(|(id, _, _)| *id));
    let ids: Vec<EventId> = run
        .history
        .acked
        .values()
        .map(|(id, _)| *id)
        .chain(seen)
        .collect();
    let Some(epoch) = ids.first().map(|id| id.epoch) else {
        return Ok(Tally {
            operations: ops.len(),
            faults,
            key_errors: run.key_errors,
            ..Tally::default()
        });
    };
    let head = ids.iter().map(|id| id.seq).max().unwrap_or(0);
    // A NATS that loses its disk (a single replica) loses what only JetStream held: events whose
    // publish was never acknowledged (the ingest died between JetStream and MongoDB, and the
    // archiver had not caught up). They may vanish after a subscriber read them, and a resume
    // from before one that vanished at the start of the history is honestly `expired`.
    // Acknowledged events never vanish (G1 below), and no id is handed out twice (G2).
    let disk_lost = run.log.iter().any(|l| l.contains("without its disk"));
    let retention = run.system.retention();
    let acked_seqs: std::collections::BTreeSet<u64> =
        run.history.acked.values().map(|(id, _)| id.seq).collect();
    let mut earliest = 1;
    let mut everything: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    if head > 0 {
        let mut stream = run
            .system
            .publisher()
            .stream(
                "/v1/stream?topic=%3E",
                Some(&EventId::new(epoch, 0).to_string()),
            )
            .await
            .unwrap();
        let verdict = stream.next().await;
        if let Ok(Some(ev)) = &verdict
            && ev.event == "herald.resume"
            && !ev.data.contains("\"recovered\":true")
        {
            let retained: Option<EventId> = serde_json::from_str::<Value>(&ev.data)
                .ok()
                .and_then(|v| v["earliest"].as_str()?.parse().ok());
            match retained {
                Some(first) if (disk_lost || retention) && ev.data.contains("\"expired\"") => {
                    earliest = first.seq;
                    if let Some(lost) = acked_seqs.range(..earliest).next()
                        && !retention
                    {
                        return fail(format!(
                            "G1: acknowledged {lost} is before the earliest retained {first}"
                        ));
                    }
                    stream = run
                        .system
                        .publisher()
                        .stream(
                            "/v1/stream?topic=%3E",
                            Some(&EventId::new(epoch, earliest - 1).to_string()),
                        )
                        .await
                        .unwrap();
                }
                _ => return fail(format!("the final replay was not recovered: {}", ev.data)),
            }
        } else if !matches!(&verdict, Ok(Some(ev)) if ev.event == "herald.resume") {
            return fail(format!("the final replay began with {verdict:?}"));
        }
        while everything.keys().next_back().copied().unwrap_or(0) < head {
            match stream.next().await {
                Ok(Some(ev)) if ev.event.starts_with("herald.") => {
                    if ev.event == "herald.resume" && !ev.data.contains("\"recovered\":true") {
                        return fail(format!("the final replay was not recovered: {}", ev.data));
                    }
                }
                Ok(Some(ev)) => {
                    let id: EventId = ev.id.parse().unwrap();
                    let data: Value = serde_json::from_str(&ev.data).unwrap();
                    let n = data["n"].as_u64().unwrap();
                    let topic = data["topic"].as_str().unwrap().to_owned();
                    if everything.insert(id.seq, (topic, n)).is_some() {
                        return fail(format!("the final replay sent {id} twice"));
                    }
                }
                other => return fail(format!("the final replay ended early: {other:?}")),
            }
        }
    }
    // G1: every acknowledged event is there, as published.
    for (n, (id, topic)) in &run.history.acked {
        if id.seq < earliest {
            continue; // removed by retention (checked against the verdict above)
        }
        match everything.get(&id.seq) {
            Some((t, m)) if t == topic && m == n => {}
            other => {
                return fail(format!(
                    "G1: acknowledged event n={n} {id} on {topic} is {other:?} in the replay"
                ));
            }
        }
    }
    // Every legacy entry Redis acknowledged came in once, on its topic (G1 and G5 through the
    // bridge; its idempotency record may go with a storage loss, like a key's).
    for (n, (topic, losses)) in &run.history.legacy {
        let copies: Vec<&String> = everything
            .values()
            .filter(|(_, m)| m == n)
            .map(|(t, _)| t)
            .collect();
        match copies.as_slice() {
            [t] if t == topic => {}
            [_, _, ..] if *losses < run.history.losses => {}
            // Gone with what retention removed (its id is unknown: Redis acknowledged it).
            [] if earliest > 1 => {}
            other => {
                return fail(format!(
                    "legacy entry n={n} on {topic} came into Herald as {other:?}"
                ));
            }
        }
    }
    // G5: a key's data is stored once.
    for n in &run.history.keyed {
        let copies = everything.values().filter(|(_, m)| m == n).count();
        if copies > 1 && run.history.lost_since_first_try(*n) {
            run.history.forgotten.insert(*n);
        } else if copies > 1 {
            return fail(format!("G5: keyed event n={n} stored {copies} times"));
        }
    }
    // Every event read by anyone is the one the replay has under its id (G2/G3).
    let mut events_checked = 0;
    let mut not_recovered = 0;
    for (s, sessions) in all.iter().enumerate() {
        let filter = TopicFilter::parse(FILTERS[s % FILTERS.len()].to_vec()).unwrap();
        for session in sessions {
            let mut previous: Option<EventId> = None;
            // What NATS lost with its disk, never acknowledged, read before it vanished.
            let vanished = |seq: u64| {
                disk_lost && !acked_seqs.contains(&seq) && !everything.contains_key(&seq)
            };
            for (id, topic, n) in &session.events {
                events_checked += 1;
                if id.epoch != epoch {
                    return fail(format!("subscriber {s} read {id} of another epoch"));
                }
                match everything.get(&id.seq) {
                    Some((t, m)) if t == topic && m == n => {}
                    None if vanished(id.seq) => {}
                    None if retention && id.seq < earliest => {}
                    other => {
                        return fail(format!(
                            "G2: subscriber {s} read {id} as n={n} on {topic}; the replay has {other:?}"
                        ));
                    }
                }
                if !filter.matches(topic) {
                    return fail(format!(
                        "subscriber {s} read {id} on {topic}, not its topics"
                    ));
                }
                if previous.is_some_and(|p| p.seq >= id.seq) {
                    return fail(format!("G3: subscriber {s} read {id} after {previous:?}"));
                }
                previous = Some(*id);
            }
            // G4: the verdict, and nothing missing after the resume point.
            let from: Option<EventId> = session.from.as_deref().and_then(|f| f.parse().ok());
            // Before the start of the history NATS lost with its disk: honestly not recovered.
            let before_loss = from.is_some_and(|f| f.epoch == epoch && f.seq + 1 < earliest);
            if session.from.is_some() {
                match (!session.foreign, session.recovered) {
                    (true, Some(false)) if before_loss => not_recovered += 1,
                    // Older than what retention kept by the end: honestly expired.
                    (true, Some(false))
                        if retention && from.is_some_and(|f| f.seq + 1 < earliest) =>
                    {
                        not_recovered += 1
                    }
                    (true, Some(false)) => {
                        return fail(format!(
                            "G4: subscriber {s} resuming from its own {:?} was not recovered",
                            session.from
                        ));
                    }
                    (false, Some(true)) => {
                        return fail(format!(
                            "G4: subscriber {s} resuming from foreign {:?} was told recovered",
                            session.from
                        ));
                    }
                    _ => {}
                }
            }
            let Some((last, _, _)) = session.events.last() else {
                continue;
            };
            let start = match (session.recovered, from) {
                (Some(true), Some(from)) => from.seq,
                // Live: from the first event read.
                _ => session.events[0].0.seq - 1,
            };
            let mut want: std::collections::BTreeSet<u64> = everything
                .range(start + 1..=last.seq)
                .filter(|(_, (t, _))| filter.matches(t))
                .map(|(seq, _)| *seq)
                .collect();
            // What retention removed by the end: the acknowledged events are still owed to a
            // connection that read past them; the others cannot be checked.
            let unknowable = |seq: u64| retention && seq < earliest && !acked_seqs.contains(&seq);
            if retention {
                want.extend(
                    run.history
                        .acked
                        .values()
                        .filter(|(id, t)| {
                            id.seq > start
                                && id.seq <= last.seq
                                && id.seq < earliest
                                && filter.matches(t)
                        })
                        .map(|(id, _)| id.seq),
                );
            }
            let want: Vec<u64> = want.into_iter().collect();
            let got: Vec<u64> = session
                .events
                .iter()
                .map(|(id, _, _)| id.seq)
                .filter(|&seq| !vanished(seq) && !unknowable(seq))
                .collect();
            if got != want {
                return fail(format!(
                    "G4: subscriber {s} (from {:?}, recovered {:?}) read {got:?}, wants {want:?}",
                    session.from, session.recovered
                ));
            }
        }
    }
    Ok(Tally {
        operations: ops.len(),
        faults,
        events: events_checked,
        removed: earliest - 1,
        not_recovered,
        key_errors: run.key_errors,
        forgotten: run.history.forgotten.len(),
        legacy: run.history.legacy.len(),
    })
}

/// Shrinks a failing schedule: drops ever smaller runs of operations while the rest still shows
/// a violation (any violation: the runs are real processes, so a schedule fails as timing lets
/// it, and what is printed is a schedule that did fail), each try against a fresh system from
/// `start`, for at most `HERALD_CHECKER_SHRINK_SECONDS` (default 300). Works on the positions
/// `kept` of the seed's whole schedule `all`, and answers the positions left.
async fn shrink<S, F, Fut>(
    start: &mut F,
    seed: u64,
    all: &[Op],
    mut kept: Vec<usize>,
    mut found: Violation,
) -> (Vec<usize>, Violation)
where
    S: System,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    let budget: u64 = std::env::var("HERALD_CHECKER_SHRINK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(budget);
    let mut chunk = kept.len() / 2;
    while chunk >= 1 {
        let mut i = 0;
        while i < kept.len() {
            if tokio::time::Instant::now() >= deadline {
                return (kept, found);
            }
            let end = (i + chunk).min(kept.len());
            let candidate: Vec<usize> = kept[..i].iter().chain(&kept[end..]).copied().collect();
            match run(start().await, seed, &pick(all, &candidate)).await {
                Err(violation) => {
                    eprintln!(
                        "checker: still failing with {} operations: {}",
                        candidate.len(),
                        violation.what
                    );
                    (kept, found) = (candidate, violation);
                }
                Ok(_) => i += chunk,
            }
        }
        chunk /= 2;
    }
    (kept, found)
}

/// The operations of `all` at positions `kept`.
fn pick(all: &[Op], kept: &[usize]) -> Vec<Op> {
    kept.iter().map(|&i| all[i].clone()).collect()
}

/// Positions as ranges: `0-4,7,9-99`.
fn ranges(kept: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < kept.len() {
        let mut j = i;
        while j + 1 < kept.len() && kept[j + 1] == kept[j] + 1 {
            j += 1;
        }
        out.push(match j == i {
            true => kept[i].to_string(),
            false => format!("{}-{}", kept[i], kept[j]),
        });
        i = j + 1;
    }
    out.join(",")
}

/// The positions of a schedule of `len` operations to run: `HERALD_CHECKER_KEEP` (ranges as
/// [`ranges`] prints them, to run a shrunk schedule again), or all of them.
fn kept(len: usize) -> Vec<usize> {
    match std::env::var("HERALD_CHECKER_KEEP") {
        Ok(spec) => parse_ranges(&spec, len).unwrap_or_else(|| {
            panic!("HERALD_CHECKER_KEEP={spec}: want positions below {len}, as 0-4,7,9-99")
        }),
        Err(_) => (0..len).collect(),
    }
}

/// The positions `spec` names (as [`ranges`] prints them), if all are below `len`.
fn parse_ranges(spec: &str, len: usize) -> Option<Vec<usize>> {
    let mut kept = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (from, to) = part.split_once('-').unwrap_or((part, part));
        let (from, to) = (from.parse::<usize>().ok()?, to.parse::<usize>().ok()?);
        if from > to || to >= len {
            return None;
        }
        kept.extend(from..=to);
    }
    kept.sort_unstable();
    kept.dedup();
    Some(kept)
}

/// The seeds to run: `HERALD_CHECKER_SEED` alone (with `HERALD_CHECKER_KEEP`, only those
/// positions of its schedule), or `HERALD_CHECKER_SCHEDULES` (default 4) new
/// ones.
pub fn seeds() -> Vec<u64> {
    let schedules: u64 = std::env::var("HERALD_CHECKER_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    match std::env::var("HERALD_CHECKER_SEED") {
        Ok(seed) => vec![seed.parse().expect("HERALD_CHECKER_SEED is a number")],
        Err(_) => {
            let first = fastrand::u64(..1 << 32);
            (first..first + schedules).collect()
        }
    }
}

/// Runs every seed of [`seeds`] against a fresh system from `start`, printing each seed and the
/// totals (`what` names the system).
pub async fn run_all<S, F, Fut>(what: &str, mut start: F)
where
    S: System,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    let seeds = seeds();
    let mut total = Tally::default();
    for &seed in &seeds {
        eprintln!("checker ({what}): seed {seed} (HERALD_CHECKER_SEED={seed} replays it)");
        let all = schedule(seed);
        let kept = kept(all.len());
        let (system, ops) = (start().await, pick(&all, &kept));
        let ran = std::panic::AssertUnwindSafe(run(system, seed, &ops));
        let outcome = match futures_util::FutureExt::catch_unwind(ran).await {
            Ok(outcome) => outcome,
            // A run that panicked (an answer the checker does not expect, a fault that could not
            // be done): the panic and its backtrace are printed; say it once more after them.
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                eprintln!(
                    "checker ({what}): seed {seed}: the run panicked: {message} \
                     (HERALD_CHECKER_SEED={seed} replays it)"
                );
                std::panic::resume_unwind(panic);
            }
        };
        match outcome {
            Ok(tally) => total.add(tally),
            Err(violation) => {
                eprintln!(
                    "checker ({what}): seed {seed}: {}; shrinking",
                    violation.what
                );
                let (shrunk, found) = shrink(&mut start, seed, &all, kept.clone(), violation).await;
                eprintln!(
                    "seed {seed}: {}\nschedule, shrunk from {} to {} operations \
                     (HERALD_CHECKER_SEED={seed} HERALD_CHECKER_KEEP={} runs it again; the fault \
                     and subscriber lines show what the last failing run did):\n{}",
                    found.what,
                    kept.len(),
                    shrunk.len(),
                    ranges(&shrunk),
                    found.log
                );
                // The violation once more as the test's last words, with no backtrace after
                // them (`resume_unwind` skips the panic hook): a CI log cut to its head and tail
                // still shows it.
                let last = format!(
                    "checker ({what}): seed {seed}: {} (HERALD_CHECKER_SEED={seed} \
                     HERALD_CHECKER_KEEP={} runs the shrunk schedule)",
                    found.what,
                    ranges(&shrunk)
                );
                eprintln!("{last}");
                std::panic::resume_unwind(Box::new(last));
            }
        }
    }
    eprintln!(
        "checker ({what}): {} schedules, {} operations, {} faults ({:?}), {} events read and checked, {} removed by retention or a lost disk, {} own-id resumes honestly not recovered, {} keyed publishes answered with an error and retried, {} keys answered anew after a storage loss took their record, {} legacy Redis entries bridged once each, 0 violations",
        seeds.len(),
        total.operations,
        total.faults.values().sum::<usize>(),
        total.faults,
        total.events,
        total.removed,
        total.not_recovered,
        total.key_errors,
        total.forgotten,
        total.legacy
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shrunk_schedule_prints_as_ranges_that_parse_back() {
        let kept = vec![0, 1, 2, 4, 7, 8, 99];
        assert_eq!(ranges(&kept), "0-2,4,7-8,99");
        assert_eq!(parse_ranges(&ranges(&kept), 100), Some(kept));
        assert_eq!(parse_ranges("", 100), Some(vec![]));
        assert_eq!(parse_ranges("5-3", 100), None);
        assert_eq!(parse_ranges("0-100", 100), None);
        assert_eq!(parse_ranges("x", 100), None);
    }
}
