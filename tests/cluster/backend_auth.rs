//! Herald against backends that require credentials and TLS. NATS: with the right password,
//! token and CA the ingest and gateway deliver end to end; with a wrong password or without the
//! CA they refuse to start and say why, instead of running unconnected. Redis (`--bus redis`):
//! over `rediss://` with a password and the test CA, the gateway's feed is subscribed and events
//! arrive; without the CA the gateway stops at start, naming the certificate.

use std::{path::PathBuf, process::Stdio, time::Duration};

use herald_tests::cluster::{Deployment, Mongo, Nats, Service, herald_binary};
use serde_json::json;

fn cert(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("certs")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

/// One event published through the ingest arrives on the gateway's stream (both are kept
/// running for the caller).
async fn delivers(deployment: &Deployment) -> (Service, Service) {
    let ingest = deployment.ingest(&[], &[]).await.unwrap();
    let gateway = deployment.gateway(&[]).await.unwrap();
    let mut sse = gateway
        .api()
        .stream("/v1/stream?topic=secure", None)
        .await
        .unwrap();
    let published = ingest
        .api()
        .publish("secure", json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(published.status, 201, "{:?}", published.body);
    let event = loop {
        let event = sse
            .next_within(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("the event");
        if event.event != "herald.resume" {
            break event;
        }
    };
    assert_eq!(event.id, published.id());
    (ingest, gateway)
}

/// Runs `herald-gateway` with `extra` and waits for it to exit: its status and stderr.
async fn refused(deployment: &Deployment, extra: &[&str]) -> String {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--nats-url",
        &deployment.nats_url,
        "--mongodb-uri",
        &deployment.mongodb_uri,
        "--mongodb-database",
        &deployment.database,
    ];
    args.extend(deployment.shared.iter().map(String::as_str));
    args.extend(extra);
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(herald_binary("herald-gateway"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the gateway kept running without NATS")
    .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_and_tls() {
    let nats = Nats::start_with(&[
        "--user",
        "herald",
        "--pass",
        "nats-test-password",
        "--tls",
        "--tlscert",
        &cert("server.pem"),
        "--tlskey",
        &cert("server.key"),
    ])
    .await
    .unwrap();
    let mongo = Mongo::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (dir.path().join("good"), dir.path().join("bad"));
    std::fs::write(&good, "nats-test-password\n").unwrap();
    std::fs::write(&bad, "wrong").unwrap();
    let ca = cert("ca.pem");
    let flags = |password: &PathBuf, ca: Option<&str>| {
        let mut f = vec![
            "--nats-user".to_owned(),
            "herald".to_owned(),
            "--nats-password-file".to_owned(),
            password.to_str().unwrap().to_owned(),
        ];
        if let Some(ca) = ca {
            f.extend(["--nats-ca-file".to_owned(), ca.to_owned()]);
        }
        f
    };
    let with = |flags: Vec<String>| {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Deployment::new(&nats, &mongo, &flags)
    };
    delivers(&with(flags(&good, Some(&ca)))).await;

    let stderr = refused(&with(flags(&bad, Some(&ca))), &[]).await;
    assert!(
        stderr.to_lowercase().contains("authorization"),
        "a wrong password is not named:\n{stderr}"
    );
    let stderr = refused(&with(flags(&good, None)), &[]).await;
    assert!(
        stderr.to_lowercase().contains("certificate") || stderr.contains("tls"),
        "an untrusted server certificate is not named:\n{stderr}"
    );
    // Option mistakes are configuration errors (exit 2), before anything is connected.
    let stderr = refused(&with(Vec::new()), &["--nats-user", "herald"]).await;
    assert!(stderr.contains("--nats-password-file"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token() {
    let nats = Nats::start_with(&["--auth", "nats-test-token"])
        .await
        .unwrap();
    let mongo = Mongo::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "nats-test-token").unwrap();
    delivers(&Deployment::new(
        &nats,
        &mongo,
        &["--nats-token-file", token.to_str().unwrap()],
    ))
    .await;
    let stderr = refused(&Deployment::new(&nats, &mongo, &[]), &[]).await;
    assert!(
        stderr.to_lowercase().contains("authorization"),
        "a missing token is not named:\n{stderr}"
    );
}

/// Debian's redis-server on a TLS port only, with a password and the test certificate.
async fn tls_redis() -> (tokio::process::Child, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = herald_tests::cluster::free_port();
    let child = tokio::process::Command::new(herald_tests::cluster::server_bin(
        "HERALD_REDIS",
        PathBuf::from("/usr/bin/redis-server"),
    ))
    .args([
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--tls-port",
        &port.to_string(),
    ])
    .args([
        "--tls-cert-file",
        &cert("server.pem"),
        "--tls-key-file",
        &cert("server.key"),
    ])
    .args([
        "--tls-ca-cert-file",
        &cert("ca.pem"),
        "--tls-auth-clients",
        "no",
    ])
    .args([
        "--requirepass",
        "redis-test-password",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .arg("--dir")
    .arg(dir.path())
    .stdout(Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .unwrap();
    herald_tests::cluster::wait_port(port).await.unwrap();
    (child, port, dir)
}

/// How many subscribers the Redis bus channel has, asked over TLS with the test CA.
async fn channel_subscribers(url: &str) -> i64 {
    let ca = std::fs::read(cert("ca.pem")).unwrap();
    let client = redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        },
    )
    .unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("herald:events")
        .query_async(&mut conn)
        .await
        .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_password() {
    let (_redis, port, _dir) = tls_redis().await;
    let mongo = Mongo::start().await.unwrap();
    let url = format!("rediss://:redis-test-password@127.0.0.1:{port}");
    let deployment = |ca: bool| {
        let mut shared = vec!["--bus", "redis", "--redis-url", &url];
        let ca_file = cert("ca.pem");
        if ca {
            shared.extend(["--redis-ca-file", &ca_file]);
        }
        Deployment {
            nats_url: "nats://127.0.0.1:1".into(),
            mongodb_uri: mongo.uri.clone(),
            database: mongo.database.clone(),
            shared: shared.iter().map(|s| s.to_string()).collect(),
        }
    };
    // Without the CA the gateway does not believe the server: it stops at start, saying why.
    let stderr = refused(&deployment(false), &[]).await;
    assert!(
        stderr.contains("invalid peer certificate"),
        "an untrusted Redis certificate is not named:\n{stderr}"
    );
    assert_eq!(channel_subscribers(&url).await, 0);

    let _running = delivers(&deployment(true)).await;
    assert!(
        channel_subscribers(&url).await >= 1,
        "the gateway's feed is not subscribed over TLS"
    );
}
