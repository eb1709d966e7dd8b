//! A stream's body once it is open: the opening frames, replays and catch-ups, live frames,
//! heartbeats, and the end (drain, an expired token, a failed read).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use herald_core::{Bounds, Epoch, EventId, ResumeVerdict, TopicFilter, sse};
use herald_runtime::drain::jitter;
use herald_telemetry::{CloseReason, StoreOp, otel};
use tokio::time::{Instant, Sleep};

use super::ConnectionGuard;
use crate::{
    GatewayState,
    hub::{Delivery, Subscription},
    replay::{Chunk, MAX_CHUNK, Replay},
};

pin_project_lite::pin_project! {
    /// A stream's body: its opening frames, its replays and catch-ups, then live frames, heartbeats,
    /// and the end (drain, an expired token, a failed read).
    ///
    /// Written by hand rather than as an async generator: between frames an idle stream keeps only
    /// these fields (a few hundred bytes with its one timer), not an async state machine laid out for
    /// every step it could be suspended in. A replay or catch-up, which needs a store read's state,
    /// runs as a boxed stream of its own and is dropped when done. The drain is noticed through the
    /// hub, which wakes every subscriber when it starts ([`crate::Hub::drain`]), not through a watch
    /// per stream.
    pub(super) struct Live {
        gw: Arc<GatewayState>,
        sub: Subscription,
        epoch: Epoch,
        // The last sequence this connection has covered: sent, or known not to match.
        last: u64,
        guard: ConnectionGuard,
        phase: Phase,
        // The heartbeat, the drain's close and the token's expiry share one timer, set for the
        // earliest of the three.
        #[pin]
        timer: Sleep,
        // When the timer next looks at the heartbeat. It is not moved on every frame (a
        // timer-wheel update per delivery): when it comes after recent frames, it is set again
        // from the last one.
        heartbeat_at: Instant,
        last_sent: Instant,
        // When a draining server ends this stream: drawn within the drain jitter when the drain
        // is noticed, so clients do not all reconnect at once.
        close_at: Option<Instant>,
        expires_at: Option<Instant>,
    }
}

/// Where a stream's body is.
enum Phase {
    /// `retry:` and the resume verdict, then a resume's replay (when `resume`) or live.
    Opening {
        frames: Bytes,
        resume: bool,
    },
    /// A replay or catch-up; after a resume's, `herald.live`.
    CatchUp {
        pages: Pin<Box<dyn Stream<Item = Caught> + Send>>,
        resume: bool,
    },
    Live,
    /// A sampled delivery, sent alone after the chunk gathered before it.
    Traced(Box<Delivery>),
    /// A sampled delivery's write span, held until the body asks for the next chunk (that is,
    /// until the frame has been handed to the socket).
    Written(Box<tracing::Span>),
    /// A last frame, then the end.
    Last(Bytes),
    Done,
}

/// What a replay or catch-up yields.
enum Caught {
    Chunk(Bytes),
    Done { last: u64, replayed: u64 },
    Failed,
}

/// Reads the events of `filter` after `after` from the window or the store, page by page.
fn catch_up(
    gw: Arc<GatewayState>,
    filter: TopicFilter,
    epoch: Epoch,
    after: u64,
) -> Pin<Box<dyn Stream<Item = Caught> + Send>> {
    Box::pin(async_stream::stream! {
        let mut replay = Replay::new(&gw, &filter, epoch, after);
        loop {
            match replay.next_page().await {
                Ok(Some(chunks)) => for chunk in chunks { yield Caught::Chunk(chunk); },
                Ok(None) => break,
                Err(e) => {
                    gw.metrics.store_error(StoreOp::Read);
                    tracing::warn!(error = %e, after = replay.last(), "stream: replay read failed; the client will resume");
                    yield Caught::Failed;
                    return;
                }
            }
        }
        yield Caught::Done { last: replay.last(), replayed: replay.replayed() };
    })
}

/// Counts a finished replay or catch-up; after a resume's replay, the `herald.live` frame.
fn replayed(gw: &GatewayState, replayed: u64, resume: bool) -> Option<Bytes> {
    gw.metrics.events_replayed.inc_by(replayed);
    gw.metrics.events_delivered.inc_by(replayed);
    resume.then(|| sse::control("herald.live", &format!("{{\"replayed\":{replayed}}}")))
}

/// Judges a Last-Event-ID and counts the verdict: the `herald.resume` frame, and the sequence
/// to replay after when the client can resume.
fn judge(gw: &GatewayState, id: &str, bounds: Bounds) -> (Bytes, Option<u64>) {
    let verdict = ResumeVerdict::judge(id, bounds);
    let after = match &verdict {
        ResumeVerdict::Recovered { after } => {
            gw.metrics.resume(true, "");
            Some(*after)
        }
        ResumeVerdict::NotRecovered { reason, .. } => {
            gw.metrics.resume(false, reason.as_str());
            None
        }
    };
    (sse::control("herald.resume", &verdict.to_json()), after)
}

/// The frames queued from `first` on with a sequence above `last`, as one chunk (a backlogged
/// connection gets one write), stopping at [`MAX_CHUNK`] or at a sampled delivery, which is
/// answered apart to go out alone inside its span. Moves `last` past what it takes.
fn gather(
    sub: &mut Subscription,
    first: Delivery,
    last: &mut u64,
) -> (Option<Bytes>, Option<Delivery>) {
    let mut chunk = Chunk::default();
    let mut next = Some(first);
    while let Some(d) = next.take() {
        if d.seq > *last {
            *last = d.seq;
            if d.trace.is_some() {
                return (chunk.take(), Some(d));
            }
            chunk.push(d.frame);
            if chunk.len() >= MAX_CHUNK {
                break;
            }
        }
        next = sub.try_recv();
    }
    (chunk.take(), None)
}

/// The span of a sampled delivery's socket write: it lasts until the body asks for the next
/// chunk, that is, until the frame has been handed to the socket.
fn write_span(d: &Delivery, epoch: Epoch) -> Option<tracing::Span> {
    d.trace.as_ref().map(|parent| {
        let span =
            tracing::info_span!("sse write", messaging.message.id = %EventId::new(epoch, d.seq));
        otel::set_parent(&span, **parent);
        span
    })
}

pub(super) fn connection(
    gw: Arc<GatewayState>,
    sub: Subscription,
    last_event_id: Option<String>,
    bounds: Bounds,
    guard: ConnectionGuard,
    expires_in: Option<Duration>,
) -> Live {
    let mut frames = BytesMut::from(&sse::retry(gw.config.retry.as_millis() as u64)[..]);
    let (mut last, mut resume) = (bounds.head, false);
    if let Some(id) = last_event_id {
        let (frame, after) = judge(&gw, &id, bounds);
        if let Some(after) = after {
            (last, resume) = (after, true);
        }
        frames.extend_from_slice(&frame);
    }
    let now = Instant::now();
    let heartbeat_at = now + gw.config.heartbeat;
    let expires_at = expires_in.map(|d| now + d);
    Live {
        timer: tokio::time::sleep_until(expires_at.map_or(heartbeat_at, |e| e.min(heartbeat_at))),
        gw,
        sub,
        epoch: bounds.epoch,
        last,
        guard,
        phase: Phase::Opening {
            frames: frames.freeze(),
            resume,
        },
        heartbeat_at,
        last_sent: now,
        close_at: None,
        expires_at,
    }
}

/// A catch-up from `last`, re-armed first so every event is either in its read or in the queue.
fn start_catch_up(
    gw: &Arc<GatewayState>,
    sub: &Subscription,
    epoch: Epoch,
    last: u64,
) -> Pin<Box<dyn Stream<Item = Caught> + Send>> {
    sub.rearm();
    catch_up(Arc::clone(gw), sub.filter().clone(), epoch, last)
}

impl Stream for Live {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut this = self.project();
        loop {
            match std::mem::replace(this.phase, Phase::Live) {
                Phase::Opening { frames, resume } => {
                    if resume {
                        *this.phase = Phase::CatchUp {
                            pages: start_catch_up(this.gw, this.sub, *this.epoch, *this.last),
                            resume,
                        };
                    }
                    return Poll::Ready(Some(frames));
                }
                Phase::CatchUp { mut pages, resume } => match pages.as_mut().poll_next(cx) {
                    Poll::Pending => {
                        *this.phase = Phase::CatchUp { pages, resume };
                        return Poll::Pending;
                    }
                    Poll::Ready(Some(Caught::Chunk(chunk))) => {
                        *this.phase = Phase::CatchUp { pages, resume };
                        return Poll::Ready(Some(chunk));
                    }
                    Poll::Ready(Some(Caught::Done { last, replayed: n })) => {
                        *this.last = last;
                        *this.last_sent = Instant::now();
                        if let Some(live) = replayed(this.gw, n, resume) {
                            return Poll::Ready(Some(live));
                        }
                    }
                    Poll::Ready(Some(Caught::Failed) | None) => {
                        this.guard.ending(CloseReason::Error);
                        *this.phase = Phase::Done;
                        return Poll::Ready(None);
                    }
                },
                Phase::Traced(d) => {
                    *this.last_sent = Instant::now();
                    if let Some(span) = write_span(&d, *this.epoch) {
                        *this.phase = Phase::Written(Box::new(span));
                    }
                    return Poll::Ready(Some(d.frame));
                }
                Phase::Written(_span) => {}
                Phase::Last(frame) => {
                    *this.phase = Phase::Done;
                    return Poll::Ready(Some(frame));
                }
                Phase::Done => {
                    *this.phase = Phase::Done;
                    return Poll::Ready(None);
                }
                Phase::Live => {
                    if this.sub.lagged() && this.sub.is_empty() {
                        this.gw.metrics.slow_caught_up.inc();
                        *this.phase = Phase::CatchUp {
                            pages: start_catch_up(this.gw, this.sub, *this.epoch, *this.last),
                            resume: false,
                        };
                        continue;
                    }
                    if this.close_at.is_none() && this.gw.hub.draining() {
                        let at = Instant::now() + jitter(this.gw.config.drain_jitter);
                        *this.close_at = Some(at);
                        if at < this.timer.deadline() {
                            this.timer.as_mut().reset(at);
                        }
                    }
                    // The timer first: under steady traffic the queue is never empty, and a
                    // drain or an expiry must still end the stream.
                    if this.timer.as_mut().poll(cx).is_ready() {
                        let now = Instant::now();
                        if this.expires_at.is_some_and(|at| at <= now) {
                            this.guard.ending(CloseReason::Expired);
                            *this.phase =
                                Phase::Last(sse::control("herald.auth", r#"{"reason":"expired"}"#));
                            continue;
                        }
                        if this.close_at.is_some_and(|at| at <= now) {
                            this.guard.ending(CloseReason::Drain);
                            *this.phase = Phase::Done;
                            continue;
                        }
                        let mut heartbeat = false;
                        if *this.heartbeat_at <= now {
                            let quiet_until = *this.last_sent + this.gw.config.heartbeat;
                            if quiet_until > now {
                                *this.heartbeat_at = quiet_until;
                            } else {
                                *this.heartbeat_at = now + this.gw.config.heartbeat;
                                *this.last_sent = now;
                                heartbeat = true;
                            }
                        }
                        let next = [*this.close_at, *this.expires_at]
                            .into_iter()
                            .flatten()
                            .fold(*this.heartbeat_at, Instant::min);
                        this.timer.as_mut().reset(next);
                        if heartbeat {
                            return Poll::Ready(Some(sse::comment("")));
                        }
                        continue;
                    }
                    match this.sub.poll_recv(cx) {
                        Poll::Ready(Some(d)) => {
                            let (chunk, traced) = gather(this.sub, d, this.last);
                            if let Some(d) = traced {
                                *this.phase = Phase::Traced(Box::new(d));
                            }
                            if let Some(bytes) = chunk {
                                *this.last_sent = Instant::now();
                                return Poll::Ready(Some(bytes));
                            }
                            continue;
                        }
                        Poll::Ready(None) => {
                            *this.phase = Phase::Done;
                            return Poll::Ready(None);
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use herald_bus::{Announce, MemoryBus};
    use herald_core::{EventType, NewEvent, Topic, event::parse_data};
    use herald_runtime::Drain;
    use herald_store::{History, MemoryStore, Store, StoreOptions};
    use herald_telemetry::Metrics;

    use super::*;
    use crate::{Gateway, GatewayConfig};

    const HOUR: Duration = Duration::from_secs(3600);

    struct Setup {
        gateway: Gateway,
        store: Arc<dyn Store>,
        bus: MemoryBus,
        drain: Drain,
    }

    async fn setup() -> Setup {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(StoreOptions::default()));
        let bus = MemoryBus::new(64);
        let (drain, watch) = Drain::new();
        let config = GatewayConfig {
            heartbeat: Duration::from_secs(15),
            drain_jitter: Duration::from_secs(5),
            ..GatewayConfig::default()
        };
        let gateway = Gateway::start(
            config,
            Arc::clone(&store) as Arc<dyn History>,
            &bus,
            Arc::new(Metrics::new()),
            watch,
        )
        .await
        .unwrap();
        Setup {
            gateway,
            store,
            bus,
            drain,
        }
    }

    impl Setup {
        /// A stream on topic `t` as `open` makes it (without a request).
        async fn stream(
            &self,
            last_event_id: Option<&str>,
            expires_in: Option<Duration>,
        ) -> Pin<Box<Live>> {
            let gw = Arc::clone(&self.gateway.state);
            let slot = gw.config.access.limits().open_stream(None, None).unwrap();
            let guard = ConnectionGuard::acquire(Arc::clone(&gw), slot).unwrap();
            let sub = gw.hub.subscribe(TopicFilter::parse(["t"]).unwrap());
            let bounds = gw.store.bounds().await.unwrap();
            Box::pin(connection(
                gw,
                sub,
                last_event_id.map(str::to_owned),
                bounds,
                guard,
                expires_in,
            ))
        }

        async fn publish(&self, n: usize) {
            let event = NewEvent {
                topic: Topic::new("t").unwrap(),
                event_type: EventType::default(),
                data: parse_data("1".into()).unwrap(),
            };
            let events = self
                .store
                .append(vec![event; n], None)
                .await
                .unwrap()
                .events;
            self.bus.publish(&events).await.unwrap();
        }
    }

    /// The next chunk within an hour of the paused clock, as text; `None` at the end.
    async fn next(stream: &mut Pin<Box<Live>>) -> Option<String> {
        let chunk = tokio::time::timeout(HOUR, stream.next())
            .await
            .expect("a chunk or the end within an hour");
        chunk.map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    /// On tokio's paused clock: `retry:` first, a heartbeat after `heartbeat` of silence, and
    /// traffic postpones it.
    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_comes_after_silence_and_traffic_postpones_it() {
        let setup = setup().await;
        let mut stream = setup.stream(None, None).await;
        let start = Instant::now();
        assert!(next(&mut stream).await.unwrap().starts_with("retry:"));
        assert_eq!(next(&mut stream).await.unwrap(), ":\n\n");
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        tokio::time::sleep(Duration::from_secs(10)).await;
        setup.publish(1).await;
        assert!(next(&mut stream).await.unwrap().contains("data: 1"));
        assert_eq!(next(&mut stream).await.unwrap(), ":\n\n");
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(40),
            "15 s after the event"
        );
        assert_eq!(next(&mut stream).await.unwrap(), ":\n\n");
        assert_eq!(start.elapsed(), Duration::from_secs(55));
    }

    /// On tokio's paused clock: an idle stream ends only once the drain starts, within the
    /// jitter, woken by the hub; one opened after the drain started ends too.
    #[tokio::test(start_paused = true)]
    async fn a_draining_stream_closes_within_the_jitter() {
        let setup = setup().await;
        let mut stream = setup.stream(None, None).await;
        next(&mut stream).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .is_err(),
            "no chunk and no end before the drain (the heartbeat is due at 15 s)"
        );
        let started = Instant::now();
        setup.drain.start();
        assert_eq!(next(&mut stream).await, None);
        assert!(
            started.elapsed() <= Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let mut late = setup.stream(None, None).await;
        next(&mut late).await.unwrap();
        assert_eq!(next(&mut late).await, None);
        assert!(
            started.elapsed() <= Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    /// On tokio's paused clock: a token's expiry ends the stream with `herald.auth`, after the
    /// heartbeats due before it.
    #[tokio::test(start_paused = true)]
    async fn an_expiring_token_ends_the_stream_with_herald_auth() {
        let setup = setup().await;
        let mut stream = setup.stream(None, Some(Duration::from_secs(40))).await;
        let start = Instant::now();
        next(&mut stream).await.unwrap();
        assert_eq!(next(&mut stream).await.unwrap(), ":\n\n");
        assert_eq!(next(&mut stream).await.unwrap(), ":\n\n");
        let last = next(&mut stream).await.unwrap();
        assert!(last.starts_with("event: herald.auth"), "{last}");
        assert_eq!(start.elapsed(), Duration::from_secs(40));
        assert_eq!(next(&mut stream).await, None);
    }

    /// A resume gets its verdict, the missed events, `herald.live`, then live events, each once.
    #[tokio::test(start_paused = true)]
    async fn a_resume_replays_then_goes_live() {
        let setup = setup().await;
        setup.publish(3).await;
        let epoch = setup.gateway.state.hub.epoch();
        // Wait for the hub to have delivered the three (the window then holds them).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let id = EventId::new(epoch, 1).to_string();
        let mut stream = setup.stream(Some(&id), None).await;
        let opening = next(&mut stream).await.unwrap();
        assert!(
            opening.starts_with("retry:") && opening.contains(r#"{"recovered":true}"#),
            "{opening}"
        );
        let mut replay = String::new();
        while !replay.contains("herald.live") {
            replay.push_str(&next(&mut stream).await.unwrap());
        }
        assert_eq!(replay.matches("data: 1").count(), 2, "{replay}");
        assert!(replay.contains(r#"{"replayed":2}"#), "{replay}");
        setup.publish(1).await;
        let live = next(&mut stream).await.unwrap();
        assert!(
            live.contains(&format!("id: {}", EventId::new(epoch, 4))),
            "{live}"
        );
    }
}
