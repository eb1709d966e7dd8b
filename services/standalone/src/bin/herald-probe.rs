//! `herald-probe [URL]`: the container image's health check. GETs a Herald health endpoint and
//! exits 0 on a 2xx answer, 1 otherwise; it gives up when connecting, sending or reading makes
//! no progress for 1.5 s. The runtime image has no shell and no
//! curl, so the check is a binary of its own, with nothing but the standard library.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    process::ExitCode,
    time::Duration,
};

const DEFAULT_URL: &str = "http://127.0.0.1:8080/healthz";
const TIMEOUT: Duration = Duration::from_millis(1500);
const USAGE: &str = "\
herald-probe: GET a Herald health endpoint; exit 0 on a 2xx answer, 1 otherwise.

Usage: herald-probe [URL]

URL defaults to $HERALD_PROBE_URL, else http://127.0.0.1:8080/healthz. Only plain http:// URLs
(the probe runs inside the container, against the process's own port).";

fn main() -> ExitCode {
    let url = match std::env::args().nth(1) {
        Some(arg) if arg == "-h" || arg == "--help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(arg) => arg,
        None => std::env::var("HERALD_PROBE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned()),
    };
    match probe(&url) {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("herald-probe: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("herald-probe: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The status code of `GET url`.
fn probe(url: &str) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("resolving {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: herald-probe\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    // The status line is all that is needed: `HTTP/1.1 200 OK`.
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]).map_err(|e| e.to_string())? {
            0 => break,
            n => read += n,
        }
    }
    let line = String::from_utf8_lossy(&head[..read]);
    line.strip_prefix("HTTP/1.")
        .and_then(|l| l.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}
