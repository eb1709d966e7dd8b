//! What a served connection is below HTTP: its bytes (TCP, or TLS over it), and how HTTP/2 is
//! recognised and configured on it.

use std::{pin::Pin, time::Duration};

use hyper_util::rt::TokioTimer;

use crate::{listener::TimedStream, stall::StreamExecutor};

/// Where HTTP/2 is served, and its limits.
#[derive(Debug, Clone, Copy)]
pub struct Http2Options {
    /// Offered by ALPN on a TLS listener.
    pub tls: bool,
    /// Accepted without TLS, with prior knowledge (h2c).
    pub cleartext: bool,
    /// Concurrent streams per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_streams: usize,
    /// Ping interval when the client is silent, and the time allowed for its answer.
    pub keepalive: Duration,
}

impl Default for Http2Options {
    fn default() -> Self {
        Self {
            tls: true,
            cleartext: false,
            max_streams: 100,
            keepalive: Duration::from_secs(20),
        }
    }
}

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the bytes a connection sent before its first head could be parsed are the start of
/// the HTTP/2 preface (at least its method and space: `PRI `).
pub(crate) fn starts_h2(prefix: &[u8]) -> bool {
    prefix.len() >= 4 && H2_PREFACE.starts_with(&prefix[..prefix.len().min(H2_PREFACE.len())])
}

/// A connection's bytes: TCP, or TLS over it.
pub(crate) enum Io {
    Plain(TimedStream),
    Tls(Box<tokio_rustls::server::TlsStream<TimedStream>>),
    /// During the TLS handshake, which takes the TCP stream.
    Handshaking,
}

macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr, $none:expr) => {
        match $self.get_mut() {
            Io::Plain($io) => {
                let $io = Pin::new($io);
                $call
            }
            Io::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $call
            }
            Io::Handshaking => $none,
        }
    };
}

fn handshaking<T>() -> std::task::Poll<std::io::Result<T>> {
    std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()))
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf), handshaking())
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf), handshaking())
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs), handshaking())
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
            Io::Handshaking => false,
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx), handshaking())
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx), handshaking())
    }
}

/// hyper's HTTP/2 connection builder with Herald's limits: `limits`, the header list at
/// `max_header_size`, and each stream's task run by `executor` (the write timeout per stream).
pub(crate) fn http2_builder(
    limits: Http2Options,
    max_header_size: usize,
    executor: StreamExecutor,
) -> hyper::server::conn::http2::Builder<StreamExecutor> {
    let mut h2 = hyper::server::conn::http2::Builder::new(executor);
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(u32::try_from(limits.max_streams).unwrap_or(u32::MAX))
        .max_header_list_size(u32::try_from(max_header_size).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.keepalive)
        .keep_alive_timeout(limits.keepalive)
        // Rapid reset (CVE-2023-44487): streams a client opens and cancels before they are
        // served count against this, and past it the connection gets a GOAWAY. h2's default,
        // set here on purpose.
        .max_pending_accept_reset_streams(20)
        // Streams this side resets for a client's protocol errors, before a GOAWAY (hyper's
        // default since RUSTSEC-2024-0003).
        .max_local_error_reset_streams(1024)
        // What one stream may have queued for sending beyond its flow-control window: an
        // event's frame at most (64 KiB by default), not hyper's 400 KB.
        .max_send_buf_size(64 * 1024);
    h2
}
