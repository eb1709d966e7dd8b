//! The scenarios. Each opens its subscribers, publishes numbered messages, waits until every
//! subscriber has every message (or until nothing has arrived for `stall`), and reports delivery
//! (missing, duplicate, out of order), speed, and the server's CPU time per delivery, so that a
//! fast but lossy result cannot pass.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::{sync::watch, task::JoinSet};

use crate::{
    http::Url,
    procfs::{self, Procs, own_cpu},
    publish::{self, Counters, Plan},
    sub::{self, Progress, Spec, Tracker},
};

/// A server under test.
#[derive(Debug, Clone)]
pub struct Server {
    /// Its name in reports.
    pub name: String,
    /// The stream URL; `{topic}` and `{i}` (the subscriber's index) are replaced.
    pub subscribe: Url,
    /// Extra stream request headers.
    pub subscribe_headers: Vec<(String, String)>,
    /// How to publish.
    pub publish: publish::Target,
    /// Its processes, for CPU time and RSS.
    pub procs: Procs,
    /// Streams per HTTP/2 connection (cleartext, prior knowledge); 0: one HTTP/1.1 connection
    /// per stream.
    pub http2_streams: u64,
}

/// Scenario parameters.
#[derive(Debug, Clone)]
pub struct Options {
    /// Subscribers.
    pub subscribers: u64,
    /// Messages.
    pub messages: u64,
    /// Messages per second (0: as fast as the server takes them).
    pub rate: f64,
    /// Publishers.
    pub concurrency: u64,
    /// Messages per publish request, where the server has a batch URL.
    pub batch: u64,
    /// The topic (channel).
    pub topic: String,
    /// Connections opened at a time.
    pub connect_wave: u64,
    /// Source addresses for subscriber connections, used in turn.
    pub sources: Vec<IpAddr>,
    /// Give up when nothing has arrived for this long.
    pub stall: Duration,
    /// Wait after opening connections before measuring.
    pub settle: Duration,
    /// The reconnection delay when a server sends no `retry:`.
    pub default_retry: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            subscribers: 1000,
            messages: 2000,
            rate: 0.0,
            concurrency: 1,
            batch: 1,
            topic: "bench".into(),
            connect_wave: 100,
            sources: Vec::new(),
            stall: Duration::from_secs(10),
            settle: Duration::from_millis(300),
            default_retry: Duration::from_secs(3),
        }
    }
}

/// The longest a resume waits for the servers to go quiet before it measures.
pub const QUIET_AT_MOST: Duration = Duration::from_secs(30);

/// Publish→receive latency, ms.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// One run's result: one JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: String,
    /// The server.
    pub server: String,
    /// Subscribers asked for.
    pub subscribers: u64,
    /// Subscribers whose first connection succeeded.
    pub connected: u64,
    /// Messages published (asked for).
    pub messages: u64,
    /// Messages per second asked for (0: max).
    pub rate: f64,
    /// Deliveries expected (subscribers × messages, for the messages each should get).
    pub expected: u64,
    /// Distinct deliveries.
    pub delivered: u64,
    /// Expected deliveries that never came.
    pub missing: u64,
    /// Deliveries of a message a subscriber already had.
    pub duplicates: u64,
    /// Deliveries after a later message of the same publisher.
    pub out_of_order: u64,
    /// Publish requests that failed.
    pub publish_errors: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Reconnections.
    pub reconnects: u64,
    /// Measured span, s.
    pub elapsed_s: f64,
    /// Deliveries per second over `elapsed_s`.
    pub deliveries_per_s: f64,
    /// Publishes acknowledged per second (publish scenario).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publishes_per_s: Option<f64>,
    /// Server CPU time over the measured span, s.
    pub server_cpu_s: f64,
    /// Server CPU per delivery, µs.
    pub server_cpu_us_per_delivery: f64,
    /// The same, by server process name (a deployment's processes apart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_delivery_by_process: Option<BTreeMap<String, f64>>,
    /// The load generator's own CPU time, s.
    pub client_cpu_s: f64,
    /// Latency percentiles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// Publish→2xx percentiles (latency): the request and its durable commit, which every
    /// delivery's latency includes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_latency: Option<Latency>,
    /// Server RSS per open connection, bytes (idle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_connection: Option<f64>,
    /// The same, by server process name (idle; a deployment's processes apart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_connection_by_process: Option<BTreeMap<String, f64>>,
    /// Server RSS with the connections open, bytes (idle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// Time from reconnecting (resume) or from the kill (storm) until the last subscriber had
    /// every message published before, s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_s: Option<f64>,
    /// Each subscriber's time from the kill until it had caught up, ms (storm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_each: Option<Latency>,
    /// Connections the kernel dropped at a full listen queue during the run, machine-wide
    /// (storm): each one is a client whose TCP retries its handshake a second or more later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_drops: Option<u64>,
    /// CPU time by server process name from the kill until every subscriber had caught up, s
    /// (storm): what the surviving processes spent on the storm, replays and live deliveries
    /// together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm_cpu_s_by_process: Option<BTreeMap<String, f64>>,
    /// Replayed events per second (resume).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_events_per_s: Option<f64>,
    /// How long the servers took to go quiet after the missed messages were published, before
    /// the measured replay (resume; at most [`QUIET_AT_MOST`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiet_wait_s: Option<f64>,
    /// Subscribers that caught up (resume, storm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caught_up: Option<u64>,
    /// Delivery was complete: nothing missing, duplicated or out of order, every subscriber
    /// connected, every publish acknowledged.
    pub ok: bool,
}

impl Report {
    /// One readable line.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{:<8} {:<22} {} subs × {} msgs: {:.0} deliveries/s, {:.2} µs server CPU/delivery",
            self.scenario,
            self.server,
            self.connected,
            self.messages,
            self.deliveries_per_s,
            self.server_cpu_us_per_delivery
        );
        if let Some(by) = &self.server_cpu_us_per_delivery_by_process {
            let each: Vec<String> = by
                .iter()
                .map(|(name, c)| format!("{name} {c:.2}"))
                .collect();
            s += &format!(" ({})", each.join(", "));
        }
        if let Some(l) = self.latency {
            s += &format!(
                ", latency p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            );
        }
        if let Some(l) = self.ack_latency {
            s += &format!(
                " (publish answered: p50 {:.2} p99 {:.2} ms)",
                l.p50_ms, l.p99_ms
            );
        }
        if let Some(r) = self.rss_per_connection {
            s += &format!(", {:.0} B RSS/connection", r);
        }
        if let Some(by) = self
            .rss_per_connection_by_process
            .as_ref()
            .filter(|b| b.len() > 1)
        {
            let each: Vec<String> = by
                .iter()
                .map(|(name, r)| format!("{name} {r:.0}"))
                .collect();
            s += &format!(" ({})", each.join(", "));
        }
        if let Some(p) = self.publishes_per_s {
            s += &format!(", {p:.0} publishes/s");
        }
        if let Some(c) = self.catch_up_s {
            s += &format!(", caught up in {c:.3} s");
        }
        if let Some(r) = self.catch_up_events_per_s {
            s += &format!(" ({r:.0} events/s)");
        }
        if let Some(w) = self.quiet_wait_s {
            s += &format!(" after {w:.1} s for the servers to go quiet");
        }
        if let Some(l) = self.catch_up_each {
            s += &format!(
                " (each: p50 {:.0} p90 {:.0} p99 {:.0} max {:.0} ms)",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            );
        }
        if let Some(d) = self.listen_drops {
            s += &format!(", {d} listen drops");
        }
        if let Some(by) = &self.storm_cpu_s_by_process {
            let each: Vec<String> = by
                .iter()
                .map(|(name, cpu)| format!("{name} {cpu:.2}"))
                .collect();
            s += &format!(", CPU s until caught up: {}", each.join(", "));
        }
        s += &format!(
            "; missing {} dup {} out-of-order {} failures {} {}",
            self.missing,
            self.duplicates,
            self.out_of_order,
            self.connect_failures + self.publish_errors,
            if self.ok { "OK" } else { "NOT OK" }
        );
        s
    }
}

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// N subscribers, M messages at rate R or max: deliveries/s.
    Fanout,
    /// N subscribers, M messages at a fixed rate: publish→receive percentiles.
    Latency,
    /// N connections held: server RSS per connection, then one message to all.
    Idle,
    /// Subscribers miss M messages and resume with Last-Event-ID: catch-up time.
    Resume,
    /// M messages as fast as the server takes them (batches where it has a batch URL), one
    /// subscriber checking them: publishes/s.
    Publish,
    /// N subscribers whose server is killed (`kill` hook) while messages flow at rate R; they
    /// reconnect through the load balancer: time until all have caught up.
    Storm,
}

impl Scenario {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fanout => "fanout",
            Self::Latency => "latency",
            Self::Idle => "idle",
            Self::Resume => "resume",
            Self::Publish => "publish",
            Self::Storm => "storm",
        }
    }
}

/// Subscribers in flight.
struct Crowd {
    tasks: JoinSet<Tracker>,
    progress: Arc<Progress>,
    stop: watch::Sender<bool>,
}

impl Crowd {
    /// Opens `n` subscribers in waves; returns once each has connected or failed.
    async fn open(
        server: &Server,
        opts: &Options,
        n: u64,
        expected: u64,
        latency: bool,
        reconnect: bool,
        resume_from: Option<&[Tracker]>,
    ) -> anyhow::Result<Self> {
        let progress = Progress::new(expected);
        if resume_from.is_some() {
            // Caught up means: every message up to the last one published.
            progress.threshold.store(expected, Ordering::Relaxed);
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let wave = opts.connect_wave.max(1);
        let h2 = (server.http2_streams > 0)
            .then(|| sub::H2Pool::new(server.subscribe.addr, server.http2_streams, n));
        for i in 0..n {
            let target = server
                .subscribe
                .target
                .replace("{topic}", &opts.topic)
                .replace("{i}", &i.to_string());
            let tracker = match resume_from {
                Some(t) => t[i as usize].clone(),
                None => Tracker::new(opts.concurrency, latency),
            };
            let spec = Spec {
                url: server.subscribe.with_target(target),
                headers: server.subscribe_headers.clone(),
                local: (!opts.sources.is_empty())
                    .then(|| opts.sources[i as usize % opts.sources.len()]),
                reconnect,
                last_event_id: resume_from.map(|_| tracker.last_event_id.clone()),
                default_retry: opts.default_retry,
                h2: h2.as_ref().map(|pool| (Arc::clone(pool), i)),
            };
            tasks.spawn(sub::run(
                spec,
                tracker,
                Arc::clone(&progress),
                stop_rx.clone(),
            ));
            if (i + 1) % wave == 0 || i + 1 == n {
                // A subscriber that reconnects retries a refused connect: wait until it is in,
                // or it would start late and miss the first messages. One that does not is done.
                let deadline = Instant::now() + Duration::from_secs(30);
                let settled = |p: &Progress| {
                    let failed = if reconnect {
                        0
                    } else {
                        p.failures.load(Ordering::Relaxed)
                    };
                    p.connected.load(Ordering::Relaxed) + failed
                };
                while settled(&progress) < i + 1 {
                    if Instant::now() > deadline {
                        bail!(
                            "{}: {} of {} subscribers connected after 30 s",
                            server.name,
                            progress.connected.load(Ordering::Relaxed),
                            i + 1
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
        Ok(Self {
            tasks,
            progress,
            stop,
        })
    }

    /// Waits until `count` distinct deliveries have arrived, or nothing for `stall`.
    async fn wait_delivered(&self, count: u64, stall: Duration) -> bool {
        self.wait(|p| p.delivered.load(Ordering::Relaxed) >= count, stall)
            .await
    }

    async fn wait(&self, done: impl Fn(&Progress) -> bool, stall: Duration) -> bool {
        let mut last = (u64::MAX, Instant::now());
        loop {
            if done(&self.progress) {
                return true;
            }
            let p = &self.progress;
            let now = p.delivered.load(Ordering::Relaxed)
                + p.reconnects.load(Ordering::Relaxed)
                + p.caught_up.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > stall {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn finish(mut self) -> anyhow::Result<(Vec<Tracker>, Arc<Progress>)> {
        let _ = self.stop.send(true);
        let mut out = Vec::new();
        while let Some(t) = self.tasks.join_next().await {
            out.push(t.context("subscriber task")?);
        }
        Ok((out, self.progress))
    }
}

/// Totals over trackers, for messages `1..=total`.
struct Tally {
    delivered: u64,
    missing: u64,
    duplicates: u64,
    out_of_order: u64,
    last_at: Option<Instant>,
}

fn tally(trackers: &[Tracker], total: u64) -> Tally {
    Tally {
        delivered: trackers.iter().map(|t| t.received).sum(),
        missing: trackers.iter().map(|t| t.missing(total)).sum(),
        duplicates: trackers.iter().map(|t| t.duplicates).sum(),
        out_of_order: trackers.iter().map(|t| t.out_of_order).sum(),
        last_at: trackers.iter().filter_map(|t| t.last_at).max(),
    }
}

/// The percentiles of every subscriber's delivery latencies.
fn latencies(trackers: &mut [Tracker]) -> Option<Latency> {
    let all = trackers
        .iter_mut()
        .flat_map(|t| std::mem::take(&mut t.latencies_us))
        .map(|us| f64::from(us) / 1000.0)
        .collect();
    percentiles(all)
}

/// The percentiles of `all`, in ms.
fn percentiles(mut all: Vec<f64>) -> Option<Latency> {
    if all.is_empty() {
        return None;
    }
    all.sort_unstable_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Some(Latency {
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        max_ms: *all.last().expect("non-empty"),
    })
}

/// A measured span: what the report names, and the CPU readings at its start.
struct Base<'a> {
    scenario: Scenario,
    server: &'a Server,
    opts: &'a Options,
    subscribers: u64,
    start: Instant,
    /// Each server process's CPU time at the start.
    server_cpu: crate::procfs::CpuByPid,
    client_cpu: Duration,
}

/// CPU time spent in a span: the server's (in all and by process name), the load generator's.
struct Spent {
    server: Duration,
    server_by_name: BTreeMap<String, Duration>,
    client: Duration,
}

impl<'a> Base<'a> {
    /// Starts measuring now.
    fn start(scenario: Scenario, server: &'a Server, opts: &'a Options, subscribers: u64) -> Self {
        Self {
            scenario,
            server,
            opts,
            subscribers,
            server_cpu: server.procs.cpu_by_pid(),
            client_cpu: own_cpu(),
            start: Instant::now(),
        }
    }

    /// CPU time spent since the start, counted per process (see
    /// [`crate::procfs::Procs::cpu_by_name_since`]).
    fn spent(&self) -> Spent {
        let server_by_name = self.server.procs.cpu_by_name_since(&self.server_cpu);
        Spent {
            server: server_by_name.values().sum(),
            server_by_name,
            client: own_cpu().saturating_sub(self.client_cpu),
        }
    }

    fn report(
        &self,
        tally: &Tally,
        progress: &Progress,
        counters: &Counters,
        expected: u64,
        elapsed: Duration,
        spent: Spent,
    ) -> Report {
        let (cpu, client_cpu) = (spent.server, spent.client);
        let elapsed_s = elapsed.as_secs_f64();
        let connected = progress.connected.load(Ordering::Relaxed);
        let publish_errors = counters.errors.load(Ordering::Relaxed);
        let connect_failures = progress.failures.load(Ordering::Relaxed);
        let per_delivery = |cpu: Duration| {
            if tally.delivered > 0 {
                cpu.as_secs_f64() * 1e6 / tally.delivered as f64
            } else {
                0.0
            }
        };
        Report {
            scenario: self.scenario.name().into(),
            server: self.server.name.clone(),
            subscribers: self.subscribers,
            connected,
            messages: self.opts.messages,
            rate: self.opts.rate,
            expected,
            delivered: tally.delivered,
            missing: tally.missing,
            duplicates: tally.duplicates,
            out_of_order: tally.out_of_order,
            publish_errors,
            connect_failures,
            reconnects: progress.reconnects.load(Ordering::Relaxed),
            elapsed_s,
            deliveries_per_s: if elapsed_s > 0.0 {
                tally.delivered as f64 / elapsed_s
            } else {
                0.0
            },
            publishes_per_s: None,
            server_cpu_s: cpu.as_secs_f64(),
            server_cpu_us_per_delivery: per_delivery(cpu),
            server_cpu_us_per_delivery_by_process: (spent.server_by_name.len() > 1).then(|| {
                spent
                    .server_by_name
                    .iter()
                    .map(|(name, &cpu)| (name.clone(), per_delivery(cpu)))
                    .collect()
            }),
            client_cpu_s: client_cpu.as_secs_f64(),
            latency: None,
            ack_latency: None,
            quiet_wait_s: None,
            rss_per_connection: None,
            rss_per_connection_by_process: None,
            rss_bytes: None,
            catch_up_s: None,
            catch_up_each: None,
            listen_drops: None,
            storm_cpu_s_by_process: None,
            catch_up_events_per_s: None,
            caught_up: None,
            ok: tally.missing == 0
                && tally.duplicates == 0
                && tally.out_of_order == 0
                && tally.delivered == expected
                && publish_errors == 0
                && connected == self.subscribers,
        }
    }
}

/// The storm's fault: kills the process serving the subscribers (and may first bring up the one
/// they will move to). The storm is timed from when it returns.
pub type Kill = Box<
    dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>
        + Send,
>;

/// Runs `scenario` against `server`; `kill` is the storm's fault.
pub async fn run(
    scenario: Scenario,
    server: &Server,
    opts: &Options,
    kill: Option<Kill>,
) -> anyhow::Result<Report> {
    match scenario {
        Scenario::Fanout => flow(scenario, server, opts, false).await,
        Scenario::Latency => flow(scenario, server, opts, true).await,
        Scenario::Idle => idle(server, opts).await,
        Scenario::Resume => resume(server, opts).await,
        Scenario::Publish => {
            let opts = Options {
                subscribers: 1,
                ..opts.clone()
            };
            flow(scenario, server, &opts, false).await
        }
        Scenario::Storm => {
            storm(
                server,
                opts,
                kill.context("the storm scenario needs a process to kill (--kill-pid)")?,
            )
            .await
        }
    }
}

/// Fan-out, latency and publish: subscribe, publish, wait for everything.
async fn flow(
    scenario: Scenario,
    server: &Server,
    opts: &Options,
    latency: bool,
) -> anyhow::Result<Report> {
    let n = opts.subscribers;
    let m = opts.messages;
    let crowd = Crowd::open(server, opts, n, m, latency, false, None).await?;
    tokio::time::sleep(opts.settle).await;
    let counters = Arc::new(Counters::default());
    let base = Base::start(scenario, server, opts, n);
    let start = base.start;
    let plan = Plan {
        first: 1,
        count: m,
        rate: opts.rate,
        concurrency: opts.concurrency,
        batch: opts.batch,
    };
    let publisher = {
        let target = server.publish.clone();
        let topic = opts.topic.clone();
        let counters = Arc::clone(&counters);
        tokio::spawn(async move { publish::run(&target, &topic, plan, counters).await })
    };
    let outcome = publisher.await.context("publisher")??;
    crowd.wait_delivered(n * m, opts.stall).await;
    let spent = base.spent();
    let (mut trackers, progress) = crowd.finish().await?;
    let t = tally(&trackers, m);
    let end = t.last_at.unwrap_or_else(Instant::now).max(start);
    let mut report = base.report(&t, &progress, &counters, n * m, end - start, spent);
    if latency {
        report.latency = latencies(&mut trackers);
        let acks = std::mem::take(&mut *counters.ack_us.lock().expect("not poisoned"));
        report.ack_latency =
            percentiles(acks.into_iter().map(|us| f64::from(us) / 1000.0).collect());
    }
    if scenario == Scenario::Publish {
        report.publishes_per_s = Some(outcome.acked as f64 / outcome.elapsed.as_secs_f64());
    }
    Ok(report)
}

/// Idle: hold `subscribers` connections, read the server's RSS, then deliver one message to all.
async fn idle(server: &Server, opts: &Options) -> anyhow::Result<Report> {
    let n = opts.subscribers;
    let rss0 = server.procs.sample().rss;
    let by0 = server.procs.sample_by_name();
    let crowd = Crowd::open(server, opts, n, 1, false, false, None).await?;
    tokio::time::sleep(opts.settle.max(Duration::from_secs(2))).await;
    let rss1 = server.procs.sample().rss;
    let by1 = server.procs.sample_by_name();
    let counters = Arc::new(Counters::default());
    let idle_opts = Options {
        messages: 1,
        ..opts.clone()
    };
    let base = Base::start(Scenario::Idle, server, &idle_opts, n);
    let start = base.start;
    let plan = Plan {
        first: 1,
        count: 1,
        rate: 0.0,
        concurrency: 1,
        batch: 1,
    };
    publish::run(&server.publish, &opts.topic, plan, Arc::clone(&counters)).await?;
    crowd.wait_delivered(n, opts.stall).await;
    let spent = base.spent();
    let (trackers, progress) = crowd.finish().await?;
    let t = tally(&trackers, 1);
    let end = t.last_at.unwrap_or_else(Instant::now).max(start);
    let mut report = base.report(&t, &progress, &counters, n, end - start, spent);
    let connected = progress.connected.load(Ordering::Relaxed).max(1);
    report.rss_per_connection = Some(rss1.saturating_sub(rss0) as f64 / connected as f64);
    report.rss_per_connection_by_process = Some(
        by1.iter()
            .map(|(name, now)| {
                let before = by0.get(name).map_or(0, |s| s.rss);
                let grown = now.rss.saturating_sub(before);
                (name.clone(), grown as f64 / connected as f64)
            })
            .collect(),
    );
    report.rss_bytes = Some(rss1);
    Ok(report)
}

/// Resume: each subscriber gets message 1, disconnects, misses `messages`, and reconnects with
/// its Last-Event-ID.
async fn resume(server: &Server, opts: &Options) -> anyhow::Result<Report> {
    let n = opts.subscribers;
    let missed = opts.messages;
    let total = missed + 1;
    let counters = Arc::new(Counters::default());
    let one = Plan {
        first: 1,
        count: 1,
        rate: 0.0,
        concurrency: 1,
        batch: 1,
    };
    let crowd = Crowd::open(server, opts, n, total, false, false, None).await?;
    publish::run(&server.publish, &opts.topic, one, Arc::clone(&counters)).await?;
    if !crowd.wait_delivered(n, opts.stall).await {
        bail!(
            "{}: the first message did not reach every subscriber",
            server.name
        );
    }
    let (first, _) = crowd.finish().await?;
    let plan = Plan {
        first: 2,
        count: missed,
        rate: 0.0,
        concurrency: opts.concurrency,
        batch: opts.batch,
    };
    publish::run(&server.publish, &opts.topic, plan, Arc::clone(&counters)).await?;
    // The replay is measured from quiet servers, as the ceiling read after it is.
    let waited = server.procs.quiet(QUIET_AT_MOST).await;
    let base = Base::start(Scenario::Resume, server, opts, n);
    let start = base.start;
    // Trackers carried over already count message 1.
    let crowd = Crowd::open(server, opts, n, total, false, false, Some(&first)).await?;
    crowd
        .wait(|p| p.caught_up.load(Ordering::Relaxed) >= n, opts.stall)
        .await;
    let spent = base.spent();
    let (trackers, progress) = crowd.finish().await?;
    let caught_up = trackers.iter().filter(|t| t.caught_up_at.is_some()).count() as u64;
    let t = tally(&trackers, total);
    let end = trackers
        .iter()
        .filter_map(|t| t.caught_up_at)
        .max()
        .unwrap_or_else(Instant::now)
        .max(start);
    // Deliveries in the measured span: the missed messages.
    let replayed = Tally {
        delivered: t.delivered.saturating_sub(n),
        ..t
    };
    let mut report = base.report(
        &replayed,
        &progress,
        &counters,
        n * missed,
        end - start,
        spent,
    );
    report.connected = report.connected.min(n);
    report.ok &= caught_up == n;
    report.catch_up_s = Some((end - start).as_secs_f64());
    report.catch_up_events_per_s = Some(missed as f64 / (end - start).as_secs_f64());
    report.caught_up = Some(caught_up);
    report.quiet_wait_s = Some(waited.as_secs_f64());
    Ok(report)
}

/// Storm: messages flow at `rate`; the serving process is killed; every subscriber reconnects
/// (through the load balancer, with Last-Event-ID after the server's `retry:`). Measured: from the
/// kill until the last subscriber has every message up to one published after the kill.
async fn storm(server: &Server, opts: &Options, kill: Kill) -> anyhow::Result<Report> {
    let n = opts.subscribers;
    let m = opts.messages;
    anyhow::ensure!(opts.rate > 0.0, "the storm scenario needs a --rate");
    let crowd = Crowd::open(server, opts, n, m, false, true, None).await?;
    tokio::time::sleep(opts.settle).await;
    let counters = Arc::new(Counters::default());
    let base = Base::start(Scenario::Storm, server, opts, n);
    let start = base.start;
    let plan = Plan {
        first: 1,
        count: m,
        rate: opts.rate,
        concurrency: 1,
        batch: 1,
    };
    let publisher = {
        let target = server.publish.clone();
        let topic = opts.topic.clone();
        let counters = Arc::clone(&counters);
        tokio::spawn(async move { publish::run(&target, &topic, plan, counters).await })
    };
    // A quarter of the messages flow before the kill.
    tokio::time::sleep(Duration::from_secs_f64(m as f64 / opts.rate / 4.0)).await;
    let drops = procfs::listen_drops();
    kill().await?;
    let killed_at = Instant::now();
    let cpu_at_kill = server.procs.cpu_by_pid();
    // Caught up: has every message up to the first one published after the kill.
    let threshold = counters.started.load(Ordering::Relaxed) + 1;
    anyhow::ensure!(
        threshold < m,
        "too few messages for a storm: raise --messages"
    );
    crowd.progress.threshold.store(threshold, Ordering::Relaxed);
    crowd
        .wait(|p| p.caught_up.load(Ordering::Relaxed) >= n, opts.stall)
        .await;
    let storm_cpu: BTreeMap<String, f64> = server
        .procs
        .cpu_by_name_since(&cpu_at_kill)
        .into_iter()
        .map(|(name, cpu)| (name, cpu.as_secs_f64()))
        .collect();
    publisher.await.context("publisher")??;
    crowd.wait_delivered(n * m, opts.stall).await;
    let spent = base.spent();
    let (trackers, progress) = crowd.finish().await?;
    let caught_up = trackers.iter().filter(|t| t.caught_up_at.is_some()).count() as u64;
    let t = tally(&trackers, m);
    let end = t.last_at.unwrap_or_else(Instant::now).max(start);
    let mut report = base.report(&t, &progress, &counters, n * m, end - start, spent);
    let last = trackers
        .iter()
        .filter_map(|t| t.caught_up_at)
        .max()
        .unwrap_or(killed_at);
    report.catch_up_s = Some((last - killed_at).as_secs_f64());
    let each: Vec<f64> = trackers
        .iter()
        .filter_map(|t| t.caught_up_at)
        .map(|at| at.saturating_duration_since(killed_at).as_secs_f64() * 1e3)
        .collect();
    report.catch_up_each = percentiles(each);
    report.listen_drops = drops
        .zip(procfs::listen_drops())
        .map(|(a, b)| b.saturating_sub(a));
    report.storm_cpu_s_by_process = Some(storm_cpu);
    report.caught_up = Some(caught_up);
    report.ok &= caught_up == n;
    Ok(report)
}
