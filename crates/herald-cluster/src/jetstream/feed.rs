//! The gateway's one live feed: an ordered consumer over every subject.

use super::*;

/// Wait between attempts to re-open the live feed.
const FEED_RETRY: Duration = Duration::from_millis(500);

#[async_trait]
impl Bus for JetStream {
    /// The gateway's one live feed: an ordered consumer over every subject, starting after the
    /// stream's last sequence now. If it fails (NATS restarted, the consumer vanished) it is
    /// opened again after the last sequence it delivered, so nothing is skipped.
    async fn subscribe(&self) -> Result<Feed, BusError> {
        let (_, head) = self
            .state()
            .await
            .map_err(|e| BusError::Backend(Box::new(e)))?;
        let messages = self.live_from(head + 1).await?;
        let this = self.clone();
        let pending = self.metrics.consumer_pending(Consumer::Live);
        Ok(Box::pin(async_stream::stream! {
            let mut last = head;
            let mut messages = Some(messages);
            loop {
                let Some(current) = messages.as_mut() else {
                    tokio::time::sleep(FEED_RETRY).await;
                    match this.live_from(last + 1).await {
                        Ok(m) => {
                            tracing::info!(after = last, "live feed re-opened");
                            messages = Some(m);
                        }
                        Err(e) => {
                            this.metrics.bus_error(BusOp::Feed);
                            tracing::warn!(error = %e, "re-opening the live feed failed; retrying");
                        }
                    }
                    continue;
                };
                match current.next().await {
                    Some(Ok(message)) => {
                        let Ok(info) = message.info() else { continue };
                        let seq = info.stream_sequence;
                        if seq <= last {
                            continue;
                        }
                        last = seq;
                        this.saw(seq);
                        pending.set(i64::try_from(info.pending).unwrap_or(i64::MAX));
                        match this.receive(&message, seq) {
                            Ok(event) => yield event,
                            Err(e) => tracing::warn!(seq, error = %e, "skipping a message that is not a Herald event"),
                        }
                    }
                    Some(Err(e)) => {
                        this.metrics.bus_error(BusOp::Feed);
                        tracing::warn!(error = %e, after = last, "live feed failed; re-opening it");
                        messages = None;
                    }
                    None => messages = None,
                }
            }
        }))
    }
}

impl JetStream {
    /// Decodes a live message. When its publish was traced and sampled, the decode runs in a
    /// CONSUMER `process` span, a child of (and linked to) the producer span, and the event
    /// carries that span's context on to the hub's fan-out.
    fn receive(
        &self,
        message: &jetstream::Message,
        seq: u64,
    ) -> Result<Arc<Event>, crate::envelope::DecodeError> {
        let trace = traceparent(message.headers.as_ref());
        let Some(producer) = otel::sampled(trace) else {
            return decode(&message.payload, seq, trace).map(|d| d.event);
        };
        let process = tracing::info_span!(
            "process",
            otel.name = %format_args!("process {}", message.subject),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = message.subject.as_str(),
            messaging.message.id = %EventId::new(self.epoch, seq),
            messaging.consumer.group.name = "live",
        );
        otel::set_parent(&process, producer);
        otel::add_link(&process, producer);
        let own = otel::trace_of(&process).or(trace);
        let _decode = tracing::info_span!(parent: &process, "decode").entered();
        decode(&message.payload, seq, own).map(|d| d.event)
    }

    /// The live feed from `start` on. A stream NATS lost is made again first: the feed notices
    /// the loss as soon as NATS is back.
    async fn live_from(&self, start: u64) -> Result<pull::Ordered, BusError> {
        let (_, consumer) = self
            .consumer(pull::OrderedConfig {
                filter_subject: ALL_SUBJECTS.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Backend(Box::new(e)))?;
        consumer
            .messages()
            .await
            .map_err(|e| BusError::Backend(Box::new(e)))
    }
}
