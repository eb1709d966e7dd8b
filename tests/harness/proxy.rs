//! A TCP proxy that injects network faults between Herald's processes and a backend (NATS,
//! MongoDB): latency on every forwarded chunk, a black hole (bytes held in both directions and
//! new connections left unanswered, as a partition looks to TCP), and resets of every open
//! connection (RST, as a middlebox or a crashed peer sends). The processes are pointed at
//! [`FaultProxy::port`] instead of the backend's.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// What the proxy does to traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Latency(Duration),
    BlackHole,
}

/// A running proxy; stops with its last handle.
#[derive(Debug, Clone)]
pub struct FaultProxy {
    /// The port the proxy listens on (127.0.0.1).
    pub port: u16,
    mode: Arc<watch::Sender<Mode>>,
    /// Bumped to reset every open connection.
    resets: Arc<watch::Sender<u64>>,
    /// Stops the accept loop when the last handle goes.
    _task: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(Mutex<Option<tokio::task::JoinHandle<()>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.lock().unwrap().take() {
            task.abort();
        }
    }
}

impl FaultProxy {
    /// Listens on a free port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, _) = watch::channel(Mode::Pass);
        let (resets, _) = watch::channel(0u64);
        let (mode, resets) = (Arc::new(mode), Arc::new(resets));
        let task = tokio::spawn({
            let (mode, resets) = (Arc::clone(&mode), Arc::clone(&resets));
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (mode, resets) = (mode.subscribe(), resets.subscribe());
                    tokio::spawn(connection(client, upstream, mode, resets));
                }
            }
        });
        Ok(Self {
            port,
            mode,
            resets,
            _task: Arc::new(AbortOnDrop(Mutex::new(Some(task)))),
        })
    }

    /// Delays every forwarded chunk by `by` from now on.
    pub fn latency(&self, by: Duration) {
        self.mode.send_replace(Mode::Latency(by));
    }

    /// Holds every byte in both directions and leaves new connections unanswered from now on.
    pub fn black_hole(&self) {
        self.mode.send_replace(Mode::BlackHole);
    }

    /// Back to forwarding as it comes (held bytes then flow).
    pub fn heal(&self) {
        self.mode.send_replace(Mode::Pass);
    }

    /// Resets every open connection (both sides get an RST); new ones are accepted.
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }
}

/// Waits while the proxy is a black hole; the delay to add before forwarding a chunk.
async fn gate(mode: &mut watch::Receiver<Mode>) -> Option<Duration> {
    let now = *mode.wait_for(|m| *m != Mode::BlackHole).await.ok()?;
    match now {
        Mode::Latency(by) => Some(by),
        _ => Some(Duration::ZERO),
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    mut resets: watch::Receiver<u64>,
) {
    // A black hole leaves the connection unanswered until it heals.
    if gate(&mut mode).await.is_none() {
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let mut client = client;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    resets.mark_unchanged();
    let reset = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let up = forward(&mut client_read, &mut server_write, mode.clone());
        let down = forward(&mut server_read, &mut client_write, mode);
        tokio::select! {
            () = up => false,
            () = down => false,
            _ = resets.changed() => true,
        }
    };
    if reset {
        // SO_LINGER 0: closing sends an RST rather than a FIN, at once. (Tokio deprecates the
        // option because a non-zero linger blocks the thread on drop; zero does not.)
        #[allow(deprecated)]
        {
            let _ = client.set_linger(Some(Duration::ZERO));
            let _ = server.set_linger(Some(Duration::ZERO));
        }
    }
}

/// Copies `from` to `to`, through the proxy's mode, until either side closes or fails.
async fn forward(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Some(delay) = gate(&mut mode).await else {
            return;
        };
        tokio::time::sleep(delay).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
