//! A rolling restart of every gateway (SIGTERM one at a time, as Kubernetes does) under load
//! behind nginx loses nothing.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::json;

use crate::common::{
    Acked, Cluster, FILTERS, Subscriber, TOPICS, check_all, head_id, publish_until_acked,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_the_gateways_loses_nothing() {
    let mut cluster = Cluster::start(1, 0, &[]).await;
    for _ in 0..3 {
        let gateway = cluster
            .deployment
            .gateway(&["--drain-jitter", "500ms", "--drain-deadline", "5s"])
            .await
            .unwrap();
        cluster.gateways.push(gateway);
    }
    let nginx = cluster.nginx().await;
    let lb = nginx.api();
    let acked = Acked::default();
    let from = head_id(&lb, &acked).await;
    let subscribers: Vec<Subscriber> = (0..30)
        .map(|i| {
            Subscriber::start(
                lb.clone(),
                FILTERS[i % FILTERS.len()].to_vec(),
                from.clone(),
            )
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn({
        let (api, stop, count, acked) = (
            cluster.ingests[0].api(),
            Arc::clone(&stop),
            Arc::clone(&count),
            acked.clone(),
        );
        async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let topic = TOPICS[i % TOPICS.len()];
                let (id, _) =
                    publish_until_acked(&api, topic, &format!("p{i}"), json!({ "n": i })).await;
                acked.add(topic, &id);
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    });
    for gateway in &mut cluster.gateways {
        tokio::time::sleep(Duration::from_millis(500)).await;
        gateway.sigterm();
        let status = gateway.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert!(
            status.success(),
            "the gateway did not drain cleanly: {status}"
        );
        gateway.restart_same_port().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let reconnects = check_all(subscribers, &acked).await;
    assert!(
        reconnects < 30 * 5,
        "{reconnects} reconnections: clients are bouncing off the load balancer"
    );
    assert!(
        reconnects >= 30,
        "every subscriber was on a restarted gateway at least once"
    );
    eprintln!(
        "rolling restart: {} events, {reconnects} reconnections",
        count.load(Ordering::Relaxed)
    );
}
