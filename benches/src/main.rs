//! `herald-bench`: drives an SSE server with numbered messages and checks every delivery.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_bench::{
    Options, Scenario, Server, http::Url, procfs::Procs, publish::Target, scenario,
};

#[derive(Debug, Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for SSE servers: Herald, nchan, pushpin or any server with an HTTP publish endpoint.",
    long_about = "Load generator for SSE servers: Herald, nchan, pushpin or any server with an HTTP \
publish endpoint.\n\n\
Subscribers speak plain HTTP/1.1 and parse the stream by the WHATWG rules, as EventSource does \
(Accept: text/event-stream, Last-Event-ID and retry: on reconnect). Every message carries its \
number and publish time as the JSON members \"n\" and \"t\" (the templates' {n} and {t}); every \
scenario checks that each subscriber got each message exactly once and in each publisher's order, \
and reports the server's CPU per delivery (from /proc, for the --server-pid process trees).\n\n\
Output: one JSON line per run on stdout, a readable summary on stderr. The exit status is 1 when \
delivery was not complete.\n\n\
The whole side-by-side suite (Herald standalone, Herald distributed, nchan, pushpin and the \
physical-limit reference, started from the repository's configs) is benches/run."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// N subscribers, M messages at --rate (0: as fast as the server answers): deliveries/s.
    Fanout(Run),
    /// N subscribers, M messages at a fixed --rate: publish→receive p50/p90/p99/max.
    Latency(Run),
    /// N connections held open: server RSS per connection; then one message to all of them.
    Idle(Run),
    /// Subscribers get message 1, disconnect, miss M messages and resume with Last-Event-ID:
    /// catch-up time and rate.
    Resume(Run),
    /// M messages as fast as the server takes them (in --batch-size batches where --batch-url is
    /// given), one subscriber checking them: publishes/s.
    Publish(Run),
    /// Messages flow at --rate to N reconnecting subscribers; --kill-pid is killed (SIGKILL)
    /// after a quarter of them: time until every subscriber has resumed and caught up.
    Storm(Run),
    /// The physical-limit reference server: writes each published body as one pre-encoded SSE
    /// frame to every open stream, with no other logic.
    Reference {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// A minimal GRIP origin for pushpin: holds streams on a channel, replays from its own memory
    /// after Last-Event-ID, and publishes through pushpin's HTTP publish endpoint.
    PushpinOrigin {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// pushpin's publish endpoint.
        #[arg(long, default_value = "http://127.0.0.1:5561/publish/")]
        publish: String,
    },
}

#[derive(Debug, Args)]
struct Run {
    /// The server's name in the report.
    #[arg(long, default_value = "server")]
    name: String,
    /// Stream URL; {topic} and {i} (the subscriber's index) are replaced.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/stream?topic={topic}")]
    subscribe_url: String,
    /// Publish URL; {topic} is replaced.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/topics/{topic}/events")]
    publish_url: String,
    /// Publish body; {n}, {t} and {topic} are replaced. The data the subscribers receive must hold
    /// "n":{n} and "t":{t}.
    #[arg(long, default_value = r#"{"data":{"n":{n},"t":{t}}}"#)]
    publish_body: String,
    /// Batch publish URL (Herald: http://HOST/v1/events).
    #[arg(long)]
    batch_url: Option<String>,
    /// One batch item; items are joined into a JSON array.
    #[arg(
        long,
        default_value = r#"{"topic":"{topic}","data":{"n":{n},"t":{t}}}"#
    )]
    batch_item: String,
    /// Messages per batch request (with --batch-url).
    #[arg(long, default_value_t = 1)]
    batch_size: u64,
    /// A publish request header, `Name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// A stream request header, `Name: value` (repeatable).
    #[arg(long = "subscribe-header", value_name = "NAME: VALUE")]
    subscribe_headers: Vec<String>,
    /// Subscribers (connections).
    #[arg(long, short = 'n', default_value_t = 1000)]
    subscribers: u64,
    /// Messages.
    #[arg(long, short = 'm', default_value_t = 2000)]
    messages: u64,
    /// Messages per second over all publishers; 0 for as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Publishers, each sending its share one request at a time.
    #[arg(long, default_value_t = 1)]
    concurrency: u64,
    /// Topic or channel.
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Connections opened at a time.
    #[arg(long, default_value_t = 100)]
    connect_wave: u64,
    /// Spread connections over this many loopback source addresses (127.0.0.1, .2, …): one
    /// address has ~28,000 ephemeral ports.
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Give up when nothing has arrived for this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stall: Duration,
    /// Wait after the connections are open, before measuring.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// A server process whose tree's CPU and RSS are measured (repeatable).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Streams over HTTP/2 (cleartext with prior knowledge, as Herald's `--h2c true` takes it),
    /// this many to a connection; 0: one HTTP/1.1 connection per stream.
    #[arg(long, default_value_t = 0)]
    http2_streams: u64,
    /// The server honours Idempotency-Key (Herald does): send one with every publish and retry
    /// failed publishes without duplicates.
    #[arg(long)]
    idempotent: bool,
    /// storm: the process to kill.
    #[arg(long)]
    kill_pid: Option<u32>,
}

fn header(h: &str) -> anyhow::Result<(String, String)> {
    let (n, v) = h
        .split_once(':')
        .with_context(|| format!("header {h:?}: expected `Name: value`"))?;
    Ok((n.trim().to_owned(), v.trim().to_owned()))
}

async fn run(scenario: Scenario, args: Run) -> anyhow::Result<bool> {
    let mut headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    for h in &args.headers {
        headers.push(header(h)?);
    }
    let server = Server {
        name: args.name.clone(),
        subscribe: Url::parse(&args.subscribe_url).await?,
        subscribe_headers: args
            .subscribe_headers
            .iter()
            .map(|h| header(h))
            .collect::<anyhow::Result<_>>()?,
        publish: Target {
            url: Url::parse(&args.publish_url).await?,
            body: args.publish_body.clone(),
            batch_url: match &args.batch_url {
                Some(u) => Some(Url::parse(u).await?),
                None => None,
            },
            batch_item: Some(args.batch_item.clone()),
            headers,
            idempotent: args.idempotent,
        },
        procs: Procs::new(args.server_pids.iter().copied()),
        http2_streams: args.http2_streams,
    };
    let opts = Options {
        subscribers: args.subscribers,
        messages: args.messages,
        rate: args.rate,
        concurrency: args.concurrency,
        batch: args.batch_size,
        topic: args.topic.clone(),
        connect_wave: args.connect_wave,
        sources: (1..=args.sources.max(1))
            .map(|i| std::net::IpAddr::from([127, 0, 0, i]))
            .collect(),
        stall: args.stall,
        settle: args.settle,
        ..Options::default()
    };
    let kill = args.kill_pid.map(|pid| {
        Box::new(move || {
            Box::pin(async move { kill9(pid) })
                as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
        }) as scenario::Kill
    });
    let report = scenario::run(scenario, &server, &opts, kill).await?;
    println!("{}", serde_json::to_string(&report)?);
    eprintln!("{}", report.summary());
    Ok(report.ok)
}

fn kill9(pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -9 {pid} failed");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fanout(a) => run(Scenario::Fanout, a).await,
        Command::Latency(a) => run(Scenario::Latency, a).await,
        Command::Idle(a) => run(Scenario::Idle, a).await,
        Command::Resume(a) => run(Scenario::Resume, a).await,
        Command::Publish(a) => run(Scenario::Publish, a).await,
        Command::Storm(a) => run(Scenario::Storm, a).await,
        Command::Reference { listen } => {
            herald_bench::reference::serve(listen).await.map(|()| true)
        }
        Command::PushpinOrigin { listen, publish } => herald_bench::origin::serve(listen, &publish)
            .await
            .map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
