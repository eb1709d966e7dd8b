//! One trace per event, from the publisher's `traceparent` to the socket write: ingest and
//! gateway export over OTLP/HTTP to a real receiver in the test, which decodes the protobuf.

use std::time::{Duration, Instant};

use herald_tests::{
    PATIENCE,
    cluster::{Deployment, Mongo, Nats},
    otlp::{Receiver, Span},
};
use serde_json::json;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

fn otel_env(receiver: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".into()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test".into(),
        ),
    ]
}

fn one<'a>(spans: &'a [Span], what: &str, pick: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "expected one {what} span in {spans:#?}");
    found[0]
}

/// Whether `child` descends from `ancestor` through parent links.
fn descends(spans: &[Span], child: &Span, ancestor: &Span) -> bool {
    let mut at = child;
    for _ in 0..16 {
        if at.parent_span_id == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == at.parent_span_id) {
            Some(parent) => at = parent,
            None => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_and_its_delivery_are_one_trace() {
    let receiver = Receiver::start().await.unwrap();
    let nats = Nats::start().await.unwrap();
    let mongo = Mongo::start().await.unwrap();
    let deployment = Deployment::new(&nats, &mongo, &[]);
    let env = otel_env(&receiver);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The caller is one of our own services: its trace is continued.
    let ingest = deployment
        .ingest(&["--trust-traceparent", "true"], &env)
        .await
        .unwrap();
    let gateway = deployment.gateway_env(&[], &env).await.unwrap();
    let (ingest_api, gateway_api) = (ingest.api(), gateway.api());

    // Two subscribers: one socket write is traced, not both.
    let mut first = gateway_api
        .stream("/v1/stream?topic=scores", None)
        .await
        .unwrap();
    let mut second = gateway_api
        .stream("/v1/stream?topic=scores", None)
        .await
        .unwrap();
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let res = ingest_api
        .http
        .post(format!("{}/v1/topics/scores/events", ingest_api.base))
        .header("traceparent", &traceparent)
        .json(&json!({ "data": { "home": 1 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for sub in [&mut first, &mut second] {
        let (events, _) = sub.collect(1).await.unwrap();
        assert_eq!(events[0].id, id);
    }

    // Wait for every expected span: the ingest's server, validate, producer and two MongoDB
    // writes would be five; the gateway's process, decode, fan-out and one socket write four.
    let deadline = Instant::now() + PATIENCE;
    let trace = loop {
        let spans: Vec<Span> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == TRACE_ID)
            .collect();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        if ["sse write", "fan-out", "decode", "validate"]
            .iter()
            .all(|n| names.contains(n))
            && spans.iter().any(|s| s.kind == PRODUCER)
            && spans.iter().any(|s| s.kind == CLIENT)
        {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans so far: {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The ingest continued the caller's trace: its server span is the caller span's child.
    let server = one(&trace, "server", |s| s.kind == SERVER);
    assert_eq!(server.service, "herald-ingest");
    assert_eq!(server.parent_span_id, CALLER_SPAN);
    assert_eq!(server.name, "POST /v1/topics/{topic}/events");
    assert_eq!(server.attr("http.request.method"), "POST");
    assert_eq!(server.attr("http.route"), "/v1/topics/{topic}/events");
    assert_eq!(server.attr("url.path"), "/v1/topics/scores/events");
    assert_eq!(server.attr("url.scheme"), "http");
    assert_eq!(server.attr("http.response.status_code"), "201");

    let validate = one(&trace, "validate", |s| s.name == "validate");
    assert_eq!(validate.parent_span_id, server.span_id);

    let producer = one(&trace, "producer", |s| s.kind == PRODUCER);
    assert_eq!(producer.service, "herald-ingest");
    assert_eq!(producer.name, "send herald.events.scores");
    assert!(descends(&trace, producer, server));
    assert_eq!(producer.attr("messaging.system"), "nats");
    assert_eq!(producer.attr("messaging.operation.type"), "send");
    assert_eq!(
        producer.attr("messaging.destination.name"),
        "herald.events.scores"
    );
    assert_eq!(producer.attr("messaging.message.id"), id);

    let insert = one(&trace, "mongodb insert", |s| {
        s.kind == CLIENT && s.attr("db.collection.name") == "events"
    });
    assert!(descends(&trace, insert, server));
    assert_eq!(insert.attr("db.system.name"), "mongodb");
    assert_eq!(insert.attr("db.operation.name"), "insert");
    assert_eq!(insert.name, "insert events");

    // The gateway's delivery: a CONSUMER span, child of and linked to the producer span.
    let process = one(&trace, "consumer", |s| s.kind == CONSUMER);
    assert_eq!(process.service, "herald-gateway");
    assert_eq!(process.name, "process herald.events.scores");
    assert_eq!(process.parent_span_id, producer.span_id);
    assert_eq!(
        process.links,
        [(TRACE_ID.to_owned(), producer.span_id.clone())]
    );
    assert_eq!(process.attr("messaging.system"), "nats");
    assert_eq!(process.attr("messaging.operation.type"), "process");
    assert_eq!(
        process.attr("messaging.destination.name"),
        "herald.events.scores"
    );
    assert_eq!(process.attr("messaging.message.id"), id);

    let decode = one(&trace, "decode", |s| s.name == "decode");
    assert_eq!(decode.parent_span_id, process.span_id);
    let fan_out = one(&trace, "fan-out", |s| s.name == "fan-out");
    assert_eq!(fan_out.service, "herald-gateway");
    assert_eq!(fan_out.parent_span_id, process.span_id);
    assert_eq!(fan_out.attr("herald.subscribers"), "2");
    let write = one(&trace, "sse write", |s| s.name == "sse write");
    assert_eq!(write.parent_span_id, fan_out.span_id);
    assert_eq!(write.attr("messaging.message.id"), id);

    // The trace context is stored with the event: MongoDB has the producer span's traceparent.
    let stored = mongo.event_field(1, "traceparent").await.unwrap();
    assert_eq!(
        stored.as_deref(),
        Some(format!("00-{TRACE_ID}-{}-01", producer.span_id).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_without_an_endpoint_or_with_sampling_off() {
    let receiver = Receiver::start().await.unwrap();
    let nats = Nats::start().await.unwrap();
    let mongo = Mongo::start().await.unwrap();
    let deployment = Deployment::new(&nats, &mongo, &[]);
    // Sampled out at the root: a publish without a traceparent records nothing; its context is
    // still passed on (W3C), marked not sampled, so no gateway records anything for it either.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
    ];
    let ingest = deployment.ingest(&[], &env).await.unwrap();
    // No endpoint: export is off.
    let gateway = deployment.gateway(&[]).await.unwrap();
    let mut sub = gateway
        .api()
        .stream("/v1/stream?topic=t", None)
        .await
        .unwrap();
    for n in 0..20 {
        assert_eq!(
            ingest.api().publish("t", json!(n)).await.unwrap().status,
            201
        );
    }
    // A caller's sampled traceparent cannot force sampling on a listener that does not trust it
    // (the default).
    let forced = ingest
        .api()
        .http
        .post(format!("{}/v1/topics/t/events", ingest.api().base))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&json!({ "data": "forced" }))
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), 201);
    sub.collect(21).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.count(), 0, "{:#?}", receiver.spans());
    let stored = mongo.event_field(1, "traceparent").await.unwrap().unwrap();
    assert!(stored.ends_with("-00"), "{stored}");
}
