//! Just enough HTTP/1.1 for a load generator: `http://` URLs, a keep-alive request/response
//! connection for publishing, and a response-head reader with a chunked-body decoder for streams.
//! No TLS, no redirects, no HTTP/2: what a benchmark on loopback needs and nothing that costs.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, bail, ensure};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream, lookup_host},
};

/// An `http://host:port/path?query` URL, resolved once.
#[derive(Debug, Clone)]
pub struct Url {
    /// The `Host` header's value.
    pub host: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// Path and query, as sent on the request line.
    pub target: String,
}

impl Url {
    /// Parses and resolves `url`.
    pub async fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, target) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        ensure!(!authority.is_empty(), "{url}: no host");
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
        }) {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = lookup_host(&with_port)
            .await
            .with_context(|| format!("{url}: resolving {with_port}"))?
            .next()
            .with_context(|| format!("{url}: {with_port} resolves to nothing"))?;
        Ok(Self {
            host: authority.to_owned(),
            addr,
            target: target.to_owned(),
        })
    }

    /// The same server with another path and query.
    pub fn with_target(&self, target: String) -> Self {
        Self {
            target,
            ..self.clone()
        }
    }
}

/// Connects to `addr`, from `local` when given (to spread many connections over several loopback
/// source addresses: one source address has only ~28,000 ephemeral ports).
pub async fn connect(addr: SocketAddr, local: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let stream = match local {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A response head.
#[derive(Debug)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// Header names (lowercased) and values.
    pub headers: Vec<(String, String)>,
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `Name: value` lines, names lowercased.
fn parse_headers<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

impl Head {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether the body is chunked.
    pub fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

/// Reads a response head from `stream` into `buf`; returns it and leaves the bytes after it (the
/// start of the body) in `buf`.
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Head> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = parse_head(&buf[..end])?;
            buf.drain(..end + 4);
            return Ok(head);
        }
        ensure!(buf.len() < 64 * 1024, "response head longer than 64 KiB");
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before a response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_head(raw: &[u8]) -> anyhow::Result<Head> {
    let text = std::str::from_utf8(raw).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    Ok(Head {
        status,
        headers: parse_headers(lines),
    })
}

/// A request, as the benchmark's small servers (the reference, pushpin's origin) read it.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Header names (lowercased) and values.
    pub headers: Vec<(String, String)>,
    /// The `Content-Length` body.
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Reads the next request of a kept-alive connection (what is read past it stays in `buf`);
/// `None` when the peer is gone.
pub async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    async fn more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Some(())
            }
        }
    }
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        more(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let headers = parse_headers(lines);
    let len: usize = find_header(&headers, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        more(stream, buf).await?;
    }
    let body = buf.drain(..head_end + len).skip(head_end).collect();
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a `Transfer-Encoding: chunked` body incrementally.
#[derive(Debug, Default)]
pub struct Chunked {
    /// Bytes left in the current chunk's data.
    remaining: usize,
    /// Bytes of the CRLF after the chunk's data still to skip.
    skip_crlf: usize,
    /// A partial size line.
    line: Vec<u8>,
    /// The last chunk was read.
    pub done: bool,
}

impl Chunked {
    /// Feeds raw body bytes; appends the decoded data to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        while !input.is_empty() && !self.done {
            if self.remaining > 0 {
                let n = self.remaining.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.remaining -= n;
                input = &input[n..];
                if self.remaining == 0 {
                    self.skip_crlf = 2;
                }
            } else if self.skip_crlf > 0 {
                let n = self.skip_crlf.min(input.len());
                self.skip_crlf -= n;
                input = &input[n..];
            } else {
                match input.iter().position(|&b| b == b'\n') {
                    None => {
                        self.line.extend_from_slice(input);
                        ensure!(self.line.len() < 1024, "chunk size line too long");
                        return Ok(());
                    }
                    Some(i) => {
                        self.line.extend_from_slice(&input[..i]);
                        input = &input[i + 1..];
                        let line = std::str::from_utf8(&self.line)?.trim_end_matches('\r');
                        let size = line.split(';').next().unwrap_or_default().trim();
                        let size = usize::from_str_radix(size, 16)
                            .with_context(|| format!("bad chunk size {size:?}"))?;
                        self.line.clear();
                        if size == 0 {
                            self.done = true;
                        } else {
                            self.remaining = size;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A keep-alive HTTP/1.1 connection for request/response exchanges.
#[derive(Debug)]
pub struct Conn {
    url: Url,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    /// A connection to `url`'s server (opened on first use, reopened after the server closes it).
    pub fn new(url: Url) -> Self {
        Self {
            url,
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends one request and reads the whole response; returns the status and body.
    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut req = Vec::with_capacity(256 + body.len());
        req.extend_from_slice(
            format!(
                "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
                self.url.host,
                body.len()
            )
            .as_bytes(),
        );
        for (name, value) in headers {
            req.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        // A kept-alive connection the server has closed fails on first use: send again on a new
        // one. A new connection that fails is an error. (A server that took the request and
        // closed without answering would make a duplicate, which the scenarios count.)
        loop {
            let reused = self.stream.is_some();
            if !reused {
                self.stream = Some(connect(self.url.addr, None).await?);
                self.buf.clear();
            }
            match self.exchange(&req).await {
                Ok(r) => return Ok(r),
                Err(e) if reused && e.nothing_read => {
                    self.stream = None;
                }
                Err(e) => {
                    self.stream = None;
                    return Err(e.error);
                }
            }
        }
    }

    async fn exchange(&mut self, req: &[u8]) -> Result<(u16, Vec<u8>), ExchangeError> {
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(req).await.map_err(|e| ExchangeError {
            error: e.into(),
            nothing_read: true,
        })?;
        let head = match read_head(stream, &mut self.buf).await {
            Ok(h) => h,
            Err(e) => {
                return Err(ExchangeError {
                    error: e,
                    nothing_read: self.buf.is_empty(),
                });
            }
        };
        let fail = |e: anyhow::Error| ExchangeError {
            error: e,
            nothing_read: false,
        };
        let mut body = Vec::new();
        if head.chunked() {
            let mut chunked = Chunked::default();
            let mut input = std::mem::take(&mut self.buf);
            loop {
                chunked.feed(&input, &mut body).map_err(fail)?;
                if chunked.done {
                    break;
                }
                input.clear();
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.map_err(|e| fail(e.into()))?;
                if n == 0 {
                    return Err(fail(anyhow::anyhow!("connection closed inside a body")));
                }
                input.extend_from_slice(&chunk[..n]);
            }
        } else {
            let len: usize = head
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while self.buf.len() < len {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.map_err(|e| fail(e.into()))?;
                if n == 0 {
                    return Err(fail(anyhow::anyhow!("connection closed inside a body")));
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
            body = self.buf.drain(..len).collect();
        }
        if head
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.stream = None;
        }
        Ok((head.status, body))
    }
}

struct ExchangeError {
    error: anyhow::Error,
    /// Nothing of a response was read: on a kept-alive connection the server closed, the request
    /// is sent again on a new one.
    nothing_read: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_across_every_split() {
        let raw = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        for split in 0..raw.len() {
            let mut c = Chunked::default();
            let mut out = Vec::new();
            c.feed(&raw[..split], &mut out).unwrap();
            c.feed(&raw[split..], &mut out).unwrap();
            assert_eq!(out, b"hello world", "split at {split}");
            assert!(c.done);
        }
    }

    #[test]
    fn head_parsing() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b").unwrap();
        assert_eq!(h.status, 200);
        assert!(h.chunked());
        assert_eq!(h.header("x-a"), Some("b"));
    }
}
