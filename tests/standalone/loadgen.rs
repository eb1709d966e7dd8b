//! The load generator (`herald-bench`) itself: every scenario completes against `herald` with
//! complete delivery, and its delivery check fails when a server loses messages.

use std::{sync::Arc, time::Duration};

use herald_bench::{
    Options, Scenario, Server, http::Url, procfs::Procs, publish::Target, scenario,
};
use herald_tests::{Herald, cluster::free_port};

async fn herald_server(herald: &Herald) -> Server {
    let base = &herald.base;
    Server {
        name: "standalone".into(),
        subscribe: Url::parse(&format!("{base}/v1/stream?topic={{topic}}"))
            .await
            .unwrap(),
        subscribe_headers: Vec::new(),
        publish: Target {
            url: Url::parse(&format!("{base}/v1/topics/{{topic}}/events"))
                .await
                .unwrap(),
            body: r#"{"data":{"n":{n},"t":{t}}}"#.into(),
            batch_url: Some(Url::parse(&format!("{base}/v1/events")).await.unwrap()),
            batch_item: Some(r#"{"topic":"{topic}","data":{"n":{n},"t":{t}}}"#.into()),
            headers: vec![("Content-Type".into(), "application/json".into())],
            idempotent: true,
        },
        procs: Procs::new([herald.pid()]),
        http2_streams: 0,
    }
}

fn small(topic: &str) -> Options {
    Options {
        subscribers: 20,
        messages: 200,
        topic: topic.into(),
        stall: Duration::from_secs(5),
        settle: Duration::from_millis(50),
        ..Options::default()
    }
}

#[tokio::test]
async fn every_scenario_completes_against_herald() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &[]).await.unwrap();
    let server = herald_server(&herald).await;
    let cases = [
        (Scenario::Fanout, small("fanout")),
        (
            Scenario::Fanout,
            Options {
                concurrency: 3,
                ..small("fanout3")
            },
        ),
        (
            Scenario::Latency,
            Options {
                rate: 500.0,
                ..small("latency")
            },
        ),
        (Scenario::Idle, small("idle")),
        (
            Scenario::Resume,
            Options {
                subscribers: 2,
                messages: 3000,
                batch: 100,
                ..small("resume")
            },
        ),
        (
            Scenario::Publish,
            Options {
                messages: 2000,
                batch: 100,
                concurrency: 2,
                ..small("publish")
            },
        ),
    ];
    for (scenario, opts) in cases {
        let report = scenario::run(scenario, &server, &opts, None).await.unwrap();
        assert!(report.ok, "{}", report.summary());
        assert_eq!(report.delivered, report.expected, "{}", report.summary());
        assert!(report.server_cpu_s >= 0.0 && report.deliveries_per_s > 0.0);
        match scenario {
            Scenario::Latency => assert!(report.latency.is_some()),
            Scenario::Idle => assert!(report.rss_per_connection.is_some()),
            Scenario::Resume => assert_eq!(report.caught_up, Some(2)),
            Scenario::Publish => assert!(report.publishes_per_s.unwrap() > 0.0),
            _ => {}
        }
        // One JSON line per run.
        let line = serde_json::to_string(&report).unwrap();
        assert!(!line.contains('\n'));
    }
}

/// Subscribers over HTTP/2, seven streams to a connection (the last connection part full), get
/// every message once, in order, in the scenarios that take them.
#[tokio::test]
async fn http2_subscribers_share_connections_and_get_everything() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &["--h2c", "true"]).await.unwrap();
    let mut server = herald_server(&herald).await;
    server.http2_streams = 7;
    for (scenario, opts) in [
        (Scenario::Fanout, small("h2-fanout")),
        (
            Scenario::Latency,
            Options {
                rate: 500.0,
                ..small("h2-latency")
            },
        ),
        (Scenario::Idle, small("h2-idle")),
    ] {
        let report = scenario::run(scenario, &server, &opts, None).await.unwrap();
        assert!(report.ok, "{}", report.summary());
        assert_eq!(report.delivered, report.expected, "{}", report.summary());
        assert_eq!(report.duplicates, 0, "{}", report.summary());
    }
    // Without h2c the server answers no HTTP/2: the subscribers fail rather than pass.
    let dir = tempfile::tempdir().unwrap();
    let plain = Herald::start(dir.path(), &[]).await.unwrap();
    let mut server = herald_server(&plain).await;
    server.http2_streams = 7;
    let opts = Options {
        stall: Duration::from_secs(2),
        ..small("h2-refused")
    };
    let failed = match scenario::run(Scenario::Fanout, &server, &opts, None).await {
        Ok(report) => !report.ok,
        Err(_) => true,
    };
    assert!(failed, "HTTP/2 subscribers against an HTTP/1.1-only server");
}

#[tokio::test]
async fn storm_clients_resume_after_the_server_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &["--retry", "200ms"])
        .await
        .unwrap();
    let mut server = herald_server(&herald).await;
    server.procs = Procs::default();
    let herald = Arc::new(tokio::sync::Mutex::new(herald));
    let kept = Arc::clone(&herald);
    let kill: scenario::Kill = Box::new(move || {
        Box::pin(async move {
            let mut h = herald.lock().await;
            h.kill9().await;
            h.restart_same_port().await
        })
    });
    let opts = Options {
        subscribers: 50,
        messages: 400,
        rate: 200.0,
        ..small("storm")
    };
    let report = scenario::run(Scenario::Storm, &server, &opts, Some(kill))
        .await
        .unwrap();
    assert!(report.ok, "{}", report.summary());
    assert_eq!(report.caught_up, Some(50));
    assert!(report.reconnects >= 50, "{}", report.summary());
    drop(kept);
}

#[tokio::test]
async fn the_delivery_check_fails_when_a_server_loses_messages() {
    // The reference server keeps no history: a resuming client gets none of what it missed.
    let port = free_port();
    tokio::spawn(herald_bench::reference::serve(
        format!("127.0.0.1:{port}").parse().unwrap(),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = Server {
        name: "reference".into(),
        subscribe: Url::parse(&format!("http://127.0.0.1:{port}/sub"))
            .await
            .unwrap(),
        subscribe_headers: Vec::new(),
        publish: Target {
            url: Url::parse(&format!("http://127.0.0.1:{port}/pub"))
                .await
                .unwrap(),
            body: r#"{"n":{n},"t":{t}}"#.into(),
            batch_url: None,
            batch_item: None,
            headers: Vec::new(),
            idempotent: false,
        },
        procs: Procs::default(),
        http2_streams: 0,
    };
    let opts = Options {
        subscribers: 1,
        messages: 50,
        stall: Duration::from_millis(500),
        ..small("lossy")
    };
    let report = scenario::run(Scenario::Resume, &server, &opts, None)
        .await
        .unwrap();
    assert!(!report.ok, "{}", report.summary());
    assert_eq!(report.missing, 50, "{}", report.summary());
    assert_eq!(report.caught_up, Some(0));
    // Live fan-out from it is complete, so the check is not failing by itself.
    let report = scenario::run(Scenario::Fanout, &server, &small("live"), None)
        .await
        .unwrap();
    assert!(report.ok, "{}", report.summary());
}
