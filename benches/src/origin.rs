//! A minimal GRIP origin for pushpin, which keeps no history of its own.
//!
//! - `GET /stream/{topic}`: answers `Grip-Hold: stream` on channel `{topic}` with an event-stream
//!   body holding the events after the request's `Last-Event-ID` (the origin's replay), so pushpin
//!   sends those and then holds the connection open on the channel.
//! - `POST /publish/{topic}`: numbers the body (the SSE id), keeps its frame in memory, and hands
//!   the frame to pushpin's publish endpoint before answering `200`.
//!
//! One HTTP/1.1 connection to pushpin per publishing connection, so one publisher's messages reach
//! pushpin in its order.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};

use crate::http::{Conn, Url, read_request};

#[derive(Debug, Default)]
struct Topic {
    /// Frames by id (ids are 1, 2, …: the frame of id `i` is at `i - 1`).
    frames: Vec<Arc<str>>,
}

type Topics = Arc<Mutex<HashMap<String, Topic>>>;

/// Serves on `listen`, publishing through pushpin's `publish` URL (its `push_in_http` address).
pub async fn serve(listen: SocketAddr, publish: &str) -> anyhow::Result<()> {
    let publish = Url::parse(publish).await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    let topics = Topics::default();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(connection(stream, Arc::clone(&topics), publish.clone()));
    }
}

async fn connection(mut stream: TcpStream, topics: Topics, publish: Url) {
    let mut buf = Vec::with_capacity(1024);
    let mut pushpin: Option<Conn> = None;
    while let Some(request) = read_request(&mut stream, &mut buf).await {
        let path = request.path.as_str();
        let response = match (
            request.method.as_str(),
            path.strip_prefix("/stream/"),
            path.strip_prefix("/publish/"),
        ) {
            ("GET", Some(topic), _) => {
                let after: usize = request
                    .header("last-event-id")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(usize::MAX);
                let replay: String = {
                    let topics = topics.lock().expect("topics");
                    match topics.get(topic) {
                        Some(t) if after < t.frames.len() => t.frames[after..].concat(),
                        _ => String::new(),
                    }
                };
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nGrip-Hold: stream\r\nGrip-Channel: {topic}\r\nContent-Length: {}\r\n\r\n{replay}",
                    replay.len()
                )
            }
            ("POST", _, Some(topic)) => {
                let data = String::from_utf8_lossy(&request.body).replace(['\r', '\n'], " ");
                let (id, frame) = {
                    let mut topics = topics.lock().expect("topics");
                    let t = topics.entry(topic.to_owned()).or_default();
                    let id = t.frames.len() + 1;
                    let frame: Arc<str> = format!("id: {id}\ndata: {data}\n\n").into();
                    t.frames.push(Arc::clone(&frame));
                    (id, frame)
                };
                let item = serde_json::json!({
                    "items": [{
                        "channel": topic,
                        "id": id.to_string(),
                        "formats": { "http-stream": { "content": &*frame } },
                    }]
                });
                let conn = pushpin.get_or_insert_with(|| Conn::new(publish.clone()));
                let headers = [("Content-Type".to_owned(), "application/json".to_owned())];
                match conn
                    .request(
                        "POST",
                        &publish.target,
                        &headers,
                        item.to_string().as_bytes(),
                    )
                    .await
                {
                    Ok((200..=299, _)) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"id\":{id}}}",
                        format!("{{\"id\":{id}}}").len()
                    ),
                    Ok((status, _)) => {
                        format!(
                            "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nX-Pushpin-Status: {status}\r\n\r\n"
                        )
                    }
                    Err(_) => "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n".to_owned(),
                }
            }
            _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned(),
        };
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
