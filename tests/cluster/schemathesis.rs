//! Schemathesis against the distributed mode: an ingest and a gateway over NATS and the
//! MongoDB-wire server, behind nginx as in production (`herald_tests::schemathesis`).

use herald_tests::schemathesis;

use crate::common::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_wrong_with_a_live_deployment() {
    let cluster = Cluster::start(1, 1, &[]).await;
    let nginx = cluster.nginx().await;
    let examples = schemathesis::examples();
    let cases = schemathesis::run(&nginx.api().base, examples, &[])
        .await
        .unwrap();
    assert!(cases >= examples, "only {cases} cases ran");
}
