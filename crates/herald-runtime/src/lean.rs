//! Request heads read, and `GET` answers written, without hyper.
//!
//! hyper keeps, for every HTTP/1.1 connection and for as long as it lives, a read buffer of 8 to
//! 16 KiB and its connection state and write buffer (about 8 KiB): most of what an idle stream
//! used to cost (the profile in docs/performance.md). A stream's connection, once its head is
//! read, only writes. So the server reads each connection's request heads itself, into a buffer
//! that is dropped once the head is parsed:
//!
//! - a `GET` (HTTP/1.1, without a body) is answered by the same router as every request
//!   (middleware, limits, auth and spans included), and the answer is written here: an answer of
//!   known length whole; a stream's head, then each chunk as the body yields it, while a read of
//!   a few bytes notices the client going away. Then the connection waits for its next head;
//! - anything else (another method, a body, an upgrade, HTTP/1.0, pipelined requests, a head this
//!   parser refuses) goes to hyper with the bytes read so far, and hyper serves the connection
//!   from then on, its 4xx answers included.
//!
//! The write timeout is the connection's own ([`crate::listener::TimedStream`]), on both paths.

use std::{io, io::Write as _, time::SystemTime};

use axum::{
    body::{Body, Bytes},
    http::{self, HeaderName, HeaderValue, Request, Response, header},
};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The bounds of a head read here; past them the head goes to hyper, which answers it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    /// The largest head (hyper answers 431 beyond it).
    pub max_size: usize,
    /// The most headers (hyper answers 431 beyond it).
    pub max_headers: usize,
}

/// What a connection's next request head turned out to be.
pub(crate) enum Head {
    /// A `GET`, for [`respond`].
    Get(Box<Request<Body>>),
    /// Anything else: the bytes read so far, for hyper.
    Other(Bytes),
    /// The peer closed, or the connection failed, before a whole head.
    Gone,
}

/// Reads a request head from `io`: as soon as it is known not to be a `GET` this module serves,
/// stops reading and answers the bytes read.
pub(crate) async fn read_head<R: AsyncRead + Unpin>(io: &mut R, limits: HeadLimits) -> Head {
    let mut buf = Vec::with_capacity(512);
    loop {
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Head::Gone,
            Ok(_) => {}
        }
        match parse(&buf, limits) {
            Parsed::Get(request) => return Head::Get(request),
            Parsed::Other => return Head::Other(Bytes::from(buf)),
            Parsed::Partial if buf.len() >= limits.max_size => {
                return Head::Other(Bytes::from(buf));
            }
            Parsed::Partial => {}
        }
    }
}

enum Parsed {
    Get(Box<Request<Body>>),
    Other,
    Partial,
}

fn parse(buf: &[u8], limits: HeadLimits) -> Parsed {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut head = httparse::Request::new(&mut headers);
    // A head this parser refuses (too many headers, a bad token) is hyper's to answer.
    let Ok(status) = head.parse(buf) else {
        return Parsed::Other;
    };
    // httparse fills the request line as it goes: decide as soon as the method is known.
    if head.method.is_some_and(|m| m != "GET") {
        return Parsed::Other;
    }
    let httparse::Status::Complete(len) = status else {
        return Parsed::Partial;
    };
    // Pipelined bytes after the head, HTTP/1.0 and targets in absolute form are hyper's.
    let Some(target) = head.path.filter(|t| t.starts_with('/')) else {
        return Parsed::Other;
    };
    if len != buf.len() || head.version != Some(1) {
        return Parsed::Other;
    }
    let Ok(uri) = http::Uri::try_from(target) else {
        return Parsed::Other;
    };
    let mut request = Request::new(Body::empty());
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_11;
    let map = request.headers_mut();
    for h in head.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Other;
        };
        // A body, an upgrade or an expectation: hyper's protocol.
        let framing = (name == header::CONTENT_LENGTH && value != "0")
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT;
        if framing {
            return Parsed::Other;
        }
        map.append(name, value);
    }
    Parsed::Get(Box::new(request))
}

/// What the connection does after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Read the next request head.
    Next,
    /// Close (asked to, the peer left, or a write failed).
    Close,
}

/// What [`respond`] leaves to do.
pub(crate) enum Answer<'a, S> {
    /// The answer is written.
    Done(After),
    /// The head is written; the body is a stream, written as it comes by this future.
    Stream(Stream<'a, S>),
}

#[cfg(test)]
impl<S: AsyncRead + AsyncWrite + Unpin> Answer<'_, S> {
    /// Writes what is left of the answer.
    async fn finish(self) -> After {
        match self {
            Self::Done(after) => after,
            Self::Stream(stream) => stream.await,
        }
    }
}

/// Writes `response` to `io`: an answer of known length whole; of a stream, the head, and the
/// [`Stream`] that writes its chunks as the body yields them, until it ends (then the last chunk)
/// or the peer goes away. Then [`After::Next`], unless `close` (the request said
/// `connection: close`, or the server drains), the answer said `connection: close`, or the client
/// sent bytes during a stream.
pub(crate) async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    response: Response<Body>,
    close: bool,
) -> Answer<'_, S> {
    let (parts, body) = response.into_parts();
    // 1xx, 204 and 304 have no body, and say no length.
    let bodiless = parts.status.is_informational()
        || parts.status == http::StatusCode::NO_CONTENT
        || parts.status == http::StatusCode::NOT_MODIFIED;
    let length = if bodiless {
        None
    } else {
        body.size_hint().exact()
    };
    let close = close
        || parts
            .headers
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let mut head = Vec::with_capacity(256);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_str(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        if [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONNECTION,
        ]
        .contains(name)
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        let _ = write!(
            head,
            "date: {}\r\n",
            httpdate::fmt_http_date(SystemTime::now())
        );
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    drop(parts);
    if bodiless {
        head.extend_from_slice(b"\r\n");
        return Answer::Done(match write_all(io, &mut [io::IoSlice::new(&head)]).await {
            Ok(()) if !close => After::Next,
            _ => After::Close,
        });
    }
    match length {
        Some(length) => {
            let _ = write!(head, "content-length: {length}\r\n\r\n");
            let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
                return Answer::Done(After::Close);
            };
            let mut bufs = [io::IoSlice::new(&head), io::IoSlice::new(&body)];
            Answer::Done(match write_all(io, &mut bufs).await {
                Ok(()) if !close => After::Next,
                _ => After::Close,
            })
        }
        None => {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            if write_all(io, &mut [io::IoSlice::new(&head)]).await.is_err() {
                return Answer::Done(After::Close);
            }
            Answer::Stream(Stream {
                io,
                body,
                out: None,
                ended: false,
                stray: false,
                close,
            })
        }
    }
}

/// Writes the body as chunks until it ends (then the last chunk): [`After::Next`] then, unless
/// the answer is to close, or the client sent bytes meanwhile (a request pipelined behind a stream
/// is not answered: the connection closes after it). [`After::Close`] when the peer closed, a
/// write failed or the body did.
///
/// Written by hand rather than as an `async fn`: this is the state an idle stream sits in for
/// hours, and it is about 100 bytes (the connection, the body, the chunk being written), where
/// an `async fn` with a `select!` over a read and a frame, and a write future, took 768.
pub(crate) struct Stream<'a, S> {
    io: &'a mut S,
    body: Body,
    /// The chunk being written, and how much of it is.
    out: Option<(Chunk, usize)>,
    /// The body ended: `out` holds the last chunk.
    ended: bool,
    /// The client sent bytes during the stream.
    stray: bool,
    /// The connection closes after the answer.
    close: bool,
}

/// One chunk: its size line, its data, then CRLF.
struct Chunk {
    size: [u8; 18],
    size_len: u8,
    data: Bytes,
}

impl Chunk {
    fn new(data: Bytes) -> Self {
        let mut size = [0u8; 18];
        let size_len = {
            let mut cursor = io::Cursor::new(&mut size[..]);
            let _ = write!(cursor, "{:x}\r\n", data.len());
            cursor.position() as u8
        };
        Self {
            size,
            size_len,
            data,
        }
    }

    /// The slices still to write after `written` bytes, and the chunk's length.
    fn rest(&self, written: usize) -> ([io::IoSlice<'_>; 3], usize) {
        let parts: [&[u8]; 3] = [
            &self.size[..usize::from(self.size_len)],
            &self.data,
            b"\r\n",
        ];
        let total = parts.iter().map(|p| p.len()).sum();
        let mut out = [io::IoSlice::new(&[]); 3];
        let (mut skip, mut i) = (written, 0);
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            out[i] = io::IoSlice::new(&part[skip..]);
            (skip, i) = (0, i + 1);
        }
        (out, total)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> std::future::Future for Stream<'_, S> {
    type Output = After;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::{pin::Pin, task::Poll};
        let this = self.get_mut();
        loop {
            // Read only to notice the close (and bytes the client should not have sent).
            loop {
                let mut probe = [0u8; 8];
                let mut buf = tokio::io::ReadBuf::new(&mut probe);
                match Pin::new(&mut *this.io).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                        return Poll::Ready(After::Close);
                    }
                    Poll::Ready(Ok(())) => this.stray = true,
                    Poll::Ready(Err(_)) => return Poll::Ready(After::Close),
                    Poll::Pending => break,
                }
            }
            if let Some((chunk, written)) = &mut this.out {
                let (slices, total) = chunk.rest(*written);
                let n = match Pin::new(&mut *this.io).poll_write_vectored(cx, &slices) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(After::Close),
                    Poll::Ready(Ok(n)) => n,
                };
                *written += n;
                if *written < total {
                    continue;
                }
                this.out = None;
                if this.ended {
                    let close = this.stray || this.close;
                    return Poll::Ready(if close { After::Close } else { After::Next });
                }
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.out = Some((Chunk::new(Bytes::new()), 0));
                    this.ended = true;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        this.out = Some((Chunk::new(data), 0));
                    }
                }
                // The body failed: cut the connection without the last chunk, so the client
                // sees an incomplete answer (and an EventSource reconnects).
                Poll::Ready(Some(Err(e))) => {
                    tracing::trace!(error = %e, "stream body failed");
                    return Poll::Ready(After::Close);
                }
            }
        }
    }
}

async fn write_all<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut bufs: &mut [io::IoSlice<'_>],
) -> io::Result<()> {
    while !bufs.is_empty() {
        let n = io.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// A connection whose first bytes were already read: they are read again first (for hyper).
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let taken = self.prefix.split_to(n);
            buf.put_slice(&taken);
            if self.prefix.is_empty() {
                // Let the read buffer go (an empty slice of it would keep it).
                self.prefix = Bytes::new();
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_size: 8192,
        max_headers: 64,
    };

    fn is_lean(head: &[u8]) -> bool {
        matches!(parse(head, LIMITS), Parsed::Get(_))
    }

    #[test]
    fn only_a_bodiless_http11_get_is_lean() {
        assert!(is_lean(
            b"GET /v1/stream?topic=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1-2\r\n\r\n"
        ));
        assert!(is_lean(
            b"GET /api/updates HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(is_lean(b"GET /healthz HTTP/1.1\r\n\r\n"));
        for other in [
            &b"POST /v1/stream?topic=a HTTP/1.1\r\n\r\n"[..],
            b"HEAD /v1/stream?topic=a HTTP/1.1\r\n\r\n",
            b"OPTIONS /v1/stream HTTP/1.1\r\n\r\n",
            b"GET http://x/v1/stream?topic=a HTTP/1.1\r\n\r\n",
            b"GET /v1/stream?topic=a HTTP/1.0\r\n\r\n",
            b"GET /v1/stream?topic=a HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            b"GET /v1/stream?topic=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /v1/stream?topic=a HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            b"GET /v1/stream?topic=a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            // A pipelined second request: hyper's.
            b"GET /v1/stream?topic=a HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET /v1/stream?topic=a HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(
                matches!(parse(other, LIMITS), Parsed::Other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn the_decision_comes_as_soon_as_the_method_tells() {
        assert!(matches!(parse(b"POST /v1/top", LIMITS), Parsed::Other));
        assert!(matches!(parse(b"PUT /api/post", LIMITS), Parsed::Other));
        assert!(matches!(
            parse(b"GET /v1/stream?topic=a HTTP/1.1\r\nHost:", LIMITS),
            Parsed::Partial
        ));
        let many = format!("GET /v1/stream HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(65));
        assert!(matches!(parse(many.as_bytes(), LIMITS), Parsed::Other));
    }

    #[tokio::test]
    async fn a_head_that_is_not_a_get_is_handed_on_with_the_bytes_read() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"POST /v1/topics/t/events HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .unwrap();
        let Head::Other(prefix) = read_head(&mut server, LIMITS).await else {
            panic!("not handed on");
        };
        let mut rewound = Rewind::new(prefix, server);
        drop(client);
        let mut all = Vec::new();
        rewound.read_to_end(&mut all).await.unwrap();
        assert!(all.starts_with(b"POST /v1/topics/t/events HTTP/1.1\r\n"));
        assert!(all.ends_with(b"\r\n\r\n{}"));
    }

    #[tokio::test]
    async fn a_stream_is_written_as_chunks_and_ends_with_the_last_one() {
        for close in [false, true] {
            let (mut client, mut server) = tokio::io::duplex(4096);
            let frames = tokio_stream::iter([
                Ok::<_, std::convert::Infallible>(Bytes::from_static(b"retry: 1\n\n")),
                Ok(Bytes::from_static(b"")),
                Ok(Bytes::from_static(b"data: x\n\n")),
            ]);
            let response = Response::new(Body::from_stream(frames));
            let after = respond(&mut server, response, close).await.finish().await;
            assert_eq!(after == After::Close, close);
            drop(server);
            let mut all = String::new();
            client.read_to_string(&mut all).await.unwrap();
            assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
            assert!(all.contains("\r\ntransfer-encoding: chunked\r\n"), "{all}");
            assert_eq!(all.contains("\r\nconnection: close\r\n"), close, "{all}");
            assert!(
                all.ends_with("\r\n\r\na\r\nretry: 1\n\n\r\n9\r\ndata: x\n\n\r\n0\r\n\r\n"),
                "{all:?}"
            );
        }
    }

    /// A write that took part of a chunk goes on from where it stopped, across its parts.
    #[test]
    fn a_chunk_resumes_where_a_short_write_stopped() {
        let chunk = Chunk::new(Bytes::from_static(b"hello"));
        let whole = b"5\r\nhello\r\n";
        for written in 0..whole.len() {
            let (slices, total) = chunk.rest(written);
            assert_eq!(total, whole.len());
            let rest: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
            assert_eq!(rest, whole[written..], "after {written}");
        }
        let end = Chunk::new(Bytes::new());
        let (last, total) = end.rest(0);
        let last: Vec<u8> = last.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!((last.as_slice(), total), (&b"0\r\n\r\n"[..], 5));
    }

    /// A request pipelined behind a stream is not answered: the connection closes after it.
    #[tokio::test]
    async fn bytes_sent_during_a_stream_close_the_connection_after_it() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let (tx, frames) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(1);
        let response = Response::new(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(frames),
        ));
        let served =
            tokio::spawn(async move { respond(&mut server, response, false).await.finish().await });
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(tx);
        assert_eq!(served.await.unwrap(), After::Close);
    }

    #[tokio::test]
    async fn an_answer_of_known_length_keeps_the_connection_unless_asked_to_close() {
        for (close, after) in [(false, After::Next), (true, After::Close)] {
            let (mut client, mut server) = tokio::io::duplex(4096);
            let mut response = Response::new(Body::from("{\"error\":{}}"));
            *response.status_mut() = http::StatusCode::FORBIDDEN;
            assert_eq!(
                respond(&mut server, response, close).await.finish().await,
                after
            );
            drop(server);
            let mut all = String::new();
            client.read_to_string(&mut all).await.unwrap();
            assert!(all.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{all}");
            assert!(
                all.contains("\r\ncontent-length: 12\r\n\r\n{\"error\":{}}"),
                "{all}"
            );
            assert_eq!(all.contains("connection: close"), close, "{all}");
        }
    }

    /// A client that goes away ends the stream at once, though the body has nothing to send.
    #[tokio::test]
    async fn a_stream_ends_when_its_client_closes() {
        let (client, mut server) = tokio::io::duplex(4096);
        let (tx, frames) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(1);
        let response = Response::new(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(frames),
        ));
        let served =
            tokio::spawn(async move { respond(&mut server, response, false).await.finish().await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(client);
        let after = tokio::time::timeout(std::time::Duration::from_secs(5), served)
            .await
            .expect("the stream noticed the close")
            .unwrap();
        assert_eq!(after, After::Close);
        assert!(tx.is_closed(), "the body was dropped");
    }
}
