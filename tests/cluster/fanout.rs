//! Two ingests and three gateways behind nginx: every subscriber gets exactly its events, in
//! order, also when the gateway serving it is killed mid-burst.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::task::JoinSet;

use crate::common::{
    Acked, Cluster, FILTERS, OPENED, Subscriber, check_all, head_id, publish_share,
};

const SUBSCRIBERS: usize = 50;
const EVENTS: usize = 2000;
const PUBLISHERS_PER_INGEST: usize = 8;

async fn burst(kill_a_gateway: bool) {
    let mut cluster = Cluster::start(2, 3, &[]).await;
    let nginx = cluster.nginx().await;
    let lb = nginx.api();
    let acked = Acked::default();
    let from = head_id(&lb, &acked).await;
    let subscribers: Vec<Subscriber> = (0..SUBSCRIBERS)
        .map(|i| {
            Subscriber::start(
                lb.clone(),
                FILTERS[i % FILTERS.len()].to_vec(),
                from.clone(),
            )
        })
        .collect();
    let opened_before = OPENED.load(Ordering::Relaxed);

    let next = Arc::new(AtomicUsize::new(0));
    let mut publishers = JoinSet::new();
    for ingest in &cluster.ingests {
        for _ in 0..PUBLISHERS_PER_INGEST {
            let (api, next, acked) = (ingest.api(), Arc::clone(&next), acked.clone());
            publishers.spawn(publish_share(api, next, acked, EVENTS, "e"));
        }
    }
    if kill_a_gateway {
        while next.load(Ordering::Relaxed) < EVENTS / 3 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        cluster.gateways[0].kill9().await;
    }
    while let Some(r) = publishers.join_next().await {
        r.unwrap();
    }
    assert_eq!(acked.len(), EVENTS + 1);
    let reconnects = check_all(subscribers, &acked).await;
    if kill_a_gateway {
        assert!(
            reconnects > 0,
            "no subscriber had to reconnect: was the gateway serving any?"
        );
        assert!(OPENED.load(Ordering::Relaxed) > opened_before);
    }
    eprintln!(
        "fan-out: {SUBSCRIBERS} subscribers, {EVENTS} events through 2 ingests, {reconnects} reconnections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_subscribers_behind_nginx_get_exactly_their_events() {
    burst(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_of_a_killed_gateway_resume_on_the_others_through_nginx() {
    burst(true).await;
}
