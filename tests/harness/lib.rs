//! The harness for Herald's cross-process tests.
//!
//! - [`Herald`]: a `herald` process on a free loopback port with its own data directory, killed
//!   on drop.
//! - [`cluster`]: real NATS, MongoDB(-wire) and nginx servers, and the distributed services.
//! - [`prometheus`]: Debian's Prometheus server scraping the services, and its query API.
//! - [`otlp`]: an OTLP/HTTP receiver that decodes the spans services export.
//! - [`Api`]: the publish and history endpoints.
//! - [`SseStream`]: an event stream read through the WHATWG decoder in `herald-core`, so tests see
//!   exactly what a browser would.

pub mod checker;
pub mod cluster;
pub mod otlp;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod schemathesis;
mod sse;

use std::time::Duration;

pub use process::Herald;
pub use sse::SseStream;

use reqwest::StatusCode;
use serde_json::{Value, json};

/// The `KEY=VALUE` lines of a kustomize env file (`k8s/base/config/*.env`), comments and blank
/// lines skipped, in order.
pub fn env_file(path: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: not KEY=VALUE: {l}", path.display()));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// How long a test waits for anything before failing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A client of one node's HTTP API.
#[derive(Debug, Clone)]
pub struct Api {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The HTTP client (pooled, no timeout by default so streams can stay open).
    pub http: reqwest::Client,
}

/// A publish answer.
#[derive(Debug, Clone)]
pub struct Published {
    /// The HTTP status.
    pub status: StatusCode,
    /// The JSON body.
    pub body: Value,
    /// Whether `Idempotent-Replayed: true` was sent.
    pub replayed: bool,
}

impl Published {
    /// The event id of a single publish.
    pub fn id(&self) -> String {
        self.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {:?} {}", self.status, self.body))
            .to_owned()
    }
}

impl Api {
    /// A client for `base`.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("reqwest client"),
        }
    }

    /// `POST /v1/topics/{topic}/events` with `{"data": data}`.
    pub async fn publish(&self, topic: &str, data: Value) -> anyhow::Result<Published> {
        self.publish_raw(topic, json!({ "data": data }).to_string(), None)
            .await
    }

    /// `POST /v1/topics/{topic}/events` with a raw body and an optional Idempotency-Key.
    pub async fn publish_raw(
        &self,
        topic: &str,
        body: String,
        key: Option<&str>,
    ) -> anyhow::Result<Published> {
        let mut req = self
            .http
            .post(format!("{}/v1/topics/{topic}/events", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        Self::answer(req.send().await?).await
    }

    /// `POST /v1/events` with a JSON batch.
    pub async fn publish_batch(&self, batch: Value) -> anyhow::Result<Published> {
        let res = self
            .http
            .post(format!("{}/v1/events", self.base))
            .json(&batch)
            .send()
            .await?;
        Self::answer(res).await
    }

    async fn answer(res: reqwest::Response) -> anyhow::Result<Published> {
        let status = res.status();
        let replayed = res.headers().get("idempotent-replayed").is_some();
        let text = res.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Published {
            status,
            body,
            replayed,
        })
    }

    /// `GET path` as JSON, with its status.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        let res = self.http.get(format!("{}{path}", self.base)).send().await?;
        Ok((res.status(), res.json().await?))
    }

    /// `GET path`: the status and the body as text.
    pub async fn get_text_status(&self, path: &str) -> (StatusCode, String) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("the request is sent");
        (res.status(), res.text().await.unwrap_or_default())
    }

    /// `GET path` as text.
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await?
            .text()
            .await?)
    }

    /// `GET /metrics` and the value of one sample line (`name{labels}`): 0 for a labelled sample
    /// not counted yet, an error for an unlabelled one that is absent (a wrong name).
    pub async fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        let text = self.get_text("/metrics").await?;
        if let Some(value) = text
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        {
            return Ok(value);
        }
        // A labelled sample not counted yet is absent (so is its whole family until one is):
        // it reads 0. A metric without labels is always there: absent, the name is wrong.
        anyhow::ensure!(sample.contains('{'), "the server has no metric {sample}");
        Ok(0.0)
    }

    /// Opens `GET path` as an event stream, with an optional Last-Event-ID header.
    pub async fn stream(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<SseStream> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        SseStream::open(req).await
    }
}

/// The sequence number of a Herald id (`<epoch>-<seq>`).
pub fn seq_of(id: &str) -> u64 {
    id.rsplit_once('-')
        .and_then(|(_, s)| s.parse().ok())
        .unwrap_or_else(|| panic!("not a Herald id: {id:?}"))
}

/// The epoch part of a Herald id.
pub fn epoch_of(id: &str) -> &str {
    id.split_once('-')
        .map(|(e, _)| e)
        .unwrap_or_else(|| panic!("not a Herald id: {id:?}"))
}
