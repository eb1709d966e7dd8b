//! The gateway's live feed in the Redis bus mode.

use super::*;
use herald_telemetry::BusOp;
use tokio::time::Instant;

/// Wait between attempts to re-open the subscription.
const RESUBSCRIBE: Duration = Duration::from_millis(500);
/// The most events the poll reads from MongoDB at once.
const POLL_PAGE: usize = 1024;
/// Events waiting for the hub.
const QUEUE: usize = 4096;

/// The gateway's feed in the Redis bus mode: the channel's messages, plus what the poll finds in
/// MongoDB beyond the last message seen.
///
/// Backpressure (G7): the Redis client reads Pub/Sub messages into a buffer of its own without
/// bound, whether or not anyone takes them. So the feed never waits on a hub that is behind with
/// the channel still subscribed: when its queue ([`QUEUE`]) is full it lets go of the channel —
/// Redis stops sending — and the poll reads what was missed from MongoDB (every event is there
/// before its message is sent). It subscribes again once the hub has taken half the queue.
#[derive(Debug, Clone)]
pub struct RedisBus {
    client: redis::Client,
    channel: Arc<str>,
    mongo: Mongo,
    epoch: Epoch,
    poll: Duration,
    subscribed: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl RedisBus {
    /// A bus on `options`' channel; `poll` is how often MongoDB's last sequence is checked.
    pub fn new(
        options: &BusOptions,
        mongo: Mongo,
        epoch: Epoch,
        poll: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: options.redis.client()?,
            channel: options.redis_channel.as_str().into(),
            mongo,
            epoch,
            poll,
            subscribed: Arc::new(AtomicBool::new(false)),
            metrics,
        })
    }

    /// Whether the subscription is up now (a gateway without it still delivers, through the
    /// poll, only later).
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    async fn open(&self) -> redis::RedisResult<redis::aio::PubSubStream> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(&*self.channel).await?;
        Ok(pubsub.into_on_message())
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn subscribe(&self) -> Result<Feed, BusError> {
        // Subscribed before the head is read: an event is on the channel or at most `head`.
        let messages = self
            .open()
            .await
            .map_err(|e| BusError::Backend(Box::new(e)))?;
        self.subscribed.store(true, Ordering::Release);
        let head = self
            .mongo
            .sequenced_head()
            .await
            .map_err(|e| BusError::Backend(Box::new(e)))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(self.clone().feed(messages, head, tx));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

impl RedisBus {
    /// Forwards the channel's messages and the poll's finds until the feed is dropped.
    async fn feed(
        self,
        messages: redis::aio::PubSubStream,
        head: u64,
        tx: mpsc::Sender<Arc<Event>>,
    ) {
        let mut messages = Some(messages);
        // The highest sequence forwarded, and MongoDB's head at the previous poll.
        let (mut last, mut polled) = (head, head);
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let faults = Faults::from_env();
        // When to try to subscribe again, while not subscribed. A deadline that the poll's
        // ticks do not push back (a sleep made anew on each turn never ended with a poll
        // shorter than RESUBSCRIBE).
        let resubscribe = tokio::time::sleep(RESUBSCRIBE);
        tokio::pin!(resubscribe);
        loop {
            let step = match messages.as_mut() {
                Some(stream) => tokio::select! {
                    message = stream.next() => Step::Message(message),
                    _ = tick.tick() => Step::Poll,
                },
                None => tokio::select! {
                    () = &mut resubscribe => Step::Resubscribe,
                    _ = tick.tick() => Step::Poll,
                },
            };
            match step {
                Step::Message(Some(message)) => {
                    if faults.drop_message() {
                        continue;
                    }
                    match decode(message.get_payload_bytes()) {
                        Ok((epoch, event)) if epoch == self.epoch => {
                            let seq = event.seq;
                            match tx.try_send(Arc::new(event)) {
                                Ok(()) => last = last.max(seq),
                                Err(mpsc::error::TrySendError::Closed(_)) => return,
                                Err(mpsc::error::TrySendError::Full(_)) => {
                                    // The hub is behind: let go of the channel rather than let
                                    // the client buffer it; the poll catches up from MongoDB.
                                    tracing::warn!(
                                        after = last,
                                        "the hub is behind the redis channel; reading from mongodb until it catches up"
                                    );
                                    self.metrics.bus_error(BusOp::Feed);
                                    self.subscribed.store(false, Ordering::Release);
                                    messages = None;
                                    resubscribe.as_mut().reset(Instant::now() + RESUBSCRIBE);
                                }
                            }
                        }
                        Ok((epoch, event)) => {
                            tracing::warn!(%epoch, seq = event.seq, ours = %self.epoch, "ignoring an event of another epoch on the channel");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring a message that is not a Herald event");
                        }
                    }
                }
                Step::Message(None) => {
                    tracing::warn!("the redis subscription ended; resubscribing");
                    self.subscribed.store(false, Ordering::Release);
                    messages = None;
                    resubscribe.as_mut().reset(Instant::now() + RESUBSCRIBE);
                }
                // Not before the hub has taken half its queue.
                Step::Resubscribe if tx.capacity() < QUEUE / 2 => {
                    resubscribe.as_mut().reset(Instant::now() + RESUBSCRIBE);
                }
                Step::Resubscribe => match self.open().await {
                    Ok(stream) => {
                        tracing::info!("redis subscription restored");
                        self.subscribed.store(true, Ordering::Release);
                        messages = Some(stream);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "resubscribing to redis failed");
                        resubscribe.as_mut().reset(Instant::now() + RESUBSCRIBE);
                    }
                },
                Step::Poll => {
                    // What MongoDB held one poll ago and no message brought since: its message
                    // was lost (or never sent). Read it. A message still on its way is then a
                    // duplicate, which the hub drops.
                    if polled > last {
                        match self.read_range(last, polled, &tx).await {
                            Ok(true) => last = polled,
                            Ok(false) => return,
                            Err(e) => {
                                tracing::warn!(error = %e, "reading missed events from mongodb failed")
                            }
                        }
                    }
                    match self.mongo.sequenced_head().await {
                        Ok(head) => polled = head,
                        Err(e) => tracing::debug!(error = %e, "reading mongodb's head failed"),
                    }
                }
            }
        }
    }

    /// Forwards the events in `(after, upper]`; false when the feed was dropped.
    async fn read_range(
        &self,
        mut after: u64,
        upper: u64,
        tx: &mpsc::Sender<Arc<Event>>,
    ) -> Result<bool, StoreError> {
        let all = TopicFilter::parse([">"]).expect("`>` is a valid pattern");
        while after < upper {
            let events = self.mongo.read(&all, after, upper, POLL_PAGE).await?;
            let full = events.len() >= POLL_PAGE;
            self.metrics.redis_polled.inc_by(events.len() as u64);
            for event in events {
                after = event.seq;
                if tx.send(event).await.is_err() {
                    return Ok(false);
                }
            }
            if !full {
                break;
            }
        }
        Ok(true)
    }
}

enum Step {
    Message(Option<redis::Msg>),
    Resubscribe,
    Poll,
}

/// The test hook: with the `fault-injection` feature, `HERALD_FAULT=drop-redis:P` drops each
/// message the gateway receives with probability P (0 to 1), as a congested Pub/Sub would.
#[derive(Debug, Clone, Copy)]
struct Faults {
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    drop: f64,
}

impl Faults {
    #[cfg(feature = "fault-injection")]
    fn from_env() -> Self {
        let drop = crate::fault_hooks()
            .iter()
            .find_map(|hook| hook.strip_prefix("drop-redis:")?.parse().ok())
            .unwrap_or(0.0);
        if drop > 0.0 {
            eprintln!("fault: dropping {drop} of the redis messages");
        }
        Self { drop }
    }

    #[cfg(not(feature = "fault-injection"))]
    fn from_env() -> Self {
        Self { drop: 0.0 }
    }

    fn drop_message(self) -> bool {
        self.drop > 0.0 && fastrand::f64() < self.drop
    }
}
