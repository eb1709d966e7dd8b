//! The gateway's options and the settings they resolve to.

use std::{sync::Arc, time::Duration};

use herald_auth::Access;
use herald_config::{ConfigError, defaults, units};
use herald_core::Topic;
use herald_runtime::{ArticleOptions, ProcessOptions};

/// The gateway's settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Idle time after which a comment heartbeat is sent.
    pub heartbeat: Duration,
    /// The reconnection delay sent to browsers in `retry:`.
    pub retry: Duration,
    /// The most topics and patterns one connection may name.
    pub max_topics: usize,
    /// The most open SSE connections; past it, 503 with `Retry-After`.
    pub max_connections: usize,
    /// Events queued per subscriber before it is switched to catching up from the store.
    pub subscriber_queue: usize,
    /// Events per store read during replay and catch-up.
    pub replay_page: usize,
    /// Event data per store page during replay and catch-up (a page holds at least one event).
    pub replay_bytes: usize,
    /// Bytes of recently delivered events kept in memory to serve replays and catch-ups without
    /// reading the store; 0 keeps none.
    pub replay_window: usize,
    /// Streams end at a random moment within this after a drain starts.
    pub drain_jitter: Duration,
    /// The most events one history request returns.
    pub history_limit: usize,
    /// How long the hub waits for a missing sequence before reading it from the store.
    pub gap_timeout: Duration,
    /// The topic the demo page shows.
    pub demo_topic: Topic,
    /// Whether the demo page (`/`) and the article's page (`/article`) are served.
    pub demo_pages: bool,
    /// Whether browsers' lag reports (`POST /v1/telemetry/lag`) are taken.
    pub lag_reports: bool,
    /// The topic behind the article's `/api/updates` and `/api/post-update`.
    pub compat_topic: Topic,
    /// Who may read what.
    pub access: Arc<Access>,
}

/// The most events one history request returns.
const HISTORY_LIMIT: usize = 1000;

impl Default for GatewayConfig {
    fn default() -> Self {
        defaults::<GatewayOptions>().config(&defaults(), Arc::new(Access::open()))
    }
}

/// The gateway's options (`herald` and `herald-gateway`).
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayOptions {
    /// Idle time before a comment heartbeat on a stream.
    #[arg(long, env = "HERALD_HEARTBEAT", value_name = "DURATION", default_value = "15s", value_parser = units::positive_duration)]
    pub heartbeat: Duration,
    /// Reconnection delay sent to browsers as `retry:`.
    #[arg(long, env = "HERALD_RETRY", value_name = "DURATION", default_value = "2s", value_parser = units::positive_duration)]
    pub retry: Duration,
    /// Most topics and patterns per stream; 400 past it.
    #[arg(long, env = "HERALD_MAX_TOPICS", value_name = "N", default_value_t = 32, value_parser = units::at_least_one())]
    pub max_topics: usize,
    /// Most open streams; 503 with Retry-After past it.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", value_name = "N", default_value_t = 10_000, value_parser = units::at_least_one())]
    pub max_connections: usize,
    /// Events queued per subscriber before it catches up from the store instead.
    #[arg(long, env = "HERALD_SUBSCRIBER_QUEUE", value_name = "N", default_value_t = 256, value_parser = units::at_least_one())]
    pub subscriber_queue: usize,
    /// Events per store read during replay.
    #[arg(long, env = "HERALD_REPLAY_PAGE", value_name = "N", default_value_t = 256, value_parser = units::at_least_one())]
    pub replay_page: usize,
    /// Event data per store page during replay (past a page's first event): with
    /// --replay-page, what one replaying stream holds in memory.
    #[arg(long, env = "HERALD_REPLAY_BYTES", value_name = "SIZE", default_value = "1MiB", value_parser = units::positive_size)]
    pub replay_bytes: usize,
    /// Bytes of recently delivered events kept in memory, so resumes and catch-ups inside them
    /// read no store; 0 keeps none.
    #[arg(long, env = "HERALD_REPLAY_WINDOW", value_name = "SIZE", default_value = "64MiB", value_parser = units::size)]
    pub replay_window: usize,
    /// Streams end at random within this after a drain starts; below --drain-deadline.
    #[arg(long, env = "HERALD_DRAIN_JITTER", value_name = "DURATION", default_value = "5s", value_parser = units::duration)]
    pub drain_jitter: Duration,
    /// How long the live feed waits for a missing sequence before reading it from the store.
    #[arg(long, env = "HERALD_GAP_TIMEOUT", value_name = "DURATION", default_value = "100ms", value_parser = units::positive_duration)]
    pub gap_timeout: Duration,
    /// Topic shown by the demo page at /.
    #[arg(long, env = "HERALD_DEMO_TOPIC", value_name = "TOPIC", default_value = "scores", value_parser = Topic::new)]
    pub demo_topic: Topic,
    /// Serve the demo page at / and the article's page at /article (false: 404).
    #[arg(long, env = "HERALD_DEMO_PAGES", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub demo_pages: bool,
    /// Take browsers' delivery-latency reports at POST /v1/telemetry/lag (false: 404, and the demo
    /// page sends none).
    #[arg(long, env = "HERALD_LAG_REPORTS", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub lag_reports: bool,
}

impl GatewayOptions {
    /// Checks the options against the process's and resolves them, with the server's access
    /// rules.
    pub fn resolve(
        self,
        article: &ArticleOptions,
        process: &ProcessOptions,
        access: Arc<Access>,
    ) -> Result<GatewayConfig, ConfigError> {
        if self.drain_jitter >= process.drain_deadline {
            return Err(ConfigError::new(
                "--drain-jitter",
                format_args!(
                    "({:?}) must be shorter than --drain-deadline ({:?})",
                    self.drain_jitter, process.drain_deadline
                ),
            ));
        }
        Ok(self.config(article, access))
    }

    fn config(self, article: &ArticleOptions, access: Arc<Access>) -> GatewayConfig {
        GatewayConfig {
            heartbeat: self.heartbeat,
            retry: self.retry,
            max_topics: self.max_topics,
            max_connections: self.max_connections,
            subscriber_queue: self.subscriber_queue,
            replay_page: self.replay_page,
            replay_bytes: self.replay_bytes,
            replay_window: self.replay_window,
            drain_jitter: self.drain_jitter,
            history_limit: HISTORY_LIMIT,
            gap_timeout: self.gap_timeout,
            demo_topic: self.demo_topic,
            demo_pages: self.demo_pages,
            lag_reports: self.lag_reports,
            compat_topic: article.compat_topic.clone(),
            access,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults() {
        let c = GatewayConfig::default();
        assert_eq!(c.heartbeat, Duration::from_secs(15));
        assert_eq!((c.max_connections, c.replay_window), (10_000, 64 << 20));
        assert_eq!(c.compat_topic.as_str(), "updates");
    }

    #[test]
    fn the_jitter_stays_below_the_deadline() {
        let mut process = defaults::<ProcessOptions>();
        process.drain_deadline = Duration::from_secs(5);
        let e = defaults::<GatewayOptions>()
            .resolve(&defaults(), &process, Arc::new(Access::open()))
            .unwrap_err();
        assert_eq!(e.option(), "--drain-jitter");
    }
}
