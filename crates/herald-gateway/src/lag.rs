//! Browser-observed delivery latency: `POST /v1/telemetry/lag` and the helper script that feeds it.
//!
//! A page (the demo, or any page with `herald-lag.js`) notes, for a sample of the events it shows,
//! when it rendered each one, and now and then sends `{"samples": [{"id": "<epoch>-<seq>",
//! "ago_ms": N}]}`: the event's id and how long ago, by the page's own monotonic clock, it was
//! rendered. The gateway knows when each recent event was published (the hub remembers the last
//! 65,536), so publish→render = (arrival of the report − `ago_ms`) − publish time, with no
//! browser clock involved; the report's own trip to the server is counted in (it errs high by
//! that much). Samples go to `herald_browser_delivery_lag_seconds`.
//!
//! The endpoint takes untrusted input: at most [`MAX_SAMPLES`] per request and [`MAX_BODY`]
//! bytes; a sample with an id of another epoch, an unknown or old event, or an `ago_ms` above
//! [`MAX_AGO_MS`] is counted as `unknown` or `invalid` and ignored.

use std::sync::Arc;

use axum::{
    Json,
    body::Body,
    extract::State,
    response::{IntoResponse, Response},
};
use herald_core::EventId;
use herald_runtime::{ApiError, http::read_json};
use herald_telemetry::SampleResult;
use serde::Deserialize;
use serde_json::json;

use crate::GatewayState;

/// The most samples one report may carry.
pub const MAX_SAMPLES: usize = 100;
/// The largest report body, in bytes.
pub const MAX_BODY: usize = 16 * 1024;
/// The oldest render a sample may describe.
pub const MAX_AGO_MS: f64 = 10.0 * 60.0 * 1000.0;

const SCRIPT: &str = include_str!("herald-lag.js");

/// A page's report of when it rendered some events.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = LagReport)]
#[serde(deny_unknown_fields)]
pub(crate) struct Report {
    /// At most 100 samples.
    samples: Vec<Sample>,
}

/// One rendered event.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = LagSample)]
#[serde(deny_unknown_fields)]
struct Sample {
    /// The event's id.
    id: String,
    /// How long ago the page rendered it, by its own clock.
    ago_ms: f64,
}

/// Browser-observed delivery latency (`herald-lag.js` sends it; `--lag-reports`).
#[utoipa::path(
    post,
    path = "/v1/telemetry/lag", operation_id = "lagReport",
    tag = "pages",
    request_body(content = Report, content_type = "application/json"),
    responses(
        (status = 200, description = "Counted: `{\"accepted\", \"unknown\", \"invalid\"}` (samples of unknown or old events are ignored)", body = Object),
        (status = 400, description = "Not a report", body = herald_runtime::openapi::ErrorBody),
        (status = 413, description = "Over 16 KiB or 100 samples", body = herald_runtime::openapi::ErrorBody),
        (status = 415, description = "Not declared application/json", body = herald_runtime::openapi::ErrorBody),
        (status = 429, description = "Over the report rate", body = herald_runtime::openapi::ErrorBody),
    )
)]
pub(crate) async fn report(
    State(gw): State<Arc<GatewayState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let arrived_ms = herald_core::event::now_ms() as f64;
    let report: Report = read_json(body, MAX_BODY).await?;
    if report.samples.len() > MAX_SAMPLES {
        return Err(ApiError::too_large(format!(
            "the report has {} samples; the limit is {MAX_SAMPLES}",
            report.samples.len()
        )));
    }
    let (mut accepted, mut unknown, mut invalid) = (0u32, 0u32, 0u32);
    for sample in &report.samples {
        let id = sample.id.parse::<EventId>().ok();
        if id.is_none() || !(0.0..=MAX_AGO_MS).contains(&sample.ago_ms) {
            invalid += 1;
            gw.metrics.browser_sample(SampleResult::Invalid);
            continue;
        }
        let published = id
            .filter(|id| id.epoch == gw.hub.epoch())
            .and_then(|id| gw.hub.published_at(id.seq));
        let Some(published) = published else {
            unknown += 1;
            gw.metrics.browser_sample(SampleResult::Unknown);
            continue;
        };
        // A server clock a little behind the publisher's can make it negative: that is zero.
        let lag_ms = (arrived_ms - sample.ago_ms - published as f64).max(0.0);
        gw.metrics.browser_lag.observe(lag_ms / 1000.0);
        gw.metrics.browser_sample(SampleResult::Accepted);
        accepted += 1;
    }
    Ok(
        Json(json!({ "accepted": accepted, "unknown": unknown, "invalid": invalid }))
            .into_response(),
    )
}

/// The script a page includes to report its delivery latency.
#[utoipa::path(get, path = "/herald-lag.js", operation_id = "lagScript", tag = "pages", security(()),
    responses((status = 200, description = "The script", content_type = "text/javascript", body = String)))]
pub(crate) async fn script() -> Response {
    crate::client::javascript(SCRIPT)
}
