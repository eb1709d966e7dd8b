//! Serving a router until shutdown, then draining it: shared by every Herald binary.

use std::{future::Future, pin::Pin, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use axum::middleware::Next;
use axum::{
    Router,
    extract::Request,
    http::header,
    response::{IntoResponse, Response},
    routing::{IntoMakeService, get},
};
use tokio::net::TcpListener;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::{
    ApiError, Drain, DrainWatch, ErrorCode, Health,
    connection::{Http2Options, Io, starts_h2},
    health,
    listener::TimedListener,
};

/// The TCP peer a request came over (a client, or a proxy in front of it), on every request
/// served by [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub std::net::SocketAddr);

/// The router for one connection: every request carries the connection's [`Peer`].
#[derive(Debug, Clone)]
struct WithPeer {
    router: Router,
    peer: std::net::SocketAddr,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for WithPeer {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = axum::routing::future::RouteFuture<std::convert::Infallible>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        use tower_service::Service as _;
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(Peer(self.peer));
        // A Router is always ready; a clone is a reference count.
        self.router.clone().call(request)
    }
}

/// [`WithPeer`] for an HTTP/2 connection: each response body is watched for the write timeout of
/// its stream ([`crate::stall`]).
struct Http2Streams(WithPeer);

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Http2Streams {
    type Response = hyper::Response<crate::stall::Watched<axum::body::Body>>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let answer = self.0.call(request);
        Box::pin(async move { Ok(answer.await?.map(crate::stall::Watched::new)) })
    }
}

/// How a server is run and drained, and the limits of its HTTP edge.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A connection whose peer accepts no bytes for this long is closed (an HTTP/2 stream whose
    /// window stays shut this long is reset).
    pub write_timeout: Duration,
    /// Time allowed, once a drain starts, for streams to end and requests to finish.
    pub drain_deadline: Duration,
    /// A request head must arrive whole within this, counted from the connection's first read or
    /// the end of its previous request (so idle keep-alive connections end too).
    pub header_timeout: Duration,
    /// A request body must arrive whole within this from its head (408).
    pub body_timeout: Duration,
    /// The largest request head, in bytes (431).
    pub max_header_size: usize,
    /// The most request headers (431).
    pub max_headers: usize,
    /// The longest request target (414).
    pub max_url_length: usize,
    /// The most open TCP connections.
    pub max_tcp_connections: usize,
    /// Whether a request's `traceparent` is continued.
    pub trust_traceparent: bool,
    /// Serve HTTPS with these files (HTTP/1.1, and HTTP/2 where `http2.tls`).
    pub tls: Option<crate::tls::TlsFiles>,
    /// HTTP/2: where it is served and its limits.
    pub http2: Http2Options,
}

impl ServeOptions {
    /// `https` with a TLS pair, else `http`: what the listener serves.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Loads the TLS pair, if any, so that one that does not load stops the process before it
    /// says it is listening (the server loads it again when it starts).
    pub fn check_tls(&self) -> anyhow::Result<()> {
        if let Some(files) = &self.tls {
            crate::tls::load(files).context("--tls-cert and --tls-key do not load")?;
        }
        Ok(())
    }
}

/// The accept queue asked of the kernel (which caps it at `net.core.somaxconn`, 4096 on current
/// Linux). tokio's own default is 1,024: a burst of connections beyond it — a region's browsers
/// reconnecting at once, a flood of opens — has its handshakes dropped, and the clients' TCP
/// retries them only a second or more later.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as tokio's
/// `TcpListener::bind` sets it).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The body of every binary's `main`: starts logging and trace export (`service` is the default
/// `service.name`), runs `run`, flushes the spans, and turns the outcome into the exit code (2 for
/// a bad log or trace setting, 1 for a failure, said on stderr).
pub async fn main(
    name: &str,
    log: &str,
    format: herald_telemetry::LogFormat,
    traces: herald_telemetry::TracesMode,
    run: impl Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    ExitCode::from(exit_code(name, log, format, traces, run).await)
}

/// [`main`], answering the exit code as a number (for a binary that exits with
/// [`std::process::exit`] rather than by tearing its runtime down).
pub async fn exit_code(
    name: &str,
    log: &str,
    format: herald_telemetry::LogFormat,
    traces: herald_telemetry::TracesMode,
    run: impl Future<Output = anyhow::Result<()>>,
) -> u8 {
    let telemetry = match herald_telemetry::init(log, format, traces, name) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("{name}: {e}");
            return 2;
        }
    };
    let outcome = run.await;
    telemetry.shutdown().await;
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = ?e, "{name} stopped");
            eprintln!("{name}: {e:#}");
            1
        }
    }
}

/// Serves `router` (with request tracing) on `listener` until `shutdown` resolves, then drains: readiness fails and no
/// new connection is accepted, every stream ends (the routes watch the drain), in-flight requests
/// finish, all under the drain deadline. `on_write_timeout` runs for each connection cut off by the
/// write timeout, and for each HTTP/2 stream reset by it. Returns when the server has stopped.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    drain: &Drain,
    options: &ServeOptions,
    on_write_timeout: Arc<dyn Fn() + Send + Sync>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = match &options.tls {
        Some(files) => Some(
            crate::tls::Tls::new(files, options.http2.tls)
                .context("--tls-cert and --tls-key do not load")?,
        ),
        None => None,
    };
    let reload = tls
        .as_ref()
        .map(|tls| tls.spawn_reload(crate::tls::RELOAD_CHECK));
    let listener = TimedListener::new(
        listener,
        options.write_timeout,
        Arc::clone(&on_write_timeout),
    );
    // Every error answer in the API's JSON shape, the framework's own included.
    let router = router.layer(axum::middleware::from_fn(crate::error::json_errors));
    // Request spans and logs; 5xx answers are deliberate (limits, drain, a backend down) and
    // logged where they are decided, so the layer reports them only at DEBUG.
    let router = router.layer(
        TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
    );
    // With trace export on, an HTTP server span per request. It covers the handler, up to the
    // response head: for a stream, the time to open it, not its hour of life (entering a span on
    // every poll of a stream's body would cost on every frame written).
    let router = if herald_telemetry::traces_enabled() {
        router.layer(axum::middleware::from_fn_with_state(
            crate::span::SpanOptions {
                trusted: options.trust_traceparent,
                scheme: options.scheme(),
            },
            crate::span::server_span,
        ))
    } else {
        router
    };
    let router = router.layer(axum::middleware::from_fn_with_state(
        Limits {
            body_timeout: options.body_timeout,
            max_url_length: options.max_url_length,
        },
        request_limits,
    ));
    let streams = crate::stall::StreamExecutor {
        write_timeout: options.write_timeout,
        on_timeout: on_write_timeout,
    };
    let server = accept_loop(
        listener,
        router,
        options.clone(),
        tls,
        streams,
        drain.watch(),
    );
    let mut server = tokio::spawn(server);
    // The reload task ends with this function, whichever way it returns.
    let _reload = reload.map(AbortOnDrop);
    tokio::select! {
        () = shutdown => {}
        result = &mut server => return result.context("server task"),
    }
    let deadline = options.drain_deadline;
    tracing::info!(deadline = ?deadline, "draining");
    drain.start();
    match tokio::time::timeout(deadline, &mut server).await {
        Ok(result) => result.context("server task")?,
        Err(_) => {
            tracing::warn!(deadline = ?deadline, "drain deadline passed; closing the remaining connections");
            server.abort();
        }
    }
    Ok(())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts connections on `listener` and serves each over HTTP/1.1, or HTTP/2 where it is on,
/// with the edge's limits (head timeout, head size and header count, at most
/// `max_tcp_connections` at once; HTTP/2's stream, header and ping limits) until the drain starts;
/// then stops accepting, asks every connection to close once its request is done (idle ones at
/// once; streams end on the drain by themselves; HTTP/2 connections get a GOAWAY) and returns
/// when all are gone. With `tls`, every connection is TLS first (its handshake within the head
/// timeout), and ALPN chooses HTTP/2 or HTTP/1.1.
///
/// An HTTP/1.1 connection's request heads are read by [`crate::lean`] first: `GET`s (streams,
/// pages, history) are answered there without hyper's per-connection buffers; the first other
/// request hands the connection to hyper for good. HTTP/2 connections are hyper's.
async fn accept_loop(
    mut listener: TimedListener,
    router: Router,
    options: ServeOptions,
    tls: Option<crate::tls::Tls>,
    streams: crate::stall::StreamExecutor,
    drain: DrainWatch,
) {
    use axum::serve::Listener as _;
    use hyper_util::{rt::TokioTimer, server::graceful::GracefulShutdown};

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_header_size(options.max_header_size)
        .max_headers(options.max_headers)
        // The read buffer holds a head at most (bodies are read in chunks of it): no larger
        // than the head limit allows, and hyper's floor of 8 KiB.
        .max_buf_size(options.max_header_size.max(8192));
    let limits = options.http2;
    let h2 = crate::connection::http2_builder(limits, options.max_header_size, streams);
    let shared = Arc::new(Connections {
        // One router for every connection (built once; each request gets a reference to it).
        router: router.with_state::<()>(()),
        http,
        h2,
        h2c: limits.cleartext,
        tls,
        header_timeout: options.header_timeout,
        head: crate::lean::HeadLimits {
            max_size: options.max_header_size,
            max_headers: options.max_headers,
        },
        drain: drain.clone(),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_tcp_connections));
    let graceful = GracefulShutdown::new();
    let stop = drain.started();
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut stop => break,
        };
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let connection = Box::new(Connection {
            io: Io::Plain(io),
            peer,
            watcher: graceful.watcher(),
            _slot: slot,
        });
        tokio::spawn(Arc::clone(&shared).serve(connection));
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One accepted connection. Boxed, and used in place: an `async fn` keeps its arguments and
/// the locals they move into apart, so a connection passed by value would be held two or three
/// times over in its task's state.
struct Connection {
    io: Io,
    peer: std::net::SocketAddr,
    /// Held for the connection's life, so that the drain waits for it, whichever path serves it.
    watcher: hyper_util::server::graceful::Watcher,
    /// Its turn of `--max-tcp-connections`.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// What every connection of a listener shares.
struct Connections {
    router: Router,
    http: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<crate::stall::StreamExecutor>,
    /// HTTP/2 with prior knowledge on a connection without TLS.
    h2c: bool,
    tls: Option<crate::tls::Tls>,
    header_timeout: Duration,
    head: crate::lean::HeadLimits,
    drain: DrainWatch,
}

impl Connections {
    /// Serves one connection: `GET`s on the lean path, until another request hands the
    /// connection to hyper.
    async fn serve(self: Arc<Self>, mut connection: Box<Connection>) {
        use crate::lean::{After, Answer, Head};
        use tower_service::Service as _;

        if let Some(tls) = &self.tls {
            // Boxed, as the steps below: an idle stream's state keeps none of the handshake.
            match Box::pin(self.handshake(tls, &mut connection)).await {
                Some(true) => {
                    let served = self.hand_over(axum::body::Bytes::new(), *connection, true);
                    if let Err(e) = served.await {
                        tracing::trace!(error = %e, "HTTP/2 connection ended with an error");
                    }
                    return;
                }
                Some(false) => {}
                None => return,
            }
        }
        loop {
            // The head must arrive whole within the head timeout, as with hyper; a connection
            // waiting for its next head closes when the drain starts.
            // The transient steps are boxed, so that the connection's state, which an idle
            // stream keeps for hours, carries none of their futures.
            let head = Box::pin(async {
                tokio::select! {
                    biased;
                    () = self.drain.started() => None,
                    head = tokio::time::timeout(self.header_timeout, crate::lean::read_head(&mut connection.io, self.head)) => head.ok(),
                }
            });
            let request = match head.await {
                None | Some(Head::Gone) => return,
                Some(Head::Other(prefix)) => {
                    // HTTP/2 with prior knowledge, where h2c is on; anything else is HTTP/1.1's.
                    let http2 = self.h2c && starts_h2(&prefix);
                    let served = self.hand_over(prefix, *connection, http2);
                    if let Err(e) = served.await {
                        tracing::trace!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                Some(Head::Get(request)) => request,
            };
            // The call and the answer's head, boxed too: only the stream's writer (about 100
            // bytes) stays in the connection's state.
            let answer = Box::pin(async {
                let mut request = *request;
                let close = request
                    .headers()
                    .get(header::CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                request.extensions_mut().insert(Peer(connection.peer));
                let Ok(response) = self.router.clone().call(request).await;
                let close = close || self.drain.is_draining();
                crate::lean::respond(&mut connection.io, response, close).await
            });
            let after = match answer.await {
                Answer::Done(after) => after,
                Answer::Stream(stream) => stream.await,
            };
            if after == After::Close {
                return;
            }
        }
    }

    /// The TLS handshake, within the head timeout (and given up when the drain starts):
    /// `Some(true)` when the client chose HTTP/2 by ALPN, `Some(false)` for HTTP/1.1, `None`
    /// when it failed.
    async fn handshake(&self, tls: &crate::tls::Tls, connection: &mut Connection) -> Option<bool> {
        let Io::Plain(tcp) = std::mem::replace(&mut connection.io, Io::Handshaking) else {
            return None;
        };
        let accepted = tokio::select! {
            biased;
            () = self.drain.started() => return None,
            accepted = tokio::time::timeout(self.header_timeout, tls.acceptor().accept(tcp)) => accepted,
        };
        let stream = match accepted {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => return None,
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        connection.io = Io::Tls(Box::new(stream));
        Some(h2)
    }

    /// Hyper's connection from here on, with the bytes read so far: HTTP/1.1 (`http2` false),
    /// or HTTP/2 (after a TLS handshake that chose it, with no bytes; or h2c's preface). Built
    /// outside [`Self::serve`] (and boxed) so that a lean connection's state does not reserve
    /// room for hyper's.
    fn hand_over(
        &self,
        prefix: axum::body::Bytes,
        connection: Connection,
        http2: bool,
    ) -> Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>> {
        type Served = Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>;
        let Connection {
            io,
            peer,
            watcher,
            _slot: slot,
        } = connection;
        let service = WithPeer {
            router: self.router.clone(),
            peer,
        };
        let io = hyper_util::rt::TokioIo::new(crate::lean::Rewind::new(prefix, io));
        let served: Served = if http2 {
            let service = Http2Streams(service);
            Box::pin(watcher.watch(self.h2.serve_connection(io, service)))
        } else {
            Box::pin(watcher.watch(self.http.serve_connection(io, service)))
        };
        Box::pin(async move {
            let result = served.await;
            drop(slot);
            result
        })
    }
}

/// The per-request limits of the edge.
#[derive(Debug, Clone, Copy)]
struct Limits {
    body_timeout: Duration,
    max_url_length: usize,
}

/// 414 for a request target over the limit; a body that must arrive whole within the body
/// timeout (a request without one is left as it is, so a stream costs nothing here).
async fn request_limits(
    axum::extract::State(limits): axum::extract::State<Limits>,
    request: Request,
    next: Next,
) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > limits.max_url_length {
        return ApiError::new(
            ErrorCode::UriTooLong,
            format!(
                "the request target is {target} bytes; the limit is {}",
                limits.max_url_length
            ),
        )
        .into_response();
    }
    let request = if crate::http::has_body(request.headers()) {
        request.map(|body| crate::http::deadline(body, limits.body_timeout))
    } else {
        request
    };
    next.run(request).await
}

/// The admin listener's routes: [`ops_routes`] plus `/prestop`, the Kubernetes `preStop` hook.
/// `GET` or `POST /prestop` withdraws the process from readiness at once and answers after
/// `prestop_delay`, long enough for the load balancers to drop the endpoint; the kubelet then sends
/// SIGTERM, which starts the drain. Never expose this listener through the Ingress or any public
/// load balancer.
pub fn admin_routes(
    health: Health,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    prestop_delay: Duration,
) -> Router {
    let withdraw = health.clone();
    let prestop = move || {
        let health = withdraw.clone();
        async move {
            let asked = std::time::Instant::now();
            health.withdraw();
            tokio::time::sleep(prestop_delay).await;
            axum::Json(serde_json::json!({
                "withdrawn": true,
                "waited_ms": asked.elapsed().as_millis() as u64,
            }))
        }
    };
    ops_routes(health, metrics).route("/prestop", get(prestop.clone()).post(prestop))
}

/// The router as one service shared by every connection. Served as it is, a `Router` is rebuilt
/// for each connection (axum turns its handlers into routes then: about 9 KB and an allocation per
/// route for a connection that will make one request); built once here, a connection gets a
/// reference to it.
fn shared(router: Router) -> IntoMakeService<Router> {
    router.with_state(()).into_make_service()
}

/// Serves the admin routes on `listener` until the process ends (they stay up through the drain, so
/// probes and scrapes keep answering).
pub fn spawn_admin(listener: TcpListener, router: Router) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let router = router.layer(axum::middleware::from_fn(crate::error::json_errors));
        if let Err(e) = axum::serve(listener, shared(router)).await {
            tracing::error!(error = %e, "the admin listener failed");
        }
    })
}

/// `/healthz`, `/readyz` and `/metrics` (rendered by `metrics`), plus a JSON 404 for anything else.
pub fn ops_routes(health: Health, metrics: Arc<dyn Fn() -> String + Send + Sync>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(move || std::future::ready(health.readyz())))
        .route(
            "/metrics",
            get(move || {
                let body = metrics();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response()
                }
            }),
        )
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn options() -> ServeOptions {
        ServeOptions {
            write_timeout: Duration::from_secs(5),
            drain_deadline: Duration::from_secs(5),
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            max_header_size: 8192,
            max_headers: 64,
            max_url_length: 4096,
            max_tcp_connections: 16,
            trust_traceparent: false,
            tls: None,
            http2: Http2Options::default(),
        }
    }

    /// Reads one answer: up to the end of its body (by `content-length`, or the last chunk).
    async fn answer(io: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
        let mut got = Vec::new();
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let (head, body) = text.split_at(end + 4);
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|n| n.parse::<usize>().unwrap());
                let done = match length {
                    Some(n) => body.len() >= n,
                    None => body.ends_with("0\r\n\r\n"),
                };
                if done {
                    return text;
                }
            }
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    }

    /// One keep-alive connection: GETs and a stream on the lean path, then a POST that hands the
    /// connection to hyper, which serves what follows.
    #[tokio::test]
    async fn one_connection_serves_gets_and_a_stream_then_hands_over_to_hyper() {
        let router = Router::new()
            .route("/page", get(|| async { "hi" }))
            .route(
                "/v1/stream",
                get(|| async {
                    let frames = tokio_stream::iter([Ok::<_, std::convert::Infallible>(
                        axum::body::Bytes::from_static(b"data: x\n\n"),
                    )]);
                    axum::body::Body::from_stream(frames)
                }),
            )
            .route("/echo", post(|body: String| async move { body }));
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (drain, _) = Drain::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve(
                listener,
                router,
                &drain,
                &options(),
                Arc::new(|| {}),
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        let mut io = tokio::net::TcpStream::connect(addr).await.unwrap();
        let exchanges: [(&str, &str); 4] = [
            (
                "GET /page HTTP/1.1\r\nHost: x\r\n\r\n",
                "\r\ncontent-length: 2\r\n\r\nhi",
            ),
            (
                "GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n",
                "\r\ntransfer-encoding: chunked\r\n\r\n9\r\ndata: x\n\n\r\n0\r\n\r\n",
            ),
            (
                "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
                "\r\n\r\nabc",
            ),
            ("GET /page HTTP/1.1\r\nHost: x\r\n\r\n", "\r\n\r\nhi"),
        ];
        for (request, ends) in exchanges {
            io.write_all(request.as_bytes()).await.unwrap();
            let text = answer(&mut io).await;
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.ends_with(ends), "{request:?} answered {text:?}");
        }
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    /// A server on a free port with `options`, stopped when the sender is dropped: a page, and a
    /// stream that sends one frame and stays open.
    async fn start(
        options: ServeOptions,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let router = Router::new().route("/page", get(|| async { "hi" })).route(
            "/v1/stream",
            get(|| async {
                use futures_util::StreamExt as _;
                let first = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
                    axum::body::Bytes::from_static(b"data: x\n\n"),
                )]);
                axum::body::Body::from_stream(first.chain(futures_util::stream::pending()))
            }),
        );
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (drain, _) = Drain::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve(listener, router, &drain, &options, Arc::new(|| {}), async {
                let _ = stopped.await;
            })
            .await
        });
        (addr, stop, server)
    }

    fn tls_options() -> ServeOptions {
        let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/certs");
        ServeOptions {
            tls: Some(crate::tls::TlsFiles {
                cert: certs.join("server.pem"),
                key: certs.join("server.key"),
            }),
            ..options()
        }
    }

    /// A TLS client that trusts the test CA and offers `alpn`.
    async fn tls_connect(
        addr: std::net::SocketAddr,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        use tokio_rustls::rustls::{self, pki_types::pem::PemObject as _};
        let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/certs/ca.pem");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap()
    }

    /// HTTP/2 over `io`: the request sender, its connection driven in the background.
    async fn h2_client<T>(io: T) -> hyper::client::conn::http2::SendRequest<axum::body::Body>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(io),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        sender
    }

    fn get_request(path: &str) -> axum::http::Request<axum::body::Body> {
        axum::http::Request::get(format!("https://localhost{path}"))
            .body(axum::body::Body::empty())
            .unwrap()
    }

    /// Over TLS, a client offering `h2` gets HTTP/2 and twelve streams open at once on its one
    /// connection, each receiving its first frame (over HTTP/1.1 a browser would hold six); a
    /// client offering only `http/1.1` is served HTTP/1.1 on the same listener.
    #[tokio::test]
    async fn tls_serves_http2_by_alpn_and_http1_otherwise() {
        use http_body_util::BodyExt as _;
        use tokio::io::AsyncWriteExt as _;
        let (addr, stop, server) = start(tls_options()).await;

        let tls = tls_connect(addr, &[b"h2", b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
        let mut sender = h2_client(tls).await;
        let mut open = Vec::new();
        for _ in 0..12 {
            sender.ready().await.unwrap();
            let response = sender
                .send_request(get_request("/v1/stream"))
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.version(), axum::http::Version::HTTP_2);
            open.push(response.into_body());
        }
        for body in &mut open {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("a frame within 5 s")
                .unwrap()
                .unwrap();
            assert_eq!(frame.into_data().unwrap(), "data: x\n\n");
        }

        let mut tls = tls_connect(addr, &[b"http/1.1"]).await;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(b"http/1.1".as_slice())
        );
        tls.write_all(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let text = answer(&mut tls).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nhi"), "{text}");

        // A client that speaks no TLS gets no answer, and the server keeps serving.
        let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut plain, &mut buf),
        )
        .await
        .expect("closed within 5 s");
        assert!(
            !String::from_utf8_lossy(&buf[..n.unwrap_or(0)]).contains("hi"),
            "plain HTTP answered over a TLS listener"
        );
        drop(open);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    /// HTTP/2 without TLS is served only where h2c is turned on; HTTP/1.1 still is.
    #[tokio::test]
    async fn h2c_only_when_asked() {
        use http_body_util::BodyExt as _;
        let on = ServeOptions {
            http2: Http2Options {
                cleartext: true,
                ..Http2Options::default()
            },
            ..options()
        };
        let (addr, stop, server) = start(on).await;
        let mut sender = h2_client(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
        let response = sender.send_request(get_request("/page")).await.unwrap();
        assert_eq!(response.version(), axum::http::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hi");
        let _ = stop.send(());
        server.await.unwrap().unwrap();

        let (addr, stop, server) = start(options()).await;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let handshake = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await;
        if let Ok((mut sender, connection)) = handshake {
            tokio::spawn(connection);
            let answered = tokio::time::timeout(
                Duration::from_secs(5),
                sender.send_request(get_request("/page")),
            )
            .await
            .expect("refused within 5 s");
            assert!(answered.is_err(), "h2c served while off: {answered:?}");
        }
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
