//! The production topology as processes, rolled exactly as Kubernetes rolls it.
//!
//! Three gateways and two ingests configured from the same files as the Kubernetes ConfigMaps
//! (`k8s/base/config/*.env`), behind nginx rendered from the template the Ingress mirrors, with
//! NATS and the MongoDB-wire server; 1,000 subscribers that reconnect like browsers (after the
//! stream's `retry:`) and a steady publish load through the load balancer. Then both
//! Deployments roll at once, each as the Deployment controller does with `maxSurge: 1,
//! maxUnavailable: 0`: start a new pod, wait for its readiness probe, add it to the endpoints,
//! then delete an old pod — the endpoint is removed from the load balancer about a second later
//! while the kubelet runs the `preStop` hook (`GET /prestop`), then SIGTERM, and SIGKILL if the
//! pod is not gone within `terminationGracePeriodSeconds` — and the next new pod starts at once.
//!
//! Every subscriber must end with exactly its events (none lost, none twice, in order) after
//! resumes that all recovered; the test prints how long clients were disconnected.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use herald_tests::{
    Api,
    cluster::{Deployment, Nginx, Service},
    env_file,
    process::rss_kib,
};
use serde_json::json;
use tokio::sync::Mutex;

use crate::common::{
    Acked, Cluster, FILTERS, Subscriber, TOPICS, check_each, head_id, publish_until_acked,
};

const SUBSCRIBERS: usize = 1_000;
/// How long after a pod's deletion the load balancer stops sending it new connections (the
/// endpoint controller and the ingress controller's update; about a second on a healthy cluster).
const ENDPOINT_LAG: Duration = Duration::from_secs(1);
/// `terminationGracePeriodSeconds` in k8s/base/{gateway,ingest}.yaml.
const GRACE: Duration = Duration::from_secs(45);

/// A ConfigMap's env file from `k8s/base/config`.
fn config(name: &str) -> Vec<(String, String)> {
    env_file(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../k8s/base/config")
            .join(name),
    )
}

/// One Deployment: how to start a pod, and the pods serving now.
struct Pool {
    kind: &'static str,
    env: Vec<(String, String)>,
    pods: Vec<Service>,
    /// RSS (KiB) of each new pod when it became ready, before any client came.
    ready_rss: Vec<u64>,
}

impl Pool {
    fn new(kind: &'static str, file: &str) -> Self {
        let mut env = config("cluster.env");
        env.extend(config(file));
        Self {
            kind,
            env,
            pods: Vec::new(),
            ready_rss: Vec::new(),
        }
    }

    /// A pod: the ConfigMaps' environment, with what differs on one machine as flags (flags
    /// win over the environment): loopback ports chosen by the kernel, the test's NATS and
    /// MongoDB (the Deployment's own flags).
    async fn start(&self, deployment: &Deployment) -> Service {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let extra = ["--admin-listen", "127.0.0.1:0"];
        match self.kind {
            "gateway" => deployment.gateway_env(&extra, &env).await,
            _ => deployment.ingest(&extra, &env).await,
        }
        .unwrap()
    }

    fn setting(&self, key: &str) -> Duration {
        let value = &self.env.iter().find(|(k, _)| k == key).unwrap().1;
        humantime::parse_duration(value).unwrap()
    }
}

/// The load balancer's endpoints: what nginx balances over, changed as the endpoint controller
/// would and applied by a reload (serialised: one reload at a time).
struct Endpoints {
    nginx: Nginx,
    sets: Mutex<HashMap<&'static str, Vec<String>>>,
}

impl Endpoints {
    async fn set(&self, kind: &'static str, change: impl FnOnce(&mut Vec<String>)) {
        let mut sets = self.sets.lock().await;
        change(sets.entry(kind).or_default());
        let list = |k| -> Vec<&str> {
            sets.get(k)
                .map(|v| v.iter().map(String::as_str).collect())
                .unwrap_or_default()
        };
        self.nginx
            .set_upstreams(&list("gateway"), &list("ingest"))
            .await
            .unwrap();
    }
}

/// What happened to one old pod.
#[derive(Debug)]
struct Terminated {
    /// From the deletion to the process' exit.
    took: Duration,
    /// `waited_ms` from the preStop hook's answer.
    prestop_ms: u64,
}

/// Deletes `pod` as the kubelet and the endpoint controller do, concurrently: the endpoint goes
/// after [`ENDPOINT_LAG`]; the preStop hook runs (readiness must fail at once while the pod
/// still serves), then SIGTERM; the pod must exit cleanly within the grace period.
async fn terminate(kind: &'static str, mut pod: Service, endpoints: Arc<Endpoints>) -> Terminated {
    let deleted = Instant::now();
    let addr = pod.addr().to_owned();
    let unlisted = tokio::spawn(async move {
        tokio::time::sleep(ENDPOINT_LAG).await;
        endpoints.set(kind, |v| v.retain(|a| *a != addr)).await;
    });
    let admin = pod.admin_api();
    let hook = tokio::spawn({
        let admin = admin.clone();
        async move { admin.get_json("/prestop").await.unwrap() }
    });
    // The hook withdraws the pod before it waits: readiness fails within a probe period.
    let withdrawn = async {
        loop {
            if let Ok((status, _)) = admin.get_json("/readyz").await
                && status.as_u16() == 503
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), withdrawn)
        .await
        .unwrap_or_else(|_| panic!("{kind} {}: readiness still passes after preStop", pod.base));
    let (status, _) = admin.get_json("/healthz").await.unwrap();
    assert_eq!(status.as_u16(), 200, "a withdrawn {kind} must stay live");
    let (status, body) = hook.await.unwrap();
    assert_eq!(status.as_u16(), 200, "preStop: {body}");
    assert_eq!(body["withdrawn"], true);
    let prestop_ms = body["waited_ms"].as_u64().unwrap();
    pod.sigterm();
    let left = GRACE.saturating_sub(deleted.elapsed());
    let exit = pod.wait_exit(left).await;
    let status = match exit {
        Ok(status) => status,
        Err(_) => {
            pod.kill9().await;
            panic!(
                "{kind} {} was still running at the end of the grace period",
                pod.base
            );
        }
    };
    assert!(status.success(), "{kind} {} exited with {status}", pod.base);
    // Exiting must be as clean as the exit code says: no panic on the way out.
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(line) = pod.stderr.try_recv() {
        assert!(!line.contains("panicked"), "{kind} {}: {line}", pod.base);
    }
    unlisted.await.unwrap();
    Terminated {
        took: deleted.elapsed(),
        prestop_ms,
    }
}

/// A rolling update of one Deployment (`maxSurge: 1, maxUnavailable: 0`).
async fn roll(
    pool: &mut Pool,
    deployment: &Deployment,
    endpoints: &Arc<Endpoints>,
) -> Vec<Terminated> {
    let old = std::mem::take(&mut pool.pods);
    let mut deletions = Vec::new();
    for pod in old {
        let new = pool.start(deployment).await;
        let ready = async {
            loop {
                if let Ok((status, _)) = new.admin_api().get_json("/readyz").await
                    && status.is_success()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .expect("the new pod never became ready");
        pool.ready_rss.push(rss_kib(new.pid().unwrap()));
        let addr = new.addr().to_owned();
        endpoints.set(pool.kind, |v| v.push(addr)).await;
        pool.pods.push(new);
        deletions.push(tokio::spawn(terminate(
            pool.kind,
            pod,
            Arc::clone(endpoints),
        )));
    }
    let mut done = Vec::new();
    for d in deletions {
        done.push(d.await.unwrap());
    }
    done
}

/// Waits until the gateways hold every subscriber's stream.
async fn all_connected(gateways: &[Service], within: Duration, what: &str) {
    let connected = async {
        while total(gateways, "herald_connections_open").await < SUBSCRIBERS as f64 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(within, connected)
        .await
        .unwrap_or_else(|_| panic!("{what}"));
}

/// Each pod's resident memory in KiB.
fn rss(pods: &[Service]) -> Vec<u64> {
    pods.iter().map(|p| rss_kib(p.pid().unwrap())).collect()
}

/// Sum of a metric over pods' admin listeners.
async fn total(pods: &[Service], sample: &str) -> f64 {
    let mut sum = 0.0;
    for pod in pods {
        sum += pod.admin_api().metric(sample).await.unwrap();
    }
    sum
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kubernetes_rollout_of_both_deployments_loses_nothing() {
    let mut cluster = Cluster::start(0, 0, &[]).await;
    let mut gateways = Pool::new("gateway", "gateway.env");
    let mut ingests = Pool::new("ingest", "ingest.env");
    for _ in 0..3 {
        gateways
            .pods
            .push(gateways.start(&cluster.deployment).await);
    }
    for _ in 0..2 {
        ingests.pods.push(ingests.start(&cluster.deployment).await);
    }
    // Ops routes are on the admin listener only, as the probes and the ServiceMonitor expect.
    let (status, _) = gateways.pods[0].api().get_json("/readyz").await.unwrap();
    assert_eq!(
        status.as_u16(),
        404,
        "/readyz must not be served behind the Ingress"
    );

    let addrs =
        |pool: &Pool| -> Vec<String> { pool.pods.iter().map(|p| p.addr().to_owned()).collect() };
    let (g, i) = (addrs(&gateways), addrs(&ingests));
    let nginx = Nginx::start(
        &g.iter().map(String::as_str).collect::<Vec<_>>(),
        &i.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let lb: Api = nginx.api();
    let endpoints = Arc::new(Endpoints {
        nginx,
        sets: Mutex::new(HashMap::from([("gateway", g), ("ingest", i)])),
    });

    let acked = Acked::default();
    let from = head_id(&lb, &acked).await;
    let subscribers: Vec<Subscriber> = (0..SUBSCRIBERS)
        .map(|n| {
            Subscriber::start_like_browser(
                lb.clone(),
                FILTERS[n % FILTERS.len()].to_vec(),
                from.clone(),
            )
        })
        .collect();
    all_connected(
        &gateways.pods,
        Duration::from_secs(60),
        "not every subscriber connected",
    )
    .await;
    let rss_before = rss(&gateways.pods);

    // A steady load: a publish every 20 ms through the load balancer, retried (same
    // Idempotency-Key) through refusals, as a well-behaved publisher does.
    let stop = Arc::new(AtomicBool::new(false));
    let failed_attempts = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn({
        let (api, stop, failed, acked) = (
            lb.clone(),
            Arc::clone(&stop),
            Arc::clone(&failed_attempts),
            acked.clone(),
        );
        async move {
            let mut n = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let topic = TOPICS[n % TOPICS.len()];
                let (id, failures) =
                    publish_until_acked(&api, topic, &format!("r{n}"), json!({ "n": n })).await;
                acked.add(topic, &id);
                failed.fetch_add(failures, Ordering::Relaxed);
                n += 1;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let deployment = cluster.deployment.clone();
    let (gateway_exits, ingest_exits) = tokio::join!(
        roll(&mut gateways, &deployment, &endpoints),
        roll(&mut ingests, &deployment, &endpoints),
    );
    let rollout = started.elapsed();
    // Every client is back on the new pods (the last ones still wait out their retry).
    all_connected(
        &gateways.pods,
        Duration::from_secs(30),
        "not every subscriber is connected to the new gateways",
    )
    .await;
    let rss_after = rss(&gateways.pods);
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();

    let seen = check_each(subscribers, &acked).await;

    // Every subscriber was on a replaced gateway, so every one reconnected and resumed.
    assert!(
        seen.iter()
            .all(|s| s.reconnects >= 1 && !s.verdicts.is_empty()),
        "a subscriber never resumed: its gateway was not replaced?"
    );
    let reconnects: usize = seen.iter().map(|s| s.reconnects).sum();
    assert!(
        reconnects <= 2 * SUBSCRIBERS,
        "{reconnects} reconnections for {SUBSCRIBERS} clients: they bounce between draining pods"
    );
    let prestop = gateways.setting("HERALD_PRESTOP_DELAY");
    for t in gateway_exits.iter().chain(&ingest_exits) {
        assert!(
            t.prestop_ms >= prestop.as_millis() as u64,
            "the preStop hook answered after {} ms, before HERALD_PRESTOP_DELAY",
            t.prestop_ms
        );
    }

    let mut gaps: Vec<Duration> = seen.iter().flat_map(|s| s.gaps.iter().copied()).collect();
    gaps.sort_unstable();
    let mut per_client: Vec<Duration> = seen.iter().map(|s| s.gaps.iter().sum()).collect();
    per_client.sort_unstable();
    let events = acked.len();
    let deliveries: usize = seen.iter().map(|s| s.seqs.len()).sum();
    let drains: Vec<String> = gateway_exits.iter().map(|t| ms(t.took)).collect();
    let kib = |v: &[u64]| {
        v.iter()
            .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "rehearsal: rolled 3 gateways and 2 ingests in {rollout:.1?} under {SUBSCRIBERS} \
         subscribers and a publish every 20 ms: {events} events acknowledged ({} publish \
         attempts refused and retried), {deliveries} deliveries, 0 lost, 0 duplicated; \
         {reconnects} reconnections, every one resumed\n\
         rehearsal: time disconnected per reconnection p50 {} p99 {} max {} (includes the \
         {}-ms retry a browser waits); per client in all p50 {} p99 {}\n\
         rehearsal: gateway deletion to exit {drains:?} (grace {GRACE:?}); gateway RSS with \
         ~{} streams each: {} before, {} after the rollout ({} when ready, no streams: \
         ~{:.0} KiB per stream)",
        failed_attempts.load(Ordering::Relaxed),
        ms(percentile(&gaps, 50.0)),
        ms(percentile(&gaps, 99.0)),
        ms(gaps.last().copied().unwrap_or_default()),
        gateways.setting("HERALD_RETRY").as_millis(),
        ms(percentile(&per_client, 50.0)),
        ms(percentile(&per_client, 99.0)),
        SUBSCRIBERS / 3,
        kib(&rss_before),
        kib(&rss_after),
        kib(&gateways.ready_rss),
        (rss_after.iter().sum::<u64>() as f64 - gateways.ready_rss.iter().sum::<u64>() as f64)
            / SUBSCRIBERS as f64,
    );
    cluster.gateways = gateways.pods;
    cluster.ingests = ingests.pods;
}
