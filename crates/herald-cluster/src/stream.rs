//! The `HERALD` stream: created at start-up when missing, checked and brought to the configured
//! retention when present, and its epoch.
//!
//! The epoch lives in the stream's metadata (`herald.epoch`) and in MongoDB's `meta` collection.
//! A stream that is missing while MongoDB holds history (JetStream's storage was lost) is created
//! again in the same epoch, starting right after the highest sequence MongoDB ever held (its
//! high-water mark, which retention does not remove), so ids stay valid and unique. A stream and a database from two different epochs are refused: the operator must say
//! which history is the real one.

use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{
    self, ErrorCode,
    context::{CreateStreamErrorKind, GetStreamErrorKind},
    stream::{Config, DiscardPolicy, RetentionPolicy, StorageType},
};
use herald_core::Epoch;

use crate::{ClusterConfig, Mongo, envelope::ALL_SUBJECTS};

/// The metadata key holding the epoch.
const EPOCH_KEY: &str = "herald.epoch";

/// The stream configuration Herald wants.
pub fn config(cluster: &ClusterConfig, epoch: Epoch, first_sequence: Option<u64>) -> Config {
    Config {
        name: cluster.stream.clone(),
        description: Some("Herald events: herald.events.<topic>".to_owned()),
        subjects: vec![ALL_SUBJECTS.to_owned()],
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        num_replicas: cluster.stream_replicas,
        max_age: cluster.stream_max_age.unwrap_or(Duration::ZERO),
        max_bytes: cluster
            .stream_max_bytes
            .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        duplicate_window: cluster.duplicate_window,
        allow_direct: true,
        allow_atomic_publish: true,
        metadata: HashMap::from([(EPOCH_KEY.to_owned(), epoch.to_string())]),
        first_sequence,
        ..Default::default()
    }
}

/// Makes sure the stream exists with Herald's configuration; answers its epoch.
pub async fn ensure(
    js: &jetstream::Context,
    cluster: &ClusterConfig,
    mongo: &Mongo,
) -> anyhow::Result<Epoch> {
    for _ in 0..5 {
        match js.get_stream(&cluster.stream).await {
            Ok(mut stream) => {
                let info = stream.info().await.context("reading the stream's info")?;
                let current = info.config.clone();
                let Some(epoch) = current
                    .metadata
                    .get(EPOCH_KEY)
                    .and_then(|e| u32::from_str_radix(e, 16).ok())
                    .map(Epoch)
                else {
                    bail!(
                        "stream {} exists but was not created by Herald (no {EPOCH_KEY} metadata); name another with --stream",
                        cluster.stream
                    );
                };
                if !current.subjects.iter().any(|s| s == ALL_SUBJECTS) {
                    bail!(
                        "stream {} does not take {ALL_SUBJECTS}; name another with --stream",
                        cluster.stream
                    );
                }
                let wanted = config(cluster, epoch, None);
                if differs(&current, &wanted) {
                    tracing::info!(stream = %cluster.stream, "updating the stream's retention and limits");
                    let mut update = wanted;
                    update.first_sequence = current.first_sequence;
                    js.update_stream(update)
                        .await
                        .context("updating the stream")?;
                }
                let kept = mongo
                    .adopt_epoch(epoch)
                    .await
                    .context("recording the epoch in MongoDB")?;
                if kept != epoch {
                    bail!(
                        "MongoDB holds the history of epoch {kept} but stream {} is epoch {epoch}: point --mongodb-database at this stream's database, or delete the stream to continue MongoDB's sequence",
                        cluster.stream
                    );
                }
                return Ok(epoch);
            }
            Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {
                let (epoch, first) = match mongo.epoch().await.context("reading MongoDB's epoch")? {
                    Some(epoch) => {
                        let head = mongo
                            .handed_out()
                            .await
                            .context("reading MongoDB's last sequence")?;
                        tracing::warn!(stream = %cluster.stream, %epoch, continue_after = head, "the stream is missing; recreating it from MongoDB's history");
                        (epoch, (head > 0).then_some(head + 1))
                    }
                    None => (Epoch(fastrand::u32(1..)), None),
                };
                match js.create_stream(config(cluster, epoch, first)).await {
                    Ok(_) => tracing::info!(stream = %cluster.stream, %epoch, "created the stream"),
                    // Another process created it first: read it on the next turn.
                    Err(e) if matches!(e.kind(), CreateStreamErrorKind::JetStream(_)) => {
                        tracing::debug!(error = %e, "creating the stream raced another process");
                    }
                    Err(e) => return Err(e).context("creating the stream"),
                }
            }
            Err(e) => return Err(e).context("reading the stream"),
        }
    }
    bail!("the stream {} could not be created or read", cluster.stream)
}

fn differs(current: &Config, wanted: &Config) -> bool {
    current.max_age != wanted.max_age
        || current.max_bytes != wanted.max_bytes
        || current.num_replicas != wanted.num_replicas
        || current.duplicate_window != wanted.duplicate_window
        || current.allow_direct != wanted.allow_direct
        || current.allow_atomic_publish != wanted.allow_atomic_publish
        || current.discard != wanted.discard
}
