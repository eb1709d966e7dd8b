//! A TCP listener for `axum::serve` whose connections give up on a peer that stops reading.
//!
//! A write that stays pending (the peer's receive window and our send buffer are full) for longer
//! than the write timeout fails with `TimedOut`, and hyper closes the connection. That is how a
//! subscriber that stopped reading altogether is cut off (G6): it resumes later with its
//! Last-Event-ID. Subscribers that read slowly but steadily never hit it.

use std::{
    future::Future as _,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};

/// Called once for each connection cut off by the write timeout.
pub type OnTimeout = Arc<dyn Fn() + Send + Sync>;

/// Accepts TCP connections and wraps them in [`TimedStream`].
pub struct TimedListener {
    inner: TcpListener,
    write_timeout: Duration,
    on_timeout: OnTimeout,
}

impl std::fmt::Debug for TimedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedListener")
            .field("inner", &self.inner)
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

impl TimedListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener, write_timeout: Duration, on_timeout: OnTimeout) -> Self {
        Self {
            inner,
            write_timeout,
            on_timeout,
        }
    }
}

impl axum::serve::Listener for TimedListener {
    type Io = TimedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let io = TimedStream {
                        inner: stream,
                        timeout: self.write_timeout,
                        deadline: None,
                        on_timeout: Arc::clone(&self.on_timeout),
                    };
                    return (io, addr);
                }
                // Out of file descriptors and the like: wait instead of spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream whose writes time out.
pub struct TimedStream {
    inner: TcpStream,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    on_timeout: OnTimeout,
}

impl std::fmt::Debug for TimedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedStream")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl TimedStream {
    /// Turns a pending write into a timeout once the deadline passes.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => {
                let timeout = self.timeout;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(deadline.as_mut().poll(cx));
                (self.on_timeout)();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer stopped reading",
                )))
            }
            ready => {
                self.deadline = None;
                ready
            }
        }
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
