//! Real servers for the distributed tests, each on a free loopback port with its own data
//! directory, killed and removed on drop: `nats-server -js`, the MongoDB-wire server
//! `secantusd-rs` (or the real MongoDB at `$HERALD_TEST_MONGODB_URI`), nginx, `redis-server`, and
//! Herald's `herald-ingest`, `herald-gateway` and `herald-redis-bridge`.
//!
//! The servers come from `tests/servers/install` (run by `tests/run`), found through
//! `$HERALD_NATS_SERVER`, `$HERALD_SECANTUSD`, `$HERALD_NGINX`, `$HERALD_REDIS`, or their default
//! install places.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

use crate::{
    Api, PATIENCE,
    process::{retry_on_port, send_signal, send_sigterm},
};

/// The connection string of a MongoDB (or a proxy of one) on this machine's `port`.
pub fn mongodb_uri(port: u16) -> String {
    format!("mongodb://127.0.0.1:{port}/?directConnection=true")
}

/// A free loopback port (bound and released; the server binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Where `tests/servers/install` puts what it installs: `$HERALD_CACHE` or `~/.cache/herald`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HERALD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/herald")
        })
}

/// A server or tool binary from the environment (`var`) or its install place.
pub fn server_bin(var: &str, default: PathBuf) -> PathBuf {
    let bin = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    assert!(
        bin.exists(),
        "{} is missing: run tests/servers/install (tests/run does), or set {var}",
        bin.display()
    );
    bin
}

/// One of Herald's binaries, beside the test binary's `deps/` directory.
pub fn herald_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (tests/run does)",
        bin.display()
    );
    bin
}

/// The distributed mode's settings for a test's own servers, as the binaries resolve them from
/// their defaults: NATS at `nats_url` (empty for none), MongoDB at `uri` in `database`, no
/// retention, a one-hour idempotency window.
pub fn cluster_config(nats_url: &str, uri: &str, database: &str) -> herald_cluster::ClusterConfig {
    herald_cluster::ClusterConfig {
        nats_url: nats_url.to_owned(),
        nats_auth: herald_cluster::NatsAuth::None,
        nats_tls: herald_cluster::NatsTls::default(),
        mongodb_uri: herald_config::Secret::new(uri),
        mongodb_database: database.to_owned(),
        stream: "HERALD".into(),
        stream_max_age: None,
        stream_max_bytes: None,
        stream_replicas: 1,
        duplicate_window: Duration::from_secs(120),
        retention_age: None,
        idempotency_window: Duration::from_secs(3600),
        trim_interval: Duration::from_secs(10),
        backend_timeout: Duration::from_secs(5),
    }
}

/// Waits until something listens on `port` (up to [`PATIENCE`]).
pub async fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nothing listens on port {port}")
}

fn kill(child: &mut Child) {
    let _ = child.start_kill();
}

/// `nats-server -js` with its own store directory.
#[derive(Debug)]
pub struct Nats {
    child: Child,
    /// The client port.
    pub port: u16,
    dir: TempDir,
    extra: Vec<String>,
}

impl Nats {
    /// Starts a server.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Starts a server with more flags (`--user`, `--tls`, ...).
    pub async fn start_with(extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = Self::spawn(port, dir.path(), &extra).await?;
        Ok(Self {
            child,
            port,
            dir,
            extra,
        })
    }

    async fn spawn(port: u16, dir: &Path, extra: &[String]) -> anyhow::Result<Child> {
        let bin = server_bin(
            "HERALD_NATS_SERVER",
            cache_dir().join("venv/bin/nats-server"),
        );
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .arg("-sd")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nats-server")?;
        wait_port(port).await?;
        Ok(child)
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `kill -9`, then a new server on the same port and store directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        self.resume().await
    }

    /// A new server on the same port and store directory (after [`Self::stop`]).
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        self.child = Self::spawn(self.port, self.dir.path(), &self.extra).await?;
        Ok(())
    }

    /// `kill -9`, and waits for it to be gone.
    pub async fn stop(&mut self) {
        kill(&mut self.child);
        let _ = self.child.wait().await;
    }

    /// `kill -9`, deletes everything JetStream stored, and starts again on the same port: a NATS
    /// that lost its disk.
    pub async fn restart_empty(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        for entry in std::fs::read_dir(self.dir.path())? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(path)?;
            } else {
                std::fs::remove_file(path)?;
            }
        }
        self.resume().await
    }
}

/// Debian's `redis-server` with its own directory. It keeps an append-only file synced on every
/// write, so a restart (even `kill -9`) keeps its streams: the setting the Streams option of the
/// bridge needs to be lossless across Redis restarts.
#[derive(Debug)]
pub struct Redis {
    child: Child,
    /// The port.
    pub port: u16,
    dir: TempDir,
}

impl Redis {
    /// Starts a server.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let child = Self::spawn(port, dir.path()).await?;
        Ok(Self { child, port, dir })
    }

    async fn spawn(port: u16, dir: &Path) -> anyhow::Result<Child> {
        let bin = server_bin("HERALD_REDIS", PathBuf::from("/usr/bin/redis-server"));
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        wait_port(port).await?;
        Ok(child)
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A client.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid URL")
    }

    /// `kill -9`, and waits for it to be gone.
    pub async fn stop(&mut self) {
        kill(&mut self.child);
        let _ = self.child.wait().await;
    }

    /// A new server on the same port and directory (after [`Self::stop`]).
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        self.child = Self::spawn(self.port, self.dir.path()).await?;
        Ok(())
    }
}

/// A MongoDB for one test: a `secantusd-rs` of its own, or a fresh database on the real server
/// at `$HERALD_TEST_MONGODB_URI`.
#[derive(Debug)]
pub struct Mongo {
    server: Option<(Child, TempDir)>,
    /// The connection string.
    pub uri: String,
    /// The database this test owns.
    pub database: String,
    port: u16,
}

impl Mongo {
    /// The real MongoDB when `$HERALD_TEST_MONGODB_URI` is set, else a `secantusd-rs`.
    pub async fn start() -> anyhow::Result<Self> {
        match std::env::var("HERALD_TEST_MONGODB_URI") {
            Ok(uri) if !uri.is_empty() => Ok(Self {
                server: None,
                uri,
                database: format!("herald_test_{:016x}", rand_u64()),
                port: 0,
            }),
            _ => Self::start_local().await,
        }
    }

    /// The local server's pid (none with `$HERALD_TEST_MONGODB_URI`).
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().and_then(|(child, _)| child.id())
    }

    /// A string field of the event document at `seq` in the `events` collection, if present.
    pub async fn event_field(&self, seq: u64, field: &str) -> anyhow::Result<Option<String>> {
        let client = mongodb::Client::with_uri_str(&self.uri).await?;
        let doc = client
            .database(&self.database)
            .collection::<mongodb::bson::Document>("events")
            .find_one(mongodb::bson::doc! { "_id": seq as i64 })
            .await?;
        Ok(doc.and_then(|d| d.get_str(field).ok().map(str::to_owned)))
    }

    /// Always a `secantusd-rs` of this test's own (for tests that restart the server).
    pub async fn start_local() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (child, port) = Self::spawn(dir.path(), 0).await?;
        Ok(Self {
            server: Some((child, dir)),
            uri: mongodb_uri(port),
            database: "herald".to_owned(),
            port,
        })
    }

    async fn spawn(dir: &Path, port: u16) -> anyhow::Result<(Child, u16)> {
        let bin = server_bin(
            "HERALD_SECANTUSD",
            cache_dir().join("secantus/bin/secantusd-rs"),
        );
        let mut child = Command::new(bin)
            .args(["--port", &port.to_string(), "--storage-path"])
            .arg(dir)
            .args(["--cache-size", "256M"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting secantusd-rs")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let port = loop {
            let line = tokio::time::timeout(PATIENCE, lines.next_line())
                .await
                .context("secantusd-rs did not start in time")??
                .context("secantusd-rs exited before listening")?;
            if let Some(addr) = line.split("listening on ").nth(1) {
                break addr.trim().rsplit(':').next().context("port")?.parse()?;
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        wait_port(port).await?;
        Ok((child, port))
    }

    /// `kill -9` the server, then a new one on the same port and storage.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.resume().await
    }

    /// `kill -9` the server, and waits for it to be gone.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let (child, _) = self
            .server
            .as_mut()
            .context("cannot stop an external MongoDB")?;
        kill(child);
        let _ = child.wait().await;
        Ok(())
    }

    /// A new server on the same port and storage (after [`Self::stop`]).
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let (child, dir) = self
            .server
            .as_mut()
            .context("cannot resume an external MongoDB")?;
        let port = self.port;
        *child = retry_on_port(|| Self::spawn(dir.path(), port)).await?.0;
        Ok(())
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The shared options of a deployment's processes.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// `--nats-url`
    pub nats_url: String,
    /// `--mongodb-uri`
    pub mongodb_uri: String,
    /// `--mongodb-database`
    pub database: String,
    /// Flags every process gets (retention and so on: the stream's settings must agree).
    pub shared: Vec<String>,
}

impl Deployment {
    /// A deployment in the Redis bus mode: no NATS (the URL given points at a closed port), every
    /// process told `--bus redis --redis-url` this Redis, and `shared`.
    pub fn redis_bus(redis: &Redis, mongo: &Mongo, shared: &[&str]) -> Self {
        let mut flags = vec!["--bus", "redis", "--redis-url"];
        let url = redis.url();
        flags.push(&url);
        flags.extend_from_slice(shared);
        Self {
            nats_url: "nats://127.0.0.1:1".to_owned(),
            mongodb_uri: mongo.uri.clone(),
            database: mongo.database.clone(),
            shared: flags.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A deployment over these servers.
    pub fn new(nats: &Nats, mongo: &Mongo, shared: &[&str]) -> Self {
        Self {
            nats_url: nats.url(),
            mongodb_uri: mongo.uri.clone(),
            database: mongo.database.clone(),
            shared: shared.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Starts a `herald-ingest`.
    pub async fn ingest(&self, extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Service> {
        Service::start("herald-ingest", self, extra, env).await
    }

    /// Starts a `herald-gateway`.
    pub async fn gateway(&self, extra: &[&str]) -> anyhow::Result<Service> {
        Service::start("herald-gateway", self, extra, &[]).await
    }

    /// Starts a `herald-redis-bridge` (`--listen`, NATS and MongoDB set; Redis and the rest in
    /// `extra`).
    pub async fn bridge(&self, extra: &[&str]) -> anyhow::Result<Service> {
        Service::start("herald-redis-bridge", self, extra, &[]).await
    }

    /// Starts a `herald-gateway` with more environment.
    pub async fn gateway_env(
        &self,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        Service::start("herald-gateway", self, extra, env).await
    }
}

/// A running `herald-ingest` or `herald-gateway`, killed on drop.
#[derive(Debug)]
pub struct Service {
    child: Child,
    name: &'static str,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The admin listener's `http://127.0.0.1:PORT`, when started with `--admin-listen`.
    pub admin: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Lines the process wrote to stderr (logs, fault-injection notices).
    pub stderr: mpsc::UnboundedReceiver<String>,
}

impl Service {
    async fn start(
        name: &'static str,
        deployment: &Deployment,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut args = vec![
            "--nats-url".to_owned(),
            deployment.nats_url.clone(),
            "--mongodb-uri".to_owned(),
            deployment.mongodb_uri.clone(),
            "--mongodb-database".to_owned(),
            deployment.database.clone(),
        ];
        args.extend(deployment.shared.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::spawn(name, "127.0.0.1:0", args, env).await
    }

    async fn spawn(
        name: &'static str,
        listen: &str,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(herald_binary(name))
            .arg("--listen")
            .arg(listen)
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(
                "HERALD_LOG",
                std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        let (tx, stderr) = mpsc::unbounded_channel();
        let mut err_lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                eprintln!("[{name}] {line}");
                let _ = tx.send(line);
            }
        });
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        // `<name> listening on URL`, then `<name> admin listening on URL` when asked for.
        let mut announced = async |what: &str| -> anyhow::Result<String> {
            let prefix = format!("{name} {what} on ");
            let line = tokio::time::timeout(PATIENCE, lines.next_line())
                .await
                .with_context(|| format!("{name}: no {what:?} line in time"))??
                .with_context(|| format!("{name} exited before {what:?}"))?;
            match line.strip_prefix(&prefix) {
                Some(url) => Ok(url.to_owned()),
                None => bail!("{name}: expected {prefix:?}, got {line:?}"),
            }
        };
        let base = announced("listening").await?;
        let admin = if args.iter().any(|a| a == "--admin-listen") {
            Some(announced("admin listening").await?)
        } else {
            None
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            name,
            base,
            admin,
            args,
            env,
            stderr,
        })
    }

    /// A client for this process.
    pub fn api(&self) -> Api {
        Api::new(self.base.clone())
    }

    /// A client for the admin listener (started with `--admin-listen`).
    pub fn admin_api(&self) -> Api {
        Api::new(self.admin.clone().expect("started without --admin-listen"))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `HOST:PORT`
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// `kill -9`, and waits for the process to be gone.
    pub async fn kill9(&mut self) {
        kill(&mut self.child);
        let _ = self.child.wait().await;
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        assert!(
            send_sigterm(self.child.id().expect("running")),
            "kill -TERM failed"
        );
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn wait_exit(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .with_context(|| format!("{} did not exit in time", self.name))?
            .context("waiting for the process")
    }

    /// Starts the process again on the same port with the same flags (after it exited or was
    /// killed).
    pub async fn restart_same_port(&mut self) -> anyhow::Result<()> {
        self.kill9().await;
        let listen = self.addr().to_owned();
        *self =
            retry_on_port(|| Self::spawn(self.name, &listen, self.args.clone(), self.env.clone()))
                .await?;
        Ok(())
    }

    /// Waits for a stderr line containing `needle`.
    pub async fn wait_stderr(&mut self, needle: &str) -> anyhow::Result<String> {
        tokio::time::timeout(PATIENCE, async {
            while let Some(line) = self.stderr.recv().await {
                if line.contains(needle) {
                    return Ok(line);
                }
            }
            bail!("{} ended without writing {needle:?}", self.name)
        })
        .await
        .with_context(|| format!("no {needle:?} from {} in time", self.name))?
    }
}

/// Debian's nginx (or `$HERALD_NGINX`).
pub fn nginx_bin() -> PathBuf {
    server_bin("HERALD_NGINX", PathBuf::from("/usr/sbin/nginx"))
}

/// A directory for an nginx prefix: its workers drop root, so they must be able to reach it.
pub fn nginx_dir() -> anyhow::Result<TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    Ok(dir)
}

/// nginx in front of the gateways and ingests, with `deploy/nginx/herald.conf` rendered.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    port: u16,
    dir: TempDir,
    /// The certificate lines of a TLS listener.
    tls: Option<String>,
}

impl Nginx {
    /// Starts nginx balancing over `gateways` and `ingests` (`HOST:PORT` each).
    pub async fn start(gateways: &[&str], ingests: &[&str]) -> anyhow::Result<Self> {
        Self::start_sized(gateways, ingests, 1, 8192).await
    }

    /// [`Nginx::start`] serving browsers over TLS with HTTP/2 (and HTTP/1.1), with the
    /// certificate and key at `tls`; its `base` is `https://localhost:PORT`.
    pub async fn start_tls(
        gateways: &[&str],
        ingests: &[&str],
        tls: (&Path, &Path),
    ) -> anyhow::Result<Self> {
        Self::start_with(gateways, ingests, 1, 8192, Some(tls)).await
    }

    /// [`Nginx::start`] with `workers` worker processes of `connections` connections each (each
    /// proxied stream takes two).
    pub async fn start_sized(
        gateways: &[&str],
        ingests: &[&str],
        workers: usize,
        connections: usize,
    ) -> anyhow::Result<Self> {
        Self::start_with(gateways, ingests, workers, connections, None).await
    }

    async fn start_with(
        gateways: &[&str],
        ingests: &[&str],
        workers: usize,
        connections: usize,
        tls: Option<(&Path, &Path)>,
    ) -> anyhow::Result<Self> {
        let dir = nginx_dir()?;
        let port = free_port();
        let tls = tls.map(|(cert, key)| {
            format!(
                "ssl_certificate {}; ssl_certificate_key {};",
                cert.display(),
                key.display()
            )
        });
        Self::render(dir.path(), port, tls.as_deref(), gateways, ingests)?;
        let main = format!(
            "worker_processes {workers};\npid {pid};\nerror_log stderr crit;\nevents {{ worker_connections {connections}; }}\nhttp {{\n  access_log off;\n  include {site};\n}}\n",
            pid = dir.path().join("nginx.pid").display(),
            site = dir.path().join("herald.conf").display(),
        );
        std::fs::write(dir.path().join("nginx.conf"), main)?;
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .args(["-e", "stderr", "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // A group of its own: the drop can take its workers down with it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("starting nginx")?;
        wait_port(port).await?;
        Ok(Self {
            child,
            base: match tls {
                Some(_) => format!("https://localhost:{port}"),
                None => format!("http://127.0.0.1:{port}"),
            },
            port,
            dir,
            tls,
        })
    }

    /// Writes `deploy/nginx/herald.conf` rendered for these upstreams into `dir`, with `tls`
    /// (the certificate lines) on a TLS and HTTP/2 listener.
    fn render(
        dir: &Path,
        port: u16,
        tls: Option<&str>,
        gateways: &[&str],
        ingests: &[&str],
    ) -> anyhow::Result<()> {
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/herald.conf"),
        )?;
        let servers = |addrs: &[&str]| {
            addrs
                .iter()
                .map(|a| format!("server {a} max_fails=0;"))
                .collect::<Vec<_>>()
                .join("\n    ")
        };
        let site = template
            .replace(
                "{{listen}}",
                &match tls {
                    Some(_) => format!("127.0.0.1:{port} ssl http2"),
                    None => format!("127.0.0.1:{port}"),
                },
            )
            .replace("{{tls}}", tls.unwrap_or(""))
            .replace("{{gateways}}", &servers(gateways))
            .replace("{{ingests}}", &servers(ingests));
        std::fs::write(dir.join("herald.conf"), site)?;
        Ok(())
    }

    /// Changes the upstreams and reloads (SIGHUP), as an ingress controller does when endpoints
    /// change: new connections go to the new set, open streams stay where they are.
    pub async fn set_upstreams(&self, gateways: &[&str], ingests: &[&str]) -> anyhow::Result<()> {
        Self::render(
            self.dir.path(),
            self.port,
            self.tls.as_deref(),
            gateways,
            ingests,
        )?;
        let pid = self.child.id().context("nginx is not running")?;
        anyhow::ensure!(send_signal(pid, "HUP"), "kill -HUP nginx failed");
        // The master starts new workers on the new configuration within milliseconds.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }

    /// The master's pid (its workers are its children).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// A client through the load balancer.
    pub fn api(&self) -> Api {
        Api::new(self.base.clone())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A SIGKILL of the master leaves its worker behind: ask for a fast shutdown and wait.
        let Some(pid) = self.child.id() else { return };
        send_sigterm(pid);
        for _ in 0..300 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Then the whole group, whether the master is gone or still there after 3 s: a worker
        // can outlive its master (seen: two after a reload, holding a connection open), and none
        // may outlive the test holding its port and the test runner's output pipe.
        crate::process::kill_group(pid);
    }
}
