//! Debian's real Prometheus server, scraping Herald's `/metrics` (OpenMetrics) every 500 ms, and
//! its query API.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use serde_json::Value;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::{PATIENCE, cluster::free_port};

/// A `prometheus` of one test's own, killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    _dir: TempDir,
    base: String,
    http: reqwest::Client,
}

/// The binary: `$HERALD_PROMETHEUS`, else Debian's path.
fn binary() -> PathBuf {
    std::env::var_os("HERALD_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"))
}

impl Prometheus {
    /// Starts a server scraping each `(job, host:port)`.
    pub async fn start(targets: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = String::from(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n",
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let port = free_port();
        let child = Command::new(binary())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary().display()))?;
        let server = Self {
            child,
            _dir: dir,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let ready = server
                .http
                .get(format!("{}/-/ready", server.base))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(server);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("prometheus did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An instant query: each series' labels (as `k=v` pairs, sorted) and value.
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<(Vec<String>, f64)>> {
        let url = format!("{}/api/v1/query?query={}", self.base, encode(expr));
        let body: Value = self.http.get(url).send().await?.json().await?;
        if body["status"] != "success" {
            bail!("query {expr} failed: {body}");
        }
        let mut out = Vec::new();
        for series in body["data"]["result"].as_array().into_iter().flatten() {
            let mut labels: Vec<String> = series["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            labels.sort();
            let value = series["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .context("a sample value")?;
            out.push((labels, value));
        }
        Ok(out)
    }

    /// The one value `expr` has, or `None` while it has none.
    pub async fn value(&self, expr: &str) -> anyhow::Result<Option<f64>> {
        let series = self.query(expr).await?;
        match series.as_slice() {
            [] => Ok(None),
            [(_, v)] => Ok(Some(*v)),
            _ => bail!("{expr} has {} series: {series:?}", series.len()),
        }
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
