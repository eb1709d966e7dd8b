//! Liveness and readiness.
//!
//! `/healthz` answers 200 while the process can answer at all. `/readyz` answers 200 only while the
//! process is not draining, has not been withdrawn, and every registered check passes, so a load
//! balancer stops sending new clients as soon as a drain starts.
//!
//! Withdrawal ([`Health::withdraw`]) is the step before a drain, taken by a Kubernetes `preStop`
//! hook: readiness fails so the endpoint is removed from the load balancers, while the process still
//! accepts connections and keeps its streams until SIGTERM starts the drain.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

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
    withdrawn: Arc<AtomicBool>,
    checks: Vec<Arc<dyn Check>>,
}

impl Health {
    /// Health that is ready until the drain starts.
    pub fn new(drain: DrainWatch) -> Self {
        Self {
            drain,
            withdrawn: Arc::new(AtomicBool::new(false)),
            checks: Vec::new(),
        }
    }

    /// Fails readiness from now on (every clone sees it), without draining. Idempotent.
    pub fn withdraw(&self) {
        if !self.withdrawn.swap(true, Ordering::Relaxed) {
            tracing::info!("withdrawn: readiness fails until the process stops");
        }
    }

    /// Whether [`Self::withdraw`] was called.
    pub fn is_withdrawn(&self) -> bool {
        self.withdrawn.load(Ordering::Relaxed)
    }

    /// Adds a dependency check.
    pub fn with_check(mut self, check: Arc<dyn Check>) -> Self {
        self.checks.push(check);
        self
    }

    /// Whether new clients should be sent here.
    pub fn is_ready(&self) -> bool {
        !self.drain.is_draining() && !self.is_withdrawn() && self.checks.iter().all(|c| c.ready())
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
        let withdrawn = self.is_withdrawn();
        let status = if draining || withdrawn || !failing.is_empty() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        (
            status,
            Json(json!({
                "ready": status == StatusCode::OK,
                "draining": draining,
                "withdrawn": withdrawn,
                "failing": failing,
            })),
        )
    }
}

/// The `/healthz` answer.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}
