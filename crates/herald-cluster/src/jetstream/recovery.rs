//! Making the stream again while running, when NATS lost it (its storage, or an operator's
//! delete): the operation that finds it missing restores it, as start-up does, and tries once
//! more.

use super::*;

/// What it takes to make the stream again while running, when NATS lost it.
#[derive(Debug)]
pub(super) struct Recovery {
    config: ClusterConfig,
    mongo: Mongo,
    /// The highest sequence this process saw handed out: published or delivered live.
    seen: AtomicU64,
    /// One recovery at a time; a caller that waited finds the stream made.
    one: tokio::sync::Mutex<()>,
}

/// The stream is gone: NATS lost its storage (or an operator deleted it). Carried inside
/// [`StoreError::Unavailable`] so that the operation can make the stream again and try once more.
#[derive(Debug)]
pub(super) struct StreamMissing;

impl Recovery {
    pub(super) fn new(config: &ClusterConfig, mongo: &Mongo) -> Self {
        Self {
            config: config.clone(),
            mongo: mongo.clone(),
            seen: AtomicU64::new(0),
            one: tokio::sync::Mutex::new(()),
        }
    }
}

impl std::fmt::Display for StreamMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the stream is missing")
    }
}

impl std::error::Error for StreamMissing {}

fn missing(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(inner) if inner.is::<StreamMissing>())
}

impl JetStream {
    /// Runs `op`; if it found the stream missing, makes the stream again ([`JetStream::restore`])
    /// and runs it once more.
    pub(super) async fn restoring<T, F>(&self, op: impl Fn() -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        match op().await {
            Err(e) if missing(&e) => {
                self.restore().await?;
                op().await
            }
            done => done,
        }
    }

    /// A consumer made with `config` on the stream (made again first if NATS lost it), and the
    /// stream's handle.
    pub(super) async fn consumer<C>(
        &self,
        config: C,
    ) -> Result<
        (
            jetstream::stream::Stream<()>,
            jetstream::consumer::Consumer<C>,
        ),
        StoreError,
    >
    where
        C: jetstream::consumer::IntoConsumerConfig + jetstream::consumer::FromConsumer + Clone,
    {
        self.restoring(|| async {
            let stream = self
                .js
                .get_stream_no_info(&*self.stream)
                .await
                .map_err(unavailable)?;
            let consumer = stream
                .create_consumer(config.clone())
                .await
                .map_err(consumer_error)?;
            Ok((stream, consumer))
        })
        .await
    }

    /// Makes the stream again after NATS lost it, as start-up does ([`stream::ensure`]): in the
    /// same epoch, after the highest sequence MongoDB knows was handed out — first raised to the
    /// highest this process saw, which MongoDB may not hold yet (an event published or delivered
    /// live whose insert had not happened). A gateway's live feed tries within half a second of
    /// NATS coming back, so it usually records what it delivered before a publish recreates the
    /// stream (not always: a publish can come first). Nothing is done when the stream is there
    /// again.
    async fn restore(&self) -> Result<(), StoreError> {
        let recovery = &self.recovery;
        let _one = recovery.one.lock().await;
        match self.js.get_stream(&*self.stream).await {
            Ok(_) => return Ok(()),
            Err(e) if !stream_not_found(&e) => return Err(unavailable(e)),
            Err(_) => {}
        }
        let seen = recovery.seen.load(Ordering::Relaxed);
        recovery.mongo.raise_handed_out(seen).await?;
        tracing::warn!(stream = %self.stream, seen, "the stream is gone (NATS lost its storage); making it again");
        let epoch = stream::ensure(&self.js, &recovery.config, &recovery.mongo)
            .await
            .map_err(|e| unavailable(format!("making the stream again: {e:#}")))?;
        if epoch != self.epoch {
            return Err(unavailable(format!(
                "the stream was made again in epoch {epoch}, not this process's {}; restart it",
                self.epoch
            )));
        }
        Ok(())
    }

    /// Notes a sequence handed out, for [`JetStream::restore`].
    pub(super) fn saw(&self, seq: u64) {
        self.recovery.seen.fetch_max(seq, Ordering::Relaxed);
    }
}

/// Whether reading the stream found none.
pub(super) fn stream_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// A consumer could not be made; [`StreamMissing`] when its stream is gone.
pub(super) fn consumer_error(e: async_nats::jetstream::stream::ConsumerError) -> StoreError {
    if matches!(e.kind(), ConsumerErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
    {
        unavailable(StreamMissing)
    } else {
        unavailable(e)
    }
}
