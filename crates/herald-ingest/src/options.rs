//! The ingest's options and the settings they resolve to.

use std::sync::Arc;

use herald_auth::Access;
use herald_config::{defaults, units};
use herald_core::Topic;
use herald_runtime::ArticleOptions;

/// The ingest service's settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The largest request body accepted, in bytes (413 past it).
    pub max_body_bytes: usize,
    /// The most events in one batch (413 past it).
    pub max_batch: usize,
    /// The topic behind the article's `PUT /api/post-update`.
    pub compat_topic: Topic,
    /// Who may publish (and read the history the ingest also serves).
    pub access: Arc<Access>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        defaults::<IngestOptions>().resolve(&defaults(), Arc::new(Access::open()))
    }
}

/// The publish API's options (`herald` and `herald-ingest`).
#[derive(Debug, Clone, clap::Args)]
pub struct IngestOptions {
    /// Largest request body; 413 past it.
    #[arg(long, env = "HERALD_MAX_BODY", value_name = "SIZE", default_value = "64KiB", value_parser = units::positive_size)]
    pub max_body: usize,
    /// Most events in one batch publish; 413 past it (JetStream's atomic batches allow 1000).
    #[arg(long, env = "HERALD_MAX_BATCH", value_name = "N", default_value_t = 100, value_parser = units::count(1..=1000))]
    pub max_batch: usize,
}

impl IngestOptions {
    /// The settings these options give (every value was checked when it was parsed), with the
    /// server's access rules.
    pub fn resolve(self, article: &ArticleOptions, access: Arc<Access>) -> IngestConfig {
        IngestConfig {
            max_body_bytes: self.max_body,
            max_batch: self.max_batch,
            compat_topic: article.compat_topic.clone(),
            access,
        }
    }
}
