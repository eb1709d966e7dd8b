//! The side-by-side benchmark (not a test): every scenario of `herald-bench` against Herald
//! standalone, Herald distributed (herald-ingest → NATS JetStream → herald-gateway, MongoDB), nchan
//! and pushpin, and the physical-limit reference, alternating, in one run on this machine; then
//! the ratios. Resume also runs on two distributed gateways without a window of recent events,
//! one replaying from JetStream, one from MongoDB.
//!
//! Run it with `benches/run` (installs the peers, builds in release mode, runs this). Options
//! through the environment (defaults are the issue's targets, within this machine's open-files
//! limit):
//!
//! | variable | default | |
//! |---|---|---|
//! | `BENCH_SCENARIOS` | `fanout,latency,idle,resume,publish,storm` | which scenarios |
//! | `BENCH_SERVERS` | `standalone,distributed,nchan,pushpin,reference` | which servers; also `standalone-h2` (streams over HTTP/2, 100 to a connection: fan-out, latency, idle) |
//! | `BENCH_ROUNDS` | 1 | runs of each scenario per server (the median is compared) |
//! | `BENCH_FANOUT_SUBSCRIBERS` × `BENCH_FANOUT_MESSAGES` | 1000 × 2000 | fan-out at max rate |
//! | `BENCH_FANOUT_PUBLISHERS` | 4 | publishers in the fan-out (each one request at a time) |
//! | `BENCH_LATENCY_SUBSCRIBERS`, `BENCH_LATENCY_RATE`, `BENCH_LATENCY_MESSAGES` | 1000, 1000/s, 5000 | |
//! | `BENCH_IDLE_CONNECTIONS` | 15000 | held connections (one process may open 20,000 files here) |
//! | `BENCH_RESUME_MISSED` | 100000 | events a resuming client missed |
//! | `BENCH_PUBLISH_MESSAGES`, `BENCH_PUBLISH_BATCH`, `BENCH_PUBLISH_CONCURRENCY` | 200000, 100, 4 | |
//! | `BENCH_STORM_CLIENTS`, `BENCH_STORM_RATE` | 9000, 200/s | clients on the killed gateway |
//! | `BENCH_SCALE_IDLE_CONNECTIONS` | 9000 | idle streams through nginx on the `gateways-N` servers |
//! | `BENCH_SERVER_CPUS`, `BENCH_CLIENT_CPUS` | unset | `taskset` CPU lists: the servers' processes on some CPUs, the load generator on others |
//! | `BENCH_IDEMPOTENCY_KEYS` | 1 | `0`: Herald's publishes carry no `Idempotency-Key` |
//!
//! The capacity model's check (`docs/capacity.md`): `BENCH_SERVERS=gateways-1,gateways-2,gateways-3
//! BENCH_SCENARIOS=fanout,idle,storm` runs the distributed mode with N gateways behind nginx
//! (streams spread round-robin, publishes straight to ingest), then fits the gateways' CPU per
//! delivery to the model and prints each run beside it. Its storm kills one more gateway, which
//! every client was on, and the N take the reconnects: resumes per second and the survivors' CPU
//! per resume as N grows.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::Context;
use herald_bench::{
    Options, Report, Scenario, Server, http::Url, procfs::Procs, publish::Target, scenario,
};
use herald_tests::{
    Herald,
    cluster::{
        Deployment, Mongo, Nats, Nginx, Service, free_port, herald_binary, nginx_bin, nginx_dir,
        wait_port,
    },
};
use tempfile::TempDir;
use tokio::process::{Child, Command};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A fresh topic for every run: message numbers start at 1 each time.
fn topic() -> String {
    static RUN: AtomicU64 = AtomicU64::new(0);
    format!("bench{}", RUN.fetch_add(1, Ordering::Relaxed))
}

fn json_headers() -> Vec<(String, String)> {
    vec![("Content-Type".to_owned(), "application/json".to_owned())]
}

/// Herald's URLs on `sub_base` (streams) and `pub_base` (publishes).
async fn herald_server(
    name: &str,
    sub_base: &str,
    pub_base: &str,
    pids: Vec<u32>,
) -> anyhow::Result<Server> {
    Ok(Server {
        name: name.to_owned(),
        subscribe: Url::parse(&format!("{sub_base}/v1/stream?topic={{topic}}")).await?,
        subscribe_headers: Vec::new(),
        publish: Target {
            url: Url::parse(&format!("{pub_base}/v1/topics/{{topic}}/events")).await?,
            body: r#"{"data":{"n":{n},"t":{t}}}"#.to_owned(),
            batch_url: Some(Url::parse(&format!("{pub_base}/v1/events")).await?),
            batch_item: Some(r#"{"topic":"{topic}","data":{"n":{n},"t":{t}}}"#.to_owned()),
            headers: json_headers(),
            // Every publish carries an Idempotency-Key, as a client that retries safely sends;
            // `BENCH_IDEMPOTENCY_KEYS=0` sends none (what the keys cost).
            idempotent: env_u64("BENCH_IDEMPOTENCY_KEYS", 1) != 0,
        },
        procs: Procs::new(pids),
        http2_streams: 0,
    })
}

/// A server with a raw body (nchan, pushpin's origin, the reference): data is the body itself.
async fn raw_server(
    name: &str,
    subscribe: String,
    publish: String,
    pids: Vec<u32>,
) -> anyhow::Result<Server> {
    Ok(Server {
        name: name.to_owned(),
        subscribe: Url::parse(&subscribe).await?,
        subscribe_headers: Vec::new(),
        publish: Target {
            url: Url::parse(&publish).await?,
            body: r#"{"n":{n},"t":{t}}"#.to_owned(),
            batch_url: None,
            batch_item: None,
            headers: json_headers(),
            idempotent: false,
        },
        procs: Procs::new(pids),
        http2_streams: 0,
    })
}

/// Renders a config template from `benches/peers` into `dir`.
fn render(template: &str, dir: &Path, vars: &[(&str, String)]) -> anyhow::Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../benches/peers")
        .join(template);
    let mut text =
        std::fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
    for (k, v) in vars {
        text = text.replace(&format!("{{{k}}}"), v);
    }
    let out = dir.join(Path::new(template).file_name().context("template name")?);
    std::fs::write(&out, text)?;
    Ok(out)
}

/// Waits until a stream request on `port` is answered: pushpin's condure listens before its proxy
/// is connected, and requests taken in between are never answered.
async fn wait_stream(port: u16, path: &str) -> anyhow::Result<()> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..60 {
        let attempt = async {
            let mut stream = herald_bench::http::connect(addr, None).await?;
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
            );
            tokio::io::AsyncWriteExt::write_all(&mut stream, req.as_bytes()).await?;
            herald_bench::http::read_head(&mut stream, &mut Vec::new()).await
        };
        if let Ok(Ok(head)) = tokio::time::timeout(Duration::from_millis(500), attempt).await
            && head.status == 200
        {
            return Ok(());
        }
    }
    anyhow::bail!("no stream answered on port {port} within 30 s")
}

fn spawn(cmd: &mut Command) -> anyhow::Result<Child> {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

/// A process killed with all its descendants on drop (pushpin's runner leaves its helpers
/// running when it is killed alone).
struct Tree(Child);

impl Drop for Tree {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            for pid in Procs::new([pid]).pids() {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Everything a server needs kept alive; dropped, it stops.
#[allow(dead_code)]
enum Keep {
    Herald(Box<Herald>, TempDir),
    Cluster(Box<(Nats, Mongo)>, Vec<Service>),
    Processes(Vec<Tree>, TempDir),
    Balanced(Box<(Nats, Mongo)>, Vec<Service>, Box<Nginx>),
}

/// Herald's connection limits for the suite: above the 15,000 idle connections (the defaults,
/// 10,000 streams and 12,000 TCP connections, are a production pod's).
const LIMITS: &[&str] = &[
    "--max-connections",
    "19500",
    "--max-tcp-connections",
    "19500",
];

async fn start(name: &str) -> anyhow::Result<(Server, Keep)> {
    match name {
        "standalone" => {
            let dir = tempfile::tempdir()?;
            let herald = Herald::start(dir.path(), LIMITS).await?;
            let server =
                herald_server(name, &herald.base, &herald.base, vec![herald.pid()]).await?;
            Ok((server, Keep::Herald(Box::new(herald), dir)))
        }
        // The streams over HTTP/2, as many to a connection as Herald allows (--h2-max-streams,
        // 100), as a browser's tabs share one; publishes over HTTP/1.1.
        "standalone-h2" => {
            let dir = tempfile::tempdir()?;
            let herald = Herald::start(dir.path(), &[LIMITS, &["--h2c", "true"]].concat()).await?;
            let mut server =
                herald_server(name, &herald.base, &herald.base, vec![herald.pid()]).await?;
            server.http2_streams = 100;
            Ok((server, Keep::Herald(Box::new(herald), dir)))
        }
        "distributed" | "distributed-jetstream" | "distributed-mongodb" => {
            let nats = Nats::start().await?;
            let mongo = Mongo::start().await?;
            // The MongoDB tier: JetStream keeps 1 MiB, so a long resume replays from MongoDB.
            let shared: &[&str] = if name == "distributed-mongodb" {
                &["--stream-max-bytes", "1MiB"]
            } else {
                &[]
            };
            // The tier variants keep no window of recent events: every replay reads the tier.
            let window = if name == "distributed" { "64MiB" } else { "0" };
            let dep = Deployment::new(&nats, &mongo, shared);
            let ingest = dep.ingest(&[], &[]).await?;
            let gateway = dep
                .gateway(&[LIMITS, &["--replay-window", window]].concat())
                .await?;
            let pids = [ingest.pid(), gateway.pid(), nats.pid(), mongo.pid()]
                .into_iter()
                .flatten()
                .collect();
            let server = herald_server(
                name,
                &format!("http://{}", gateway.addr()),
                &format!("http://{}", ingest.addr()),
                pids,
            )
            .await?;
            Ok((
                server,
                Keep::Cluster(Box::new((nats, mongo)), vec![ingest, gateway]),
            ))
        }
        _ if name.starts_with("gateways-") => {
            let g: usize = name["gateways-".len()..]
                .parse()
                .ok()
                .filter(|g| *g > 0)
                .with_context(|| format!("{name}: gateways-N takes a count of gateways"))?;
            let nats = Nats::start().await?;
            let mongo = Mongo::start().await?;
            let dep = Deployment::new(&nats, &mongo, &[]);
            let ingest = dep.ingest(&[], &[]).await?;
            let mut services = vec![ingest];
            for _ in 0..g {
                services.push(dep.gateway(LIMITS).await?);
            }
            let gateways: Vec<&str> = services[1..].iter().map(Service::addr).collect();
            let ingest_addr = services[0].addr().to_owned();
            // Two workers: each proxied stream takes two of a worker's ~10,000 files.
            let lb = Nginx::start_sized(&gateways, &[&ingest_addr], 2, 9900).await?;
            let pids = services
                .iter()
                .map(Service::pid)
                .chain([nats.pid(), mongo.pid(), lb.pid()])
                .flatten()
                .collect();
            // Streams through nginx, spread round-robin; publishes straight to ingest.
            let server =
                herald_server(name, &lb.base, &format!("http://{ingest_addr}"), pids).await?;
            Ok((
                server,
                Keep::Balanced(Box::new((nats, mongo)), services, Box::new(lb)),
            ))
        }
        "nchan" => {
            let dir = nginx_dir()?;
            let port = free_port();
            let conf = render(
                "nchan.conf",
                dir.path(),
                &[
                    ("dir", dir.path().display().to_string()),
                    ("port", port.to_string()),
                ],
            )?;
            let child = spawn(
                Command::new(nginx_bin())
                    .arg("-p")
                    .arg(dir.path())
                    .arg("-c")
                    .arg(&conf)
                    .args(["-e", "stderr", "-g", "daemon off;"]),
            )?;
            wait_port(port).await?;
            let pid = child.id().context("nginx pid")?;
            let server = raw_server(
                name,
                format!("http://127.0.0.1:{port}/sub/{{topic}}"),
                format!("http://127.0.0.1:{port}/pub/{{topic}}"),
                vec![pid],
            )
            .await?;
            Ok((server, Keep::Processes(vec![Tree(child)], dir)))
        }
        "pushpin" => {
            let dir = tempfile::tempdir()?;
            for sub in ["run", "log"] {
                std::fs::create_dir_all(dir.path().join(sub))?;
            }
            let (port, publish_port, origin_port) = (free_port(), free_port(), free_port());
            let origin = spawn(Command::new(herald_binary("herald-bench")).args([
                "pushpin-origin",
                "--listen",
                &format!("127.0.0.1:{origin_port}"),
                "--publish",
                &format!("http://127.0.0.1:{publish_port}/publish/"),
            ]))?;
            let vars = [
                ("dir", dir.path().display().to_string()),
                ("port", port.to_string()),
                ("publish_port", publish_port.to_string()),
                ("origin", format!("127.0.0.1:{origin_port}")),
            ];
            render("pushpin/routes", dir.path(), &vars)?;
            let conf = render("pushpin/pushpin.conf", dir.path(), &vars)?;
            let pushpin = spawn(Command::new("pushpin").arg("--config").arg(&conf))?;
            wait_port(origin_port).await?;
            wait_port(port).await?;
            wait_port(publish_port).await?;
            wait_stream(port, "/stream/ready").await?;
            let pids = vec![
                pushpin.id().context("pushpin pid")?,
                origin.id().context("origin pid")?,
            ];
            let server = raw_server(
                name,
                format!("http://127.0.0.1:{port}/stream/{{topic}}"),
                format!("http://127.0.0.1:{origin_port}/publish/{{topic}}"),
                pids,
            )
            .await?;
            Ok((
                server,
                Keep::Processes(vec![Tree(pushpin), Tree(origin)], dir),
            ))
        }
        "reference" => {
            let dir = tempfile::tempdir()?;
            let port = free_port();
            let child = spawn(Command::new(herald_binary("herald-bench")).args([
                "reference",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ]))?;
            wait_port(port).await?;
            let pid = child.id().context("reference pid")?;
            let server = raw_server(
                name,
                format!("http://127.0.0.1:{port}/sub"),
                format!("http://127.0.0.1:{port}/pub"),
                vec![pid],
            )
            .await?;
            Ok((server, Keep::Processes(vec![Tree(child)], dir)))
        }
        other => anyhow::bail!("unknown server {other:?}"),
    }
}

/// Which servers take part in a scenario.
fn applies(scenario: Scenario, server: &str) -> bool {
    match scenario {
        // The capacity model's check: fan-out CPU, idle memory and the storm as gateways are
        // added.
        _ if server.starts_with("gateways-") => {
            matches!(
                scenario,
                Scenario::Fanout | Scenario::Idle | Scenario::Storm
            )
        }
        // Streams over HTTP/2: what a stream and a delivery cost.
        _ if server.ends_with("-h2") => {
            matches!(
                scenario,
                Scenario::Fanout | Scenario::Latency | Scenario::Idle
            )
        }
        // The reference keeps nothing (no resume) and has no batch endpoint.
        Scenario::Resume | Scenario::Publish => server != "reference",
        // A load balancer over several gateways: Herald distributed only.
        Scenario::Storm => server == "distributed",
        Scenario::Fanout | Scenario::Latency | Scenario::Idle => {
            !matches!(server, "distributed-jetstream" | "distributed-mongodb")
        }
    }
}

fn options(scenario: Scenario, server: &str) -> Options {
    let base = Options {
        topic: topic(),
        ..Options::default()
    };
    match scenario {
        Scenario::Fanout => Options {
            subscribers: env_u64("BENCH_FANOUT_SUBSCRIBERS", 1000),
            messages: env_u64("BENCH_FANOUT_MESSAGES", 2000),
            // Four publishers keep messages in flight; one waits for each answer.
            concurrency: env_u64("BENCH_FANOUT_PUBLISHERS", 4),
            ..base
        },
        Scenario::Latency => Options {
            subscribers: env_u64("BENCH_LATENCY_SUBSCRIBERS", 1000),
            messages: env_u64("BENCH_LATENCY_MESSAGES", 5000),
            rate: env_u64("BENCH_LATENCY_RATE", 1000) as f64,
            // Enough publishers to hold the rate while the machine is busy: a publisher waits for
            // each answer, and the time is taken when a request is sent.
            concurrency: 8,
            ..base
        },
        // Through nginx, each stream takes two of its two workers' 19,800 files.
        Scenario::Idle if server.starts_with("gateways-") => Options {
            subscribers: env_u64("BENCH_SCALE_IDLE_CONNECTIONS", 9000),
            messages: 1,
            connect_wave: 100,
            stall: Duration::from_secs(30),
            ..base
        },
        Scenario::Idle => Options {
            subscribers: env_u64("BENCH_IDLE_CONNECTIONS", 15000),
            messages: 1,
            // pushpin answers 500/502 to some connects with more than ~128 in flight.
            connect_wave: 100,
            stall: Duration::from_secs(30),
            ..base
        },
        Scenario::Resume => Options {
            subscribers: 1,
            messages: env_u64("BENCH_RESUME_MISSED", 100_000),
            // Herald takes the missed events in batches (its default --max-batch, 100); nchan and
            // pushpin one by one.
            batch: 100,
            concurrency: if server.starts_with("distributed") || server == "standalone" {
                1
            } else {
                4
            },
            stall: Duration::from_secs(30),
            ..base
        },
        Scenario::Publish => Options {
            messages: env_u64("BENCH_PUBLISH_MESSAGES", 200_000),
            batch: env_u64("BENCH_PUBLISH_BATCH", 100),
            concurrency: env_u64("BENCH_PUBLISH_CONCURRENCY", 4),
            stall: Duration::from_secs(30),
            ..base
        },
        Scenario::Storm => Options {
            subscribers: env_u64("BENCH_STORM_CLIENTS", 9000),
            rate: env_u64("BENCH_STORM_RATE", 200) as f64,
            messages: env_u64("BENCH_STORM_RATE", 200) * 8,
            connect_wave: 500,
            stall: Duration::from_secs(20),
            ..base
        },
    }
}

/// The storm: gateways behind nginx, every client on the first, which is killed. The others
/// (`survivors` of them) run from the start, as the surviving gateways of a deployment do, and
/// take the reconnects between them.
async fn storm(name: &str, survivors: usize, opts: &Options) -> anyhow::Result<Report> {
    let nats = Nats::start().await?;
    let mongo = Mongo::start().await?;
    let dep = Deployment::new(&nats, &mongo, &[]);
    let ingest = dep.ingest(&[], &[]).await?;
    // A short retry: browsers reconnect after the server's `retry:`.
    let gw = [LIMITS, &["--retry", "500ms"]].concat();
    let a = dep.gateway(&gw).await?;
    let mut rest = Vec::with_capacity(survivors);
    for _ in 0..survivors {
        rest.push(dep.gateway(&gw).await?);
    }
    // Every client on `a`: the balancer lists only `a` while they connect. Each proxied stream
    // takes two of a worker's ~10,000 files, and the kernel does not spread connections evenly
    // over the workers: with two, the busier one ran out ("worker_connections are not enough")
    // and its refused clients made the storm's tail. Four leave room.
    let lb = std::sync::Arc::new(Nginx::start_sized(&[a.addr()], &[ingest.addr()], 4, 9900).await?);
    // Measured: the processes that live through the storm (`a`'s CPU would vanish from the sums
    // when it dies).
    let pids: Vec<u32> = [ingest.pid(), nats.pid(), mongo.pid(), lb.pid()]
        .into_iter()
        .chain(rest.iter().map(Service::pid))
        .flatten()
        .collect();
    let server = herald_server(name, &lb.base, &format!("http://{}", ingest.addr()), pids).await?;
    let a_pid = a.pid().context("gateway pid")?;
    pin_servers(&Procs::new([a_pid]));
    pin_servers(&server.procs);
    let upstreams: Vec<String> = [&a]
        .into_iter()
        .chain(&rest)
        .map(|s| s.addr().to_owned())
        .collect();
    let ingest_addr = ingest.addr().to_owned();
    let balancer = std::sync::Arc::clone(&lb);
    // The fault: the balancer lists them all (as it did all along in production), then `a` dies
    // (SIGKILL); nginx sends the reconnects that fail on `a` to the others.
    let kill: scenario::Kill = Box::new(move || {
        Box::pin(async move {
            let upstreams: Vec<&str> = upstreams.iter().map(String::as_str).collect();
            balancer.set_upstreams(&upstreams, &[&ingest_addr]).await?;
            let status = std::process::Command::new("kill")
                .args(["-9", &a_pid.to_string()])
                .status()?;
            anyhow::ensure!(status.success(), "kill -9 {a_pid} failed");
            Ok(())
        })
    });
    let report = scenario::run(Scenario::Storm, &server, opts, Some(kill)).await;
    drop((a, rest, ingest, lb));
    report
}

/// The CPUs `BENCH_SERVER_CPUS` names (a `taskset` list, such as `0`), for every thread of the
/// servers' processes; the load generator keeps to `BENCH_CLIENT_CPUS`. Unset, both share every
/// CPU.
fn pin_servers(procs: &Procs) {
    if let Ok(cpus) = std::env::var("BENCH_SERVER_CPUS") {
        for pid in procs.pids() {
            pin(pid, &cpus);
        }
    }
}

/// Every thread of `pid` (threads it starts later inherit it) onto `cpus`.
fn pin(pid: u32, cpus: &str) {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("taskset -a -p -c {cpus} {pid} failed: {status:?}");
    }
}

/// The storm's surviving gateways: `G` on `gateways-G`, one on `distributed`.
fn survivors(server: &str) -> usize {
    server
        .strip_prefix("gateways-")
        .and_then(|g| g.parse().ok())
        .unwrap_or(1)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let scenarios: Vec<Scenario> = env_list(
        "BENCH_SCENARIOS",
        "fanout,latency,idle,resume,publish,storm",
    )
    .iter()
    .map(|s| {
        <Scenario as clap::ValueEnum>::from_str(s, true)
            .map_err(|e| anyhow::anyhow!("BENCH_SCENARIOS: {e}"))
    })
    .collect::<anyhow::Result<_>>()?;
    let mut servers = env_list(
        "BENCH_SERVERS",
        "standalone,distributed,nchan,pushpin,reference",
    );
    if scenarios.contains(&Scenario::Resume) && servers.iter().any(|s| s == "distributed") {
        servers.push("distributed-jetstream".to_owned());
        servers.push("distributed-mongodb".to_owned());
    }
    let rounds = env_u64("BENCH_ROUNDS", 1).max(1);
    if let Ok(cpus) = std::env::var("BENCH_CLIENT_CPUS") {
        pin(std::process::id(), &cpus);
    }
    let mut reports: Vec<Report> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut ceilings: Vec<Ceiling> = Vec::new();
    for &scenario in &scenarios {
        for round in 0..rounds {
            // Alternate the order from round to round.
            let mut order: Vec<&String> = servers.iter().filter(|s| applies(scenario, s)).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for name in order {
                let mut opts = options(scenario, name);
                let result = if scenario == Scenario::Storm {
                    storm(name, survivors(name), &opts).await
                } else {
                    // Fresh servers for every run: no state carried between scenarios.
                    let (server, keep) = start(name).await?;
                    pin_servers(&server.procs);
                    opts.topic = topic();
                    let r = scenario::run(scenario, &server, &opts, None).await;
                    if scenario == Scenario::Resume && r.is_ok() {
                        server.procs.quiet(scenario::QUIET_AT_MOST).await;
                        match ceiling(name, &keep, &opts.topic, opts.messages).await {
                            Ok(Some(c)) => {
                                println!("{}", serde_json::to_string(&c)?);
                                eprintln!(
                                    "resume   {:<22} {} events: {:.0} events/s",
                                    c.server, c.events, c.events_per_s
                                );
                                ceilings.push(c);
                            }
                            Ok(None) => {}
                            Err(e) => errors.push(format!("resume ceiling after {name}: {e:#}")),
                        }
                    }
                    drop(keep);
                    r
                };
                match result {
                    Ok(mut report) => {
                        if name.starts_with("distributed-") {
                            report.server = name.clone();
                        }
                        println!("{}", serde_json::to_string(&report)?);
                        eprintln!("{}", report.summary());
                        reports.push(report);
                    }
                    Err(e) => {
                        eprintln!("{} {name}: FAILED: {e:#}", scenario.name());
                        errors.push(format!("{} {name}: {e:#}", scenario.name()));
                    }
                }
                // Let sockets in TIME_WAIT and the previous server's memory go.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    print_ratios(&reports);
    print_ceilings(&reports, &ceilings);
    print_scale(&reports);
    print_storm_scale(&reports);
    if !errors.is_empty() {
        println!("\nRuns that did not complete:");
        for e in &errors {
            println!("- {e}");
        }
        anyhow::bail!("{} runs did not complete", errors.len());
    }
    Ok(())
}

/// A tier's ceiling: the same events read by the backend's own client straight from the same
/// server, right after Herald replayed them.
#[derive(Debug, serde::Serialize)]
struct Ceiling {
    scenario: &'static str,
    /// `raw-jetstream` (an ordered consumer) or `raw-mongodb` (a driver cursor).
    server: &'static str,
    /// The Herald variant whose tier it bounds.
    tier_of: String,
    events: u64,
    elapsed_s: f64,
    events_per_s: f64,
}

/// After a resume on a tier variant, the tier's ceiling: `distributed-jetstream`'s events read
/// with a raw ordered consumer on the topic's subject, `distributed-mongodb`'s with a raw driver
/// cursor over the topic's documents (all of them: Herald read the newest ones from JetStream).
async fn ceiling(
    name: &str,
    keep: &Keep,
    topic: &str,
    events: u64,
) -> anyhow::Result<Option<Ceiling>> {
    let Keep::Cluster(servers, _) = keep else {
        return Ok(None);
    };
    let (nats, mongo) = &**servers;
    let start = std::time::Instant::now();
    let (server, read) = match name {
        "distributed-jetstream" => {
            use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
            use futures_util::StreamExt;
            let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
            let stream = js.get_stream("HERALD").await?;
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subject: format!("herald.events.{topic}"),
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await?;
            let pending = consumer.cached_info().num_pending;
            let mut messages = consumer.messages().await?;
            let mut read = 0;
            while read < pending {
                let message = messages
                    .next()
                    .await
                    .context("the ordered consumer ended")??;
                std::hint::black_box(&message.payload);
                read += 1;
            }
            ("raw-jetstream", read)
        }
        "distributed-mongodb" => {
            use mongodb::bson::{Document, doc};
            let client = mongodb::Client::with_uri_str(&mongo.uri).await?;
            let mut cursor = client
                .database(&mongo.database)
                .collection::<Document>("events")
                .find(doc! { "_id": { "$gt": 0_i64, "$lte": i64::MAX }, "topic": topic })
                .sort(doc! { "_id": 1 })
                .await?;
            let mut read = 0;
            while cursor.advance().await? {
                std::hint::black_box(cursor.deserialize_current()?);
                read += 1;
            }
            ("raw-mongodb", read)
        }
        _ => return Ok(None),
    };
    let elapsed_s = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        read >= events,
        "{server} read {read} events, fewer than the {events} published"
    );
    Ok(Some(Ceiling {
        scenario: "resume",
        server,
        tier_of: name.to_owned(),
        events: read,
        elapsed_s,
        events_per_s: read as f64 / elapsed_s,
    }))
}

/// The capacity model against the `gateways-N` runs (medians). Every gateway reads every event
/// from the feed and writes each of its own subscribers' deliveries, so with `S` subscribers
/// spread over `G` gateways the gateways together spend, per delivery,
/// `c(G) = c_del + G · c_feed / S`: a line in `G`, fitted here by least squares. Beside it, nginx's
/// share and the gateways' idle memory per stream, which the model holds constant in `G`.
fn print_scale(reports: &[Report]) {
    let median_of = |scenario: &str, server: &str, f: &dyn Fn(&Report) -> Option<f64>| {
        let values: Vec<f64> = reports
            .iter()
            .filter(|r| r.scenario == scenario && r.server == server)
            .filter_map(f)
            .collect();
        (!values.is_empty()).then(|| median(values))
    };
    let by_process = |r: &Report, name: &str| {
        r.server_cpu_us_per_delivery_by_process
            .as_ref()?
            .get(name)
            .copied()
    };
    let mut gateways: Vec<(usize, String)> = reports
        .iter()
        .filter_map(|r| {
            Some((
                r.server.strip_prefix("gateways-")?.parse().ok()?,
                r.server.clone(),
            ))
        })
        .collect();
    gateways.sort();
    gateways.dedup();
    // (G, subscribers, gateways' CPU µs per delivery)
    let points: Vec<(f64, f64, f64)> = gateways
        .iter()
        .filter_map(|(g, server)| {
            let cpu = median_of("fanout", server, &|r| by_process(r, "herald-gateway"))?;
            let subscribers = median_of("fanout", server, &|r| Some(r.connected as f64))?;
            Some((*g as f64, subscribers, cpu))
        })
        .collect();
    if points.is_empty() {
        return;
    }
    let n = points.len() as f64;
    let (mean_g, mean_c) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.2).sum::<f64>() / n,
    );
    let spread: f64 = points.iter().map(|p| (p.0 - mean_g).powi(2)).sum();
    let slope = if spread > 0.0 {
        points
            .iter()
            .map(|p| (p.0 - mean_g) * (p.2 - mean_c))
            .sum::<f64>()
            / spread
    } else {
        f64::NAN
    };
    let c_del = mean_c - slope * mean_g;
    let subscribers = points[0].1;
    println!();
    println!(
        "Capacity model (docs/capacity.md): the gateways' CPU per delivery fitted to \
         {c_del:.2} + {slope:.2} × G µs; read as the model's terms, c_del = {c_del:.2} µs per \
         delivery and c_feed = {:.0} µs per event per gateway ({subscribers:.0} subscribers)",
        slope * subscribers
    );
    println!(
        "| gateways | gateways' CPU µs/delivery | model | off by | nginx µs/delivery | idle RSS bytes/stream, gateways |"
    );
    println!("|---|---|---|---|---|---|");
    for (g, server) in &gateways {
        let cell =
            |v: Option<f64>, digits: usize| v.map_or("–".to_owned(), |v| format!("{v:.digits$}"));
        let measured = median_of("fanout", server, &|r| by_process(r, "herald-gateway"));
        let model = c_del + slope * *g as f64;
        let off = measured.map(|m| format!("{:+.1} %", (m / model - 1.0) * 100.0));
        let nginx = median_of("fanout", server, &|r| by_process(r, "nginx"));
        let rss = median_of("idle", server, &|r| {
            r.rss_per_connection_by_process
                .as_ref()?
                .get("herald-gateway")
                .copied()
        });
        println!(
            "| {g} | {} | {model:.2} | {} | {} | {} |",
            cell(measured, 2),
            off.unwrap_or_else(|| "–".to_owned()),
            cell(nginx, 2),
            cell(rss, 0),
        );
    }
}

/// The storm against the `gateways-N` runs (medians): with N surviving gateways taking the
/// reconnects, how long until every client caught up, resumes per second, and what each resume
/// cost the survivors and nginx in CPU, kill to caught up (replays and live deliveries together).
/// On one machine the cores do not grow with N; the model's assumption is that the CPU per
/// resume does not either, so that a deployment's storm rate is its gateway cores over it.
fn print_storm_scale(reports: &[Report]) {
    let mut runs: BTreeMap<usize, Vec<&Report>> = BTreeMap::new();
    for r in reports.iter().filter(|r| r.scenario == "storm") {
        if let Some(g) = r
            .server
            .strip_prefix("gateways-")
            .and_then(|g| g.parse().ok())
        {
            runs.entry(g).or_default().push(r);
        }
    }
    if runs.is_empty() {
        return;
    }
    println!();
    println!(
        "Storm (docs/capacity.md): every client on one gateway, killed; N others take the resumes"
    );
    println!(
        "| surviving gateways | clients | s until all caught up | resumes/s | gateways' CPU ms per resume | nginx CPU ms per resume | resumes/s per gateway core |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (g, rs) in &runs {
        let of = |f: &dyn Fn(&Report) -> Option<f64>| {
            let values: Vec<f64> = rs.iter().filter_map(|r| f(r)).collect();
            (!values.is_empty()).then(|| median(values))
        };
        let per_resume = |name: &str| {
            of(&|r| {
                let cpu = r.storm_cpu_s_by_process.as_ref()?.get(name)?;
                Some(cpu * 1e3 / r.caught_up.filter(|n| *n > 0)? as f64)
            })
        };
        let cell =
            |v: Option<f64>, digits: usize| v.map_or("–".to_owned(), |v| format!("{v:.digits$}"));
        let gateway = per_resume("herald-gateway");
        println!(
            "| {g} | {} | {} | {} | {} | {} | {} |",
            cell(of(&|r| r.caught_up.map(|n| n as f64)), 0),
            cell(of(&|r| r.catch_up_s), 2),
            cell(
                of(&|r| Some(r.caught_up? as f64 / r.catch_up_s.filter(|s| *s > 0.0)?)),
                0
            ),
            cell(gateway, 3),
            cell(per_resume("nginx"), 3),
            cell(gateway.map(|ms| 1e3 / ms), 0),
        );
    }
}

/// Each replay tier's rate beside its ceiling (medians).
fn print_ceilings(reports: &[Report], ceilings: &[Ceiling]) {
    if ceilings.is_empty() {
        return;
    }
    println!();
    println!(
        "| resume tier | Herald catch-up events/s | ceiling | ceiling events/s | Herald/ceiling |"
    );
    println!("|---|---|---|---|---|");
    for tier in ["distributed-jetstream", "distributed-mongodb"] {
        let herald: Vec<f64> = reports
            .iter()
            .filter(|r| r.scenario == "resume" && r.server == tier)
            .filter_map(|r| r.catch_up_events_per_s)
            .collect();
        let raw: Vec<&Ceiling> = ceilings.iter().filter(|c| c.tier_of == tier).collect();
        let Some(first) = raw.first() else { continue };
        let (herald, raw_rate) = (
            median(herald),
            median(raw.iter().map(|c| c.events_per_s).collect()),
        );
        println!(
            "| {tier} | {herald:.0} | {} | {raw_rate:.0} | {:.2}× |",
            first.server,
            herald / raw_rate
        );
    }
}

/// The medians per scenario and server, and Herald's ratios to nchan, pushpin and the reference.
fn print_ratios(reports: &[Report]) {
    let mut by: BTreeMap<(String, String), Vec<&Report>> = BTreeMap::new();
    for r in reports {
        by.entry((r.scenario.clone(), r.server.clone()))
            .or_default()
            .push(r);
    }
    let metric = |scenario: &str, server: &str, f: &dyn Fn(&Report) -> Option<f64>| {
        // A server that does not report the metric (nchan has no "Herald process") has no cell.
        by.get(&(scenario.to_owned(), server.to_owned()))
            .map(|rs| rs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            .filter(|values| !values.is_empty())
            .map(median)
    };
    type Metric<'a> = &'a dyn Fn(&Report) -> Option<f64>;
    // The Herald process alone (standalone's `herald`, distributed's `herald-gateway`), without
    // the deployment's NATS, MongoDB and ingest.
    let herald_alone = |r: &Report| {
        let by = r.rss_per_connection_by_process.as_ref()?;
        by.get("herald-gateway").or(by.get("herald")).copied()
    };
    let rows: [(&str, &str, Metric<'_>); 10] = [
        ("fanout", "deliveries/s", &|r| Some(r.deliveries_per_s)),
        ("fanout", "server CPU µs/delivery", &|r| {
            Some(r.server_cpu_us_per_delivery)
        }),
        ("latency", "p50 ms", &|r| r.latency.map(|l| l.p50_ms)),
        ("latency", "p99 ms", &|r| r.latency.map(|l| l.p99_ms)),
        ("latency", "publish answered p99 ms", &|r| {
            r.ack_latency.map(|l| l.p99_ms)
        }),
        ("idle", "RSS bytes/connection", &|r| r.rss_per_connection),
        (
            "idle",
            "RSS bytes/connection, Herald's process",
            &herald_alone,
        ),
        ("resume", "catch-up events/s", &|r| r.catch_up_events_per_s),
        ("publish", "publishes/s", &|r| r.publishes_per_s),
        ("storm", "s until all caught up", &|r| r.catch_up_s),
    ];
    let servers = [
        "standalone",
        "standalone-h2",
        "distributed",
        "distributed-jetstream",
        "distributed-mongodb",
        "nchan",
        "pushpin",
        "reference",
    ];
    // A server's column, by name.
    let at = |values: &[Option<f64>], name: &str| {
        servers
            .iter()
            .position(|s| *s == name)
            .and_then(|i| values[i])
    };
    println!();
    println!(
        "| scenario | metric | {} | standalone/nchan | distributed/nchan | standalone/pushpin | standalone/reference | HTTP/2 / HTTP/1.1 |",
        servers.join(" | ")
    );
    println!(
        "|---|---|{}---|---|---|---|---|",
        "---|".repeat(servers.len())
    );
    for (scenario, name, f) in rows {
        let values: Vec<Option<f64>> = servers.iter().map(|s| metric(scenario, s, f)).collect();
        let cell = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.3}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
            _ => "–".to_owned(),
        };
        println!(
            "| {scenario} | {name} | {} | {} | {} | {} | {} | {} |",
            values
                .iter()
                .map(|v| cell(*v))
                .collect::<Vec<_>>()
                .join(" | "),
            ratio(at(&values, "standalone"), at(&values, "nchan")),
            ratio(at(&values, "distributed"), at(&values, "nchan")),
            ratio(at(&values, "standalone"), at(&values, "pushpin")),
            ratio(at(&values, "standalone"), at(&values, "reference")),
            ratio(at(&values, "standalone-h2"), at(&values, "standalone")),
        );
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{} {}", r.scenario, r.server))
        .collect();
    if failed.is_empty() {
        println!("\nEvery run delivered every message exactly once and in order.");
    } else {
        println!(
            "\nIncomplete delivery (see the JSON lines): {}",
            failed.join(", ")
        );
    }
}
