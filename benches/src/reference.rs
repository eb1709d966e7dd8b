//! The physical-limit reference: an SSE server with no logic at all. `GET` anything answers an
//! event stream (no chunked encoding, no heartbeat, no history); `POST` anything takes its body as
//! one message, encodes its frame once (`id: N` and `data: BODY`) and writes it to every open
//! stream with one `write` per socket. One task owns every stream, so there is no lock, queue or
//! wake-up per delivery. Its CPU per delivery is what writing the bytes to the sockets costs on
//! this machine: the floor for any SSE server.

use std::{collections::VecDeque, net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use crate::http::read_request;

enum Command {
    Stream(TcpStream),
    Frame(Vec<u8>),
}

struct Out {
    stream: TcpStream,
    backlog: VecDeque<u8>,
}

/// Serves on `listen` until the process ends.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(writer(rx));
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(connection(stream, tx.clone()));
    }
}

async fn connection(mut stream: TcpStream, tx: mpsc::UnboundedSender<Command>) {
    let mut buf = Vec::with_capacity(1024);
    while let Some(request) = read_request(&mut stream, &mut buf).await {
        if request.method == "GET" {
            let ok = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
                )
                .await;
            if ok.is_ok() {
                let _ = tx.send(Command::Stream(stream));
            }
            return;
        }
        if tx.send(Command::Frame(request.body)).is_err()
            || stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
    }
}

async fn writer(mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut outs: Vec<Out> = Vec::new();
    let mut id = 0u64;
    loop {
        let command = if outs.iter().any(|o| !o.backlog.is_empty()) {
            match tokio::time::timeout(Duration::from_millis(1), rx.recv()).await {
                Ok(c) => c,
                Err(_) => {
                    flush(&mut outs);
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        match command {
            None => return,
            Some(Command::Stream(stream)) => outs.push(Out {
                stream,
                backlog: VecDeque::new(),
            }),
            Some(Command::Frame(body)) => {
                id += 1;
                let mut frame = format!("id: {id}\ndata: ").into_bytes();
                frame.extend_from_slice(&body);
                frame.extend_from_slice(b"\n\n");
                outs.retain_mut(|o| write(o, &frame));
            }
        }
    }
}

/// Writes `frame` (after any backlog) without waiting; keeps what the socket would not take.
/// Returns false when the peer is gone.
fn write(out: &mut Out, frame: &[u8]) -> bool {
    if !out.backlog.is_empty() {
        out.backlog.extend(frame);
        return drain(out);
    }
    match out.stream.try_write(frame) {
        Ok(n) => {
            out.backlog.extend(&frame[n..]);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            out.backlog.extend(frame);
            true
        }
        Err(_) => false,
    }
}

fn drain(out: &mut Out) -> bool {
    while !out.backlog.is_empty() {
        let (front, _) = out.backlog.as_slices();
        match out.stream.try_write(front) {
            Ok(n) => {
                out.backlog.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

fn flush(outs: &mut Vec<Out>) {
    outs.retain_mut(drain);
}
