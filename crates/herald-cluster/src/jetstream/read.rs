//! Replay reads: one page at a time, each with a short-lived consumer filtered to the
//! connection's subjects.

use super::*;

/// How long an abandoned replay consumer lives on the server.
const READ_CONSUMER_TTL: Duration = Duration::from_secs(30);

impl JetStream {
    /// One page of events matching `filter` after `after`, read with a short-lived consumer
    /// filtered to the connection's subjects. `head` is the stream's last sequence as the caller
    /// saw it; a page that reaches the end answers `next_after >= head`.
    pub async fn read(
        &self,
        filter: &TopicFilter,
        after: u64,
        limit: usize,
        head: u64,
    ) -> Result<Page, StoreError> {
        if after >= head || limit == 0 {
            return Ok(Page {
                events: Vec::new(),
                next_after: after.max(head),
                end: after >= head,
            });
        }
        let _turn = self.reads.acquire().await.map_err(unavailable)?;
        let (stream, consumer) = self.consumer(read_consumer(filter, after)).await?;
        let name = consumer.cached_info().name.clone();
        let pending = consumer.cached_info().num_pending;
        let want = (limit as u64).min(pending) as usize;
        let mut fetched = Fetched {
            events: Vec::with_capacity(want),
            last_seq: after,
            read: 0,
        };
        if want > 0 {
            tokio::time::timeout(self.timeout, fetched.fetch(&consumer, want))
                .await
                .map_err(|_| unavailable("JetStream did not deliver the replay page in time"))??;
        }
        let Fetched {
            events,
            last_seq,
            read,
        } = fetched;
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        if want > 0 && read == 0 {
            return Err(unavailable(
                "JetStream delivered none of the pending events",
            ));
        }
        let end = read as u64 >= pending;
        Ok(Page {
            events,
            next_after: if end { last_seq.max(head) } else { last_seq },
            end,
        })
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

/// What one replay fetch got: the events, the last sequence delivered, how many messages.
struct Fetched {
    events: Vec<Arc<Event>>,
    last_seq: u64,
    read: usize,
}

impl Fetched {
    /// Fetches up to `want` messages; one that is not a Herald event is passed over.
    async fn fetch(
        &mut self,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
        want: usize,
    ) -> Result<(), StoreError> {
        let mut messages = consumer
            .fetch()
            .max_messages(want)
            .messages()
            .await
            .map_err(unavailable)?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(unavailable)?;
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            self.last_seq = seq;
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
