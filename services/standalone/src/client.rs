//! `herald publish` and `herald tail`: the HTTP API from the command line, with what a script
//! needs from it. A publish that fails in a way a retry may fix (503, 429, a connection that
//! broke) is sent again with the same `Idempotency-Key`, so it never makes two events; `tail`
//! follows a stream across disconnects and server restarts by `Last-Event-ID`, as a browser does,
//! printing every event once, in order, and the server's verdicts.
//!
//! Both speak to any Herald (standalone, or the ingest and gateways of the distributed mode
//! behind one URL) over plain `http://`; put a TLS-terminating proxy or a port-forward in front
//! for a server reached over `https://`.

use std::{
    io::{BufRead as _, Write as _},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, Parser};
use futures_util::StreamExt as _;
use herald_config::units;
use herald_core::sse::decode::{Decoder, SseEvent};
use serde_json::{Value, json};

/// The longest a single HTTP request of `publish` may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `tail` waits before reconnecting when the server named no `retry:`.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// The longest `tail` waits between attempts while the server is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where the server is and the token that identifies the client.
#[derive(Debug, Clone, Args)]
pub struct Server {
    /// The server's base URL (`http://`).
    #[arg(long, env = "HERALD_URL", value_name = "URL", default_value = "http://127.0.0.1:8080", value_parser = http_url)]
    pub url: String,
    /// A token (from `herald token` or the identity provider), sent as `Authorization: Bearer`.
    #[arg(
        long,
        env = "HERALD_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// A file holding the token (read once at start).
    #[arg(long, value_name = "FILE", conflicts_with = "auth_hmac_key_file")]
    pub token_file: Option<PathBuf>,
    /// Mint the token with the server's HMAC key file, as `herald token` does, granting just
    /// what the command needs; `tail` mints a new one when the server ends the stream because
    /// it expired, and resumes.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub auth_hmac_key_file: Option<PathBuf>,
    /// How long a minted token is valid.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = units::positive_duration)]
    pub token_ttl: Duration,
}

/// What a minted token grants.
struct Grants<'a> {
    subscribe: &'a [String],
    publish: &'a [String],
}

fn http_url(s: &str) -> Result<String, String> {
    let rest = s.strip_prefix("http://").ok_or_else(|| {
        format!(
            "{s:?}: give an http:// URL (for https, put a TLS proxy or a port-forward in front)"
        )
    })?;
    if rest.trim_end_matches('/').is_empty() {
        return Err(format!("{s:?} names no host"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

impl Server {
    /// The `Authorization` value: the token given, or one minted now for `grants`.
    fn bearer(&self, grants: &Grants<'_>) -> anyhow::Result<Option<reqwest::header::HeaderValue>> {
        let token = match (&self.token, &self.token_file, &self.auth_hmac_key_file) {
            (Some(token), _, _) => token.clone(),
            (None, Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?
                .trim()
                .to_owned(),
            (None, None, Some(key)) => herald_auth::token::TokenArgs {
                auth_hmac_key_file: key.clone(),
                subscribe: grants.subscribe.to_vec(),
                publish: grants.publish.to_vec(),
                ttl: self.token_ttl,
                sub: "herald-cli".into(),
                issuer: None,
                audience: None,
            }
            .mint()
            .map_err(|e| anyhow::anyhow!("minting a token: {e}"))?,
            (None, None, None) => return Ok(None),
        };
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token is not a valid header value")?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    fn client(&self, timeout: Option<Duration>) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("herald-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        Ok(builder.build()?)
    }
}

/// `herald publish`: publishes one event, or one per line of standard input.
#[derive(Debug, Parser)]
#[command(
    name = "herald publish",
    bin_name = "herald publish",
    about = "Publish events: DATA as one event, or each line of standard input as one (sent in batches). Prints each event's id.",
    after_help = "A publish that fails with 503 or 429, or whose connection breaks, is sent again with the same Idempotency-Key until --retry-for runs out: it makes one event, never two. Without --idempotency-key, a random one is made for each request."
)]
pub struct PublishArgs {
    #[command(flatten)]
    server: Server,
    /// The topic.
    #[arg(value_name = "TOPIC")]
    topic: String,
    /// The event's data, JSON (`'{"score": 3}'`, `'"text"'`); without it, standard input is read.
    #[arg(value_name = "DATA")]
    data: Option<String>,
    /// The event type (default `message`).
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// Send the data (or each line) as a JSON string rather than parsing it as JSON.
    #[arg(long)]
    raw: bool,
    /// The Idempotency-Key: of the one event, or the prefix of each batch's (`KEY-1`, `KEY-2`,
    /// ... counting batches), so that running the same input again makes no second event.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Lines of standard input sent per request.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = units::count(1..=1000))]
    batch: usize,
    /// How long a publish is retried after a failure that a retry may fix.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = units::duration)]
    retry_for: Duration,
}

impl PublishArgs {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.server.client(Some(REQUEST_TIMEOUT))?;
        let topics = [self.topic.clone()];
        let bearer = self.server.bearer(&Grants {
            subscribe: &[],
            publish: &topics,
        })?;
        let prefix = self
            .idempotency_key
            .clone()
            .unwrap_or_else(|| format!("cli-{:016x}", fastrand::u64(..)));
        let mut out = std::io::stdout().lock();
        if let Some(data) = &self.data {
            let mut body = json!({ "data": self.value(data)? });
            if let Some(t) = &self.event_type {
                body["type"] = json!(t);
            }
            let url = format!("{}/v1/topics/{}/events", self.server.url, self.topic);
            let answer = self
                .send(&client, bearer.as_ref(), &url, &body, &prefix)
                .await?;
            writeln!(out, "{}", answer["id"].as_str().unwrap_or_default())?;
            return Ok(());
        }
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        let mut number = 0;
        loop {
            let mut batch = Vec::with_capacity(self.batch);
            for line in lines.by_ref() {
                let line = line.context("reading standard input")?;
                if line.trim().is_empty() {
                    continue;
                }
                let mut item = json!({ "topic": self.topic, "data": self.value(&line)? });
                if let Some(t) = &self.event_type {
                    item["type"] = json!(t);
                }
                batch.push(item);
                if batch.len() == self.batch {
                    break;
                }
            }
            if batch.is_empty() {
                return Ok(());
            }
            number += 1;
            let url = format!("{}/v1/events", self.server.url);
            let key = format!("{prefix}-{number}");
            let answer = self
                .send(&client, bearer.as_ref(), &url, &Value::Array(batch), &key)
                .await?;
            for event in answer["events"].as_array().into_iter().flatten() {
                writeln!(out, "{}", event["id"].as_str().unwrap_or_default())?;
            }
            out.flush()?;
        }
    }

    fn value(&self, text: &str) -> anyhow::Result<Value> {
        if self.raw {
            return Ok(Value::String(text.to_owned()));
        }
        serde_json::from_str(text).with_context(|| {
            format!("{text:?} is not JSON: quote a string (\"'\\\"text\\\"'\") or pass --raw")
        })
    }

    /// POSTs `body` with `key` until it is answered for good or `--retry-for` runs out.
    async fn send(
        &self,
        client: &reqwest::Client,
        bearer: Option<&reqwest::header::HeaderValue>,
        url: &str,
        body: &Value,
        key: &str,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut wait = Duration::from_millis(200);
        loop {
            let mut request = client.post(url);
            if let Some(bearer) = bearer {
                request = request.header(reqwest::header::AUTHORIZATION, bearer.clone());
            }
            let sent = request
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body.to_string())
                .send()
                .await;
            let failure = match sent {
                Ok(res) if res.status().is_success() => {
                    return res.json().await.context("reading the answer");
                }
                Ok(res) => {
                    let status = res.status();
                    let retry_after = res
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .map(Duration::from_secs);
                    let text = res.text().await.unwrap_or_default();
                    if status != 503 && status != 429 {
                        bail!("{status}: {}", error_message(&text));
                    }
                    if let Some(after) = retry_after {
                        wait = wait.max(after);
                    }
                    format!("{status}: {}", error_message(&text))
                }
                Err(e) => format!("{e}"),
            };
            if tokio::time::Instant::now() + wait > deadline {
                bail!("not published within --retry-for: {failure}");
            }
            eprintln!(
                "herald publish: {failure}; retrying in {wait:?} with the same Idempotency-Key"
            );
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }
}

/// The message of an API error answer, or the text as it is.
fn error_message(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| {
            let e = &v["error"];
            Some(format!(
                "{} ({})",
                e["message"].as_str()?,
                e["code"].as_str()?
            ))
        })
        .unwrap_or_else(|| text.trim().to_owned())
}

/// `herald tail`: follows a stream.
#[derive(Debug, Parser)]
#[command(
    name = "herald tail",
    bin_name = "herald tail",
    about = "Follow topics and patterns as a stream, resuming across disconnects and server restarts from the last id read (every event once, in order); the server's verdicts go to standard error.",
    after_help = "Each event is printed as `ID TYPE DATA` (DATA on one line), or with --json as one JSON object per line: {\"id\", \"type\", \"data\"} for events, {\"control\": NAME, \"data\"} for the server's verdicts (herald.resume, herald.live, herald.refused, herald.auth). Exits 0 after --count events, 1 when the server refuses the stream for good (400, 401, 403) or the token expired (with --auth-hmac-key-file, a new token is minted and the stream resumed instead)."
)]
pub struct TailArgs {
    #[command(flatten)]
    server: Server,
    /// Topics and patterns (`scores`, `news.*`, `a.>`).
    #[arg(value_name = "TOPIC", required = true)]
    topics: Vec<String>,
    /// Start after this id (replaying what followed it) rather than live.
    #[arg(long, value_name = "ID")]
    after: Option<String>,
    /// One JSON object per line, control events included.
    #[arg(long)]
    json: bool,
    /// Exit after this many events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

/// Why a connection of `tail` failed.
enum TailError {
    /// For good: a refusal that a retry cannot change, or standard output closed.
    Refused(anyhow::Error),
    /// For now: the server is unreachable or the connection broke.
    Broken(anyhow::Error),
    /// The token expired; with a key file, a new one is minted and the stream resumed.
    Expired(anyhow::Error),
}

use TailError::{Broken, Expired, Refused};

/// How one connection of `tail` ended.
enum Ended {
    /// Enough events: done.
    Done,
    /// The connection ended or broke; reconnect after the delay.
    Again(Duration),
}

impl TailArgs {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.server.client(None)?;
        let query: String = self
            .topics
            .iter()
            .map(|t| format!("topic={}", form_urlencode(t)))
            .collect::<Vec<_>>()
            .join("&");
        let url = format!("{}/v1/stream?{query}", self.server.url);
        let mut last = self.after.clone().unwrap_or_default();
        let mut printed = 0u64;
        let mut failures = 0u32;
        let grants = Grants {
            subscribe: &self.topics,
            publish: &[],
        };
        let mut bearer = self.server.bearer(&grants)?;
        loop {
            match self
                .connection(&client, bearer.as_ref(), &url, &mut last, &mut printed)
                .await
            {
                Ok(Ended::Done) => return Ok(()),
                Ok(Ended::Again(delay)) => {
                    failures = 0;
                    tokio::time::sleep(delay).await;
                }
                Err(Expired(e)) if self.server.auth_hmac_key_file.is_some() => {
                    eprintln!("herald tail: {e:#}; minting a new token and resuming");
                    bearer = self.server.bearer(&grants)?;
                }
                Err(Refused(e) | Expired(e)) => return Err(e),
                Err(Broken(e)) => {
                    failures += 1;
                    let wait = (DEFAULT_RETRY * failures).min(MAX_BACKOFF);
                    eprintln!("herald tail: {e:#}; reconnecting in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One connection: reads until it ends, `--count` is reached or it fails.
    async fn connection(
        &self,
        client: &reqwest::Client,
        bearer: Option<&reqwest::header::HeaderValue>,
        url: &str,
        last: &mut String,
        printed: &mut u64,
    ) -> Result<Ended, TailError> {
        let mut request = client.get(url).header("accept", "text/event-stream");
        if let Some(bearer) = bearer {
            request = request.header(reqwest::header::AUTHORIZATION, bearer.clone());
        }
        if !last.is_empty() {
            request = request.header("last-event-id", last.as_str());
        }
        let res = request.send().await.map_err(|e| Broken(e.into()))?;
        let status = res.status();
        if status != 200 {
            let text = res.text().await.unwrap_or_default();
            let e = anyhow::anyhow!("{status}: {}", error_message(&text));
            // The server is there but refuses this stream: trying again cannot help.
            return Err(if status.is_client_error() && status != 429 {
                Refused(e)
            } else {
                Broken(e)
            });
        }
        let mut decoder = Decoder::new();
        let mut body = res.bytes_stream();
        let mut out = std::io::stdout().lock();
        let mut again = None;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Broken(e.into()))?;
            for event in decoder.feed(&chunk) {
                if let Some(name) = event.event.strip_prefix("herald.") {
                    if let Some(delay) = self.control(name, &event, &mut out)? {
                        again = Some(delay);
                    }
                    continue;
                }
                // The browser's rule: an id moves Last-Event-ID on.
                *last = event.id.clone();
                self.print(&event, &mut out)
                    .map_err(|e| Refused(e.into()))?;
                *printed += 1;
                if self.count.is_some_and(|n| *printed >= n) {
                    return Ok(Ended::Done);
                }
            }
            out.flush().map_err(|e| Refused(e.into()))?;
        }
        let retry = decoder.retry().map_or(DEFAULT_RETRY, Duration::from_millis);
        Ok(Ended::Again(again.unwrap_or(retry)))
    }

    fn print(&self, event: &SseEvent, out: &mut impl std::io::Write) -> std::io::Result<()> {
        if self.json {
            let data = serde_json::from_str::<Value>(&event.data)
                .unwrap_or_else(|_| Value::String(event.data.clone()));
            let line = json!({ "id": event.id, "type": event.event, "data": data });
            writeln!(out, "{line}")
        } else {
            writeln!(
                out,
                "{} {} {}",
                event.id,
                event.event,
                event.data.replace('\n', " ")
            )
        }
    }

    /// A control event: printed (to standard output with --json, else to standard error); a
    /// refusal answers the delay before the next attempt; an expired token ends the command.
    fn control(
        &self,
        name: &str,
        event: &SseEvent,
        out: &mut impl std::io::Write,
    ) -> Result<Option<Duration>, TailError> {
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        if self.json {
            let line = json!({ "control": event.event, "data": data });
            writeln!(out, "{line}").map_err(|e| Refused(e.into()))?;
        } else {
            eprintln!("herald tail: {} {}", event.event, event.data);
        }
        match name {
            "refused" => Ok(Some(Duration::from_millis(
                data["retry_ms"].as_u64().unwrap_or(1000),
            ))),
            "auth" => Err(Expired(anyhow::anyhow!(
                "the server ended the stream: {} (get a new token and run again with --after {})",
                event.data,
                if event.id.is_empty() {
                    "<last id>"
                } else {
                    event.id.as_str()
                }
            ))),
            _ => Ok(None),
        }
    }
}

/// A query value, percent-encoded (topics and patterns are ASCII; `>` and `*` are encoded).
fn form_urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
