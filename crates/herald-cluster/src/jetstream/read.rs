//! Replay reads: a [`Reader`] holds one consumer, filtered to the connection's subjects, for every
//! page of a replay, and deletes it when the replay is done.

use tokio::sync::OwnedSemaphorePermit;

use super::*;

/// How long an abandoned replay consumer lives on the server.
const READ_CONSUMER_TTL: Duration = Duration::from_secs(30);

impl JetStream {
    /// A replay read of `filter`'s events after `after`: no request until its first page.
    pub fn reader(&self, filter: &TopicFilter, after: u64) -> Reader {
        Reader {
            js: self.clone(),
            filter: filter.clone(),
            after,
            held: None,
        }
    }
}

/// One replay's read of the stream: a consumer made at its first page and held for the next ones,
/// so a replay costs one consumer, not one per page.
///
/// A held consumer takes one of the process's turns (`CONCURRENT_READS`) for as long as it is
/// held. When every turn is taken, a reader hands its turn and its consumer back after each page
/// and makes a new consumer for the next one, so thousands of replays at once still share the
/// turns (and JetStream's consumer limit) instead of waiting for the first ones to finish.
#[derive(Debug)]
pub struct Reader {
    js: JetStream,
    filter: TopicFilter,
    /// The last sequence the pages so far covered.
    after: u64,
    held: Option<Held>,
}

/// A consumer positioned right after [`Reader::after`].
#[derive(Debug)]
struct Held {
    stream: jetstream::stream::Stream<()>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    /// Matching messages after the position, as the server last counted them.
    pending: u64,
    _turn: OwnedSemaphorePermit,
}

impl Drop for Held {
    fn drop(&mut self) {
        let (stream, name) = (
            self.stream.clone(),
            self.consumer.cached_info().name.clone(),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = stream.delete_consumer(&name).await;
            });
        }
    }
}

impl Reader {
    /// The next page: at most `limit` events and about `max_bytes` of messages (at least one
    /// message, whatever its size) after the last page. `head` is the stream's last sequence as
    /// the caller saw it; the page that reaches the end answers `next_after >= head`.
    pub async fn next(
        &mut self,
        limit: usize,
        max_bytes: usize,
        head: u64,
    ) -> Result<Page, StoreError> {
        let after = self.after;
        if after >= head || limit == 0 {
            return Ok(Page {
                events: Vec::new(),
                next_after: after.max(head),
                end: after >= head,
            });
        }
        let mut held = match self.held.take() {
            Some(held) => held,
            None => self.hold().await?,
        };
        // A consumer the server dropped (idle past its TTL while the client was slow, NATS
        // restarted) is made again once, at the same position.
        let fetched = match self.fetch(&held, limit, max_bytes).await {
            Ok(fetched) => fetched,
            Err(e) => {
                tracing::debug!(error = %e, after, "replay fetch failed; making the consumer again");
                drop(held);
                held = self.hold().await?;
                self.fetch(&held, limit, max_bytes).await?
            }
        };
        let Fetched {
            events,
            last_seq,
            read,
            pending,
        } = fetched;
        if read == 0 && held.pending > 0 {
            return Err(unavailable(
                "JetStream delivered none of the pending events",
            ));
        }
        let pending = if read == 0 { 0 } else { pending };
        let end = pending == 0;
        let next_after = if end { last_seq.max(head) } else { last_seq };
        self.after = next_after;
        held.pending = pending;
        if !end && self.js.reads.available_permits() > 0 {
            self.held = Some(held);
        }
        Ok(Page {
            events,
            next_after,
            end,
        })
    }

    /// A consumer from `after + 1` on, with a turn.
    async fn hold(&self) -> Result<Held, StoreError> {
        let turn = Arc::clone(&self.js.reads)
            .acquire_owned()
            .await
            .map_err(unavailable)?;
        let (stream, consumer) = self
            .js
            .consumer(read_consumer(&self.filter, self.after))
            .await?;
        let pending = consumer.cached_info().num_pending;
        Ok(Held {
            stream,
            consumer,
            pending,
            _turn: turn,
        })
    }

    /// One fetch of up to `limit` messages and about `max_bytes`, within the backend timeout.
    async fn fetch(
        &self,
        held: &Held,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Fetched, StoreError> {
        let want = (limit as u64).min(held.pending) as usize;
        let mut fetched = Fetched {
            events: Vec::with_capacity(want),
            last_seq: self.after,
            read: 0,
            pending: held.pending,
        };
        if want > 0 {
            // JetStream refuses a pull whose byte limit is below its next message: the limit is
            // at least the largest message NATS takes (and at most what its JSON field holds).
            let floor = self.js.client.server_info().max_payload + 4096;
            let max_bytes = max_bytes.clamp(floor, 1 << 40);
            tokio::time::timeout(
                self.js.timeout,
                fetched.fetch(&held.consumer, want, max_bytes),
            )
            .await
            .map_err(|_| unavailable("JetStream did not deliver the replay page in time"))??;
        }
        Ok(fetched)
    }
}

/// A short-lived, unacknowledged consumer of `filter`'s subjects from `after + 1` on.
fn read_consumer(filter: &TopicFilter, after: u64) -> pull::Config {
    let subjects = filter_subjects(filter);
    let (filter_subject, filter_subjects) = match subjects.len() {
        1 => (subjects[0].clone(), Vec::new()),
        _ => (String::new(), subjects),
    };
    pull::Config {
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: after + 1,
        },
        ack_policy: AckPolicy::None,
        filter_subject,
        filter_subjects,
        inactive_threshold: READ_CONSUMER_TTL,
        memory_storage: true,
        num_replicas: 1,
        ..Default::default()
    }
}

/// What one replay fetch got: the events, the last sequence delivered, how many messages, and
/// how many the server counted after the last one.
struct Fetched {
    events: Vec<Arc<Event>>,
    last_seq: u64,
    read: usize,
    pending: u64,
}

impl Fetched {
    /// Fetches up to `want` messages and about `max_bytes`; one that is not a Herald event is
    /// passed over.
    async fn fetch(
        &mut self,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
        want: usize,
        max_bytes: usize,
    ) -> Result<(), StoreError> {
        let mut messages = consumer
            .fetch()
            .max_messages(want)
            .max_bytes(max_bytes)
            .messages()
            .await
            .map_err(unavailable)?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(unavailable)?;
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            self.last_seq = seq;
            self.pending = info.pending;
            self.read += 1;
            match decode(&message.payload, seq, traceparent(message.headers.as_ref())) {
                Ok(d) => self.events.push(d.event),
                Err(e) => {
                    tracing::warn!(seq, error = %e, "skipping a message that is not a Herald event")
                }
            }
        }
        Ok(())
    }
}
