//! Liveness and readiness.
//!
//! `/healthz` answers 200 while the process can answer at all. `/readyz` answers 200 only while the
//! process is not draining and every registered check passes, so a load balancer stops sending new
//! clients as soon as a drain starts.

use std::{fmt, sync::Arc};

use axum::{Json, http::StatusCode, response::IntoResponse};
use serde_json::json;

use crate::DrainWatch;

/// A dependency readiness depends on (a database, a broker).
pub trait Check: Send + Sync + fmt::Debug {
    /// A short name for the readiness report.
    fn name(&self) -> &'static str;
    /// Whether the dependency is usable now.
    fn ready(&self) -> bool;
}

/// The process's health.
#[derive(Debug, Clone)]
pub struct Health {
    drain: DrainWatch,
    checks: Vec<Arc<dyn Check>>,
}

impl Health {
    /// Health that is ready until the drain starts.
    pub fn new(drain: DrainWatch) -> Self {
        Self {
            drain,
            checks: Vec::new(),
        }
    }

    /// Adds a dependency check.
    pub fn with_check(mut self, check: Arc<dyn Check>) -> Self {
        self.checks.push(check);
        self
    }

    /// Whether new clients should be sent here.
    pub fn is_ready(&self) -> bool {
        !self.drain.is_draining() && self.checks.iter().all(|c| c.ready())
    }

    /// The `/readyz` answer.
    pub fn readyz(&self) -> impl IntoResponse + use<> {
        let failing: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| !c.ready())
            .map(|c| c.name())
            .collect();
        let draining = self.drain.is_draining();
        let status = if draining || !failing.is_empty() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        (
            status,
            Json(
                json!({ "ready": status == StatusCode::OK, "draining": draining, "failing": failing }),
            ),
        )
    }
}

/// The `/healthz` answer.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}
