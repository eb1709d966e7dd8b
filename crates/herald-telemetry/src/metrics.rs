//! The metrics Herald exports on `/metrics`.

use std::sync::Mutex;

use crate::labels::{
    BridgeDirection, BridgeOutcome, BusOp, CloseReason, Consumer, PublishOutcome, Rejection,
    SampleResult, StoreOp, Tier,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TierLabel {
    tier: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BridgeLabel {
    direction: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConsumerLabel {
    consumer: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Latency buckets from 1 ms to 10 s.
const LAG_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type RenderHook = Box<dyn Fn() + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResumeLabel {
    recovered: &'static str,
    reason: &'static str,
}

/// Every metric, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// Open SSE connections.
    pub connections_open: Gauge,
    /// SSE connections accepted.
    pub connections_accepted: Counter,
    closed: Family<ReasonLabel, Counter>,
    rejected: Family<RejectLabel, Counter>,
    /// Events accepted by publish requests.
    pub events_published: Counter,
    /// Publish request latency, from request to durable answer.
    pub publish_duration: Histogram,
    /// Event frames handed to subscribers (live and replayed).
    pub events_delivered: Counter,
    /// Event frames sent from the store (resume and catch-up).
    pub events_replayed: Counter,
    resumes: Family<ResumeLabel, Counter>,
    /// Subscribers whose queue overflowed and who caught up from the store in place.
    pub slow_caught_up: Counter,
    /// Subscribers cut off because they stopped reading (write timeout).
    pub slow_cut_off: Counter,
    /// Gaps in the live feed filled from the store by the hub.
    pub gap_fills: Counter,
    /// Events read for replay, catch-up or gap fills, by tier (`jetstream`, `mongodb`).
    replay_reads: Family<TierLabel, Counter>,
    /// Events written to MongoDB by the archiver (they had not been yet, or it could not tell).
    pub events_archived: Counter,
    /// Subscribers registered with the hub (live connections of this gateway), counted at
    /// scrape time.
    pub subscribers: Gauge,
    /// Publish-to-fan-out lag: from the event's publish time to the hub handing it to subscriber
    /// queues, once per event.
    pub delivery_lag: Histogram,
    /// Publish-to-render lag reported by browsers (sampled by the page).
    pub browser_lag: Histogram,
    browser_samples: Family<ResultLabel, Counter>,
    /// Events held by the hub behind a gap in the sequence.
    pub hub_pending: Gauge,
    /// Frames queued for subscribers and not yet written (summed at scrape time).
    pub queued_frames: Gauge,
    bus_errors: Family<OpLabel, Counter>,
    store_errors: Family<OpLabel, Counter>,
    consumer_pending: Family<ConsumerLabel, Gauge>,
    publish_requests: Family<OutcomeLabel, Counter>,
    bridged: Family<BridgeLabel, Counter>,
    /// Events the Redis bus mode's poll read from MongoDB because no Redis message brought them.
    pub redis_polled: Counter,
    hooks: Mutex<Vec<RenderHook>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("herald"),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            closed: Family::default(),
            rejected: Family::default(),
            events_published: Counter::default(),
            publish_duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            events_delivered: Counter::default(),
            events_replayed: Counter::default(),
            resumes: Family::default(),
            slow_caught_up: Counter::default(),
            slow_cut_off: Counter::default(),
            gap_fills: Counter::default(),
            replay_reads: Family::default(),
            events_archived: Counter::default(),
            subscribers: Gauge::default(),
            delivery_lag: Histogram::new(LAG_BUCKETS),
            browser_lag: Histogram::new(LAG_BUCKETS),
            browser_samples: Family::default(),
            hub_pending: Gauge::default(),
            queued_frames: Gauge::default(),
            bus_errors: Family::default(),
            store_errors: Family::default(),
            consumer_pending: Family::default(),
            publish_requests: Family::default(),
            bridged: Family::default(),
            redis_polled: Counter::default(),
            hooks: Mutex::default(),
        };
        let mut registry = Registry::with_prefix("herald");
        m.register_connections(&mut registry);
        m.register_events(&mut registry);
        m.register_backends(&mut registry);
        m.registry = registry;
        m
    }

    /// Registers the stream side's metrics: connections, resumes, slow subscribers, the hub.
    fn register_connections(&self, r: &mut Registry) {
        r.register(
            "connections_open",
            "Open SSE connections",
            self.connections_open.clone(),
        );
        r.register(
            "connections_accepted",
            "SSE connections accepted",
            self.connections_accepted.clone(),
        );
        r.register(
            "connections_closed",
            "SSE connections ended, by reason",
            self.closed.clone(),
        );
        r.register(
            "connections_rejected",
            "SSE connections refused, by reason (limit, draining)",
            self.rejected.clone(),
        );
        r.register(
            "resumes",
            "Connections that carried a Last-Event-ID, by verdict",
            self.resumes.clone(),
        );
        r.register(
            "slow_subscribers_caught_up",
            "Subscribers whose queue overflowed and caught up from the store",
            self.slow_caught_up.clone(),
        );
        r.register(
            "slow_subscribers_cut_off",
            "Connections cut off because the peer stopped reading",
            self.slow_cut_off.clone(),
        );
        r.register(
            "hub_gap_fills",
            "Gaps in the live feed filled from the store",
            self.gap_fills.clone(),
        );
        r.register(
            "subscribers",
            "Subscribers registered with this gateway's hub",
            self.subscribers.clone(),
        );
        r.register(
            "hub_pending_events",
            "Events the hub holds behind a gap in the sequence",
            self.hub_pending.clone(),
        );
        r.register(
            "subscriber_queued_frames",
            "Frames queued for subscribers, not yet written",
            self.queued_frames.clone(),
        );
    }

    /// Registers the event path's metrics: publishes, deliveries, replays, lag.
    fn register_events(&self, r: &mut Registry) {
        r.register(
            "events_published",
            "Events accepted by publish requests",
            self.events_published.clone(),
        );
        r.register(
            "publish_duration_seconds",
            "Publish request latency until the durable answer",
            self.publish_duration.clone(),
        );
        r.register(
            "events_delivered",
            "Event frames handed to subscribers",
            self.events_delivered.clone(),
        );
        r.register(
            "replay_reads",
            "Events read back for replay, catch-up or gap fills, by tier (window, jetstream, mongodb)",
            self.replay_reads.clone(),
        );
        r.register(
            "events_archived",
            "Events the archiver wrote to MongoDB",
            self.events_archived.clone(),
        );
        r.register(
            "events_replayed",
            "Event frames sent from the store",
            self.events_replayed.clone(),
        );
        r.register(
            "delivery_lag_seconds",
            "Time from an event's publish to this gateway handing it to its subscribers, per event",
            self.delivery_lag.clone(),
        );
        r.register(
            "browser_delivery_lag_seconds",
            "Publish-to-render time reported by browsers (sampled)",
            self.browser_lag.clone(),
        );
        r.register(
            "browser_lag_samples",
            "Browser lag samples received, by result (accepted, unknown, invalid)",
            self.browser_samples.clone(),
        );
    }

    /// Registers the backends' and the bridge's metrics: errors, consumers, outcomes.
    fn register_backends(&self, r: &mut Registry) {
        r.register(
            "bus_errors",
            "Bus failures, by operation (publish, announce, feed)",
            self.bus_errors.clone(),
        );
        r.register(
            "store_errors",
            "Store failures, by operation (append, read, bounds, archive)",
            self.store_errors.clone(),
        );
        r.register(
            "jetstream_consumer_pending",
            "Messages a JetStream consumer has yet to receive, by consumer (live, archiver)",
            self.consumer_pending.clone(),
        );
        r.register(
            "publish_requests",
            "Publish requests, by outcome (created, duplicate, rejected, unavailable)",
            self.publish_requests.clone(),
        );
        r.register(
            "bridge_messages",
            "Messages the Redis bridge handled, by direction (from_redis, to_redis) and outcome \
             (published, duplicate, skipped_loop, skipped_topic, invalid, failed)",
            self.bridged.clone(),
        );
        r.register(
            "redis_bus_polled_events",
            "Events the gateway's poll of MongoDB found with no Redis message for them \
             (`--bus redis`: lost at the tail of the feed, or during a Redis outage)",
            self.redis_polled.clone(),
        );
    }

    /// Counts a message the Redis bridge handled.
    pub fn bridged(&self, direction: BridgeDirection, outcome: BridgeOutcome) {
        self.bridged
            .get_or_create(&BridgeLabel {
                direction: direction.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Counts a connection that ended.
    pub fn connection_closed(&self, reason: CloseReason) {
        self.closed
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts a connection refused (`limit`, `draining`).
    pub fn connection_rejected(&self, reason: Rejection) {
        self.rejected
            .get_or_create(&RejectLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts a resume verdict; `reason` is empty when recovered.
    pub fn resume(&self, recovered: bool, reason: &'static str) {
        let recovered = if recovered { "true" } else { "false" };
        self.resumes
            .get_or_create(&ResumeLabel { recovered, reason })
            .inc();
    }

    /// Counts events read back from a tier (`window`, `jetstream`, `mongodb`).
    pub fn replay_read(&self, tier: Tier, events: u64) {
        self.replay_reads
            .get_or_create(&TierLabel {
                tier: tier.as_str(),
            })
            .inc_by(events);
    }

    /// Counts a bus failure (`publish`, `announce`, `feed`).
    pub fn bus_error(&self, op: BusOp) {
        self.bus_errors
            .get_or_create(&OpLabel { op: op.as_str() })
            .inc();
    }

    /// Counts a store failure (`append`, `read`, `bounds`, `archive`).
    pub fn store_error(&self, op: StoreOp) {
        self.store_errors
            .get_or_create(&OpLabel { op: op.as_str() })
            .inc();
    }

    /// The gauge of how many messages a JetStream consumer (`live`, `archiver`) has yet to
    /// receive: take it once, set it per message.
    pub fn consumer_pending(&self, consumer: Consumer) -> Gauge {
        self.consumer_pending
            .get_or_create(&ConsumerLabel {
                consumer: consumer.as_str(),
            })
            .clone()
    }

    /// Counts a publish request's outcome (`created`, `duplicate`, `rejected`, `unavailable`).
    pub fn publish_request(&self, outcome: PublishOutcome) {
        self.publish_requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Counts a browser lag sample (`accepted`, `unknown`, `invalid`).
    pub fn browser_sample(&self, result: SampleResult) {
        self.browser_samples
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
    }

    /// Runs `hook` before every render, to set gauges that are cheaper to read than to track.
    pub fn on_render(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks
            .lock()
            .expect("metrics hooks")
            .push(Box::new(hook));
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        for hook in self.hooks.lock().expect("metrics hooks").iter() {
            hook();
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_text() {
        let m = Metrics::new();
        m.events_published.inc_by(3);
        m.resume(false, "expired");
        m.connection_closed(CloseReason::Drain);
        let text = m.render();
        assert!(text.contains("herald_events_published_total 3"), "{text}");
        assert!(text.contains(r#"herald_resumes_total{recovered="false",reason="expired"} 1"#));
        assert!(text.contains(r#"herald_connections_closed_total{reason="drain"} 1"#));
        assert!(text.ends_with("# EOF\n"));
    }

    /// Every metric the shipped Grafana dashboard queries exists (names drift otherwise).
    #[test]
    fn the_dashboard_queries_only_metrics_that_exist() {
        let dashboard = include_str!("../../../deploy/grafana/herald-dashboard.json");
        let m = Metrics::new();
        // Families with labels appear once they have a sample.
        m.connection_closed(CloseReason::Client);
        m.connection_rejected(Rejection::Limit);
        m.resume(true, "");
        m.replay_read(Tier::Jetstream, 1);
        m.bus_error(BusOp::Feed);
        m.store_error(StoreOp::Read);
        m.consumer_pending(Consumer::Live);
        m.publish_request(PublishOutcome::Created);
        m.browser_sample(SampleResult::Accepted);
        let text = m.render();
        let mut used = 0;
        for (start, _) in dashboard.match_indices("herald_") {
            let name: String = dashboard[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name == "herald" || name.starts_with("herald_dashboard") {
                continue;
            }
            used += 1;
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                "the dashboard queries {name}, which /metrics does not export"
            );
        }
        assert!(used > 20, "{used}");
    }
}
