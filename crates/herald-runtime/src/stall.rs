//! The write timeout of one HTTP/2 stream.
//!
//! Over HTTP/1.1 a subscriber that stops reading fills its socket, and [`crate::listener`] cuts
//! the connection once a write stays pending for the write timeout. Over HTTP/2 the socket keeps
//! moving while one stream's flow-control window stays shut: a client can read every stream but
//! one, and that one would hold its subscription (and its place in `--max-connections`) forever.
//!
//! hyper sends a response body by polling it for a chunk, then waiting for the stream's send
//! capacity while it holds that chunk, and only then polling the body again
//! (`PipeToSendStream` in hyper 1.x). So a stream is stalled when its body last returned data
//! and has not been polled since: the chunk is waiting for a window the peer does not open.
//! [`Watched`] records that in the task that runs the stream; [`StreamExecutor`], the
//! connection's executor, spawns each stream's task inside a [`Stalls`] guard that arms a timer
//! only while a chunk is held (on the fast path, a chunk is sent at once and nothing is armed),
//! and drops the stream when the same chunk is still held after the write timeout: h2 then
//! resets it (`RST_STREAM`), the browser's `EventSource` reconnects with its Last-Event-ID, and
//! the connection's other streams go on.

use std::{
    cell::Cell,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use crate::listener::OnTimeout;

/// The stream being polled on this thread: whether its body's last poll returned data, and how
/// many chunks it has returned (so a new chunk held is told from the old one still held).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    holding: bool,
    chunks: u64,
}

thread_local! {
    /// Set by [`Stalls`] around each poll of its stream's task, updated by [`Watched`] bodies
    /// polled within it. `None` outside such a poll (an HTTP/1.1 body is never watched).
    static CURRENT: Cell<Option<Held>> = const { Cell::new(None) };
}

/// A response body whose polls are reported to the [`Stalls`] guard of the task polling it.
#[derive(Debug)]
pub(crate) struct Watched<B> {
    inner: B,
}

impl<B> Watched<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self { inner }
    }
}

impl<B> http_body::Body for Watched<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let data = matches!(&polled, Poll::Ready(Some(Ok(frame))) if frame.is_data());
        CURRENT.with(|current| {
            if let Some(mut held) = current.get() {
                held.holding = data;
                held.chunks += u64::from(data);
                current.set(Some(held));
            }
        });
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// hyper's executor for an HTTP/2 connection's streams: each stream's task runs inside a
/// [`Stalls`] guard with the write timeout.
#[derive(Clone)]
pub(crate) struct StreamExecutor {
    pub(crate) write_timeout: Duration,
    /// Counts a stream cut off, as the listener counts a connection.
    pub(crate) on_timeout: OnTimeout,
}

impl std::fmt::Debug for StreamExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamExecutor")
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        tokio::spawn(Stalls {
            stream: Box::pin(stream),
            held: Held::default(),
            armed: None,
            timer: None,
            executor: self.clone(),
        });
    }
}

/// One HTTP/2 stream's task, dropped (and so reset) when its body has held the same chunk for
/// the write timeout.
struct Stalls<F> {
    stream: Pin<Box<F>>,
    held: Held,
    /// The chunk count the timer was armed for.
    armed: Option<u64>,
    /// Boxed and kept: allocated the first time the stream waits for its window.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    executor: StreamExecutor,
}

impl<F: Future<Output = ()>> Future for Stalls<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let outer = CURRENT.replace(Some(this.held));
        let polled = this.stream.as_mut().poll(cx);
        this.held = CURRENT.replace(outer).unwrap_or(this.held);
        if polled.is_ready() {
            return Poll::Ready(());
        }
        if !this.held.holding {
            return Poll::Pending;
        }
        // A chunk is waiting for the peer's window: time it, from when it was first seen held.
        if this.armed != Some(this.held.chunks) {
            this.armed = Some(this.held.chunks);
            let deadline = tokio::time::Instant::now() + this.executor.write_timeout;
            match &mut this.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let timer = this.timer.as_mut().expect("armed above");
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                tracing::debug!(
                    timeout = ?this.executor.write_timeout,
                    "an HTTP/2 stream's window stayed shut; resetting the stream"
                );
                (this.executor.on_timeout)();
                Poll::Ready(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use axum::body::Bytes;
    use http_body_util::BodyExt as _;
    use tokio::sync::mpsc;

    type Frames = tokio_stream::wrappers::ReceiverStream<
        Result<http_body::Frame<Bytes>, std::convert::Infallible>,
    >;

    /// A task like hyper's `PipeToSendStream`: polls the body, then holds each chunk until
    /// `window` lets it through.
    async fn pipe(
        mut body: Watched<http_body_util::StreamBody<Frames>>,
        mut window: mpsc::Receiver<()>,
        sent: Arc<AtomicUsize>,
    ) {
        while let Some(Ok(_frame)) = body.frame().await {
            if window.recv().await.is_none() {
                return;
            }
            sent.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn executor(cut: &Arc<AtomicUsize>) -> StreamExecutor {
        let cut = Arc::clone(cut);
        StreamExecutor {
            write_timeout: Duration::from_secs(2),
            on_timeout: Arc::new(move || {
                cut.fetch_add(1, Ordering::SeqCst);
            }),
        }
    }

    /// A stream whose window opens for every chunk, however slowly, and one that is idle, are
    /// never cut; one whose window stays shut with a chunk held is, after the write timeout.
    #[tokio::test(start_paused = true)]
    async fn only_a_chunk_held_past_the_write_timeout_ends_the_stream() {
        use hyper::rt::Executor as _;

        let cut = Arc::new(AtomicUsize::new(0));
        let executor = executor(&cut);
        let (frames, rx) = mpsc::channel(16);
        let (window, window_rx) = mpsc::channel(16);
        let sent = Arc::new(AtomicUsize::new(0));
        let body = Watched::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let (done_tx, mut done) = mpsc::channel::<()>(1);
        let task = pipe(body, window_rx, Arc::clone(&sent));
        executor.execute(async move {
            task.await;
            drop(done_tx);
        });
        // Idle for far longer than the timeout: nothing is held.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(cut.load(Ordering::SeqCst), 0);
        // Slow but steady: each chunk waits 1.5 s for its window, under the timeout.
        for _ in 0..5 {
            frames
                .send(Ok(http_body::Frame::data(Bytes::from_static(
                    b"data: x\n\n",
                ))))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            window.send(()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(sent.load(Ordering::SeqCst), 5);
        assert_eq!(cut.load(Ordering::SeqCst), 0);
        // A chunk whose window never opens.
        frames
            .send(Ok(http_body::Frame::data(Bytes::from_static(
                b"data: y\n\n",
            ))))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert_eq!(
            cut.load(Ordering::SeqCst),
            0,
            "cut before the write timeout"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            cut.load(Ordering::SeqCst),
            1,
            "not cut after the write timeout"
        );
        assert!(done.recv().await.is_none(), "the stream's task ended");
        assert_eq!(sent.load(Ordering::SeqCst), 5);
    }
}
