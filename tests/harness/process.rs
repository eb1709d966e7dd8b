//! A `herald` process under test.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::{Api, PATIENCE};

/// A running `herald`, killed (SIGKILL) on drop. Its data directory outlives restarts.
#[derive(Debug)]
pub struct Herald {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The data directory.
    pub data_dir: PathBuf,
    args: Vec<String>,
}

/// A process's resident memory in KiB, from /proc (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The `herald` binary: `$HERALD_BIN`, or `herald` beside the test binary's `deps/` directory.
pub fn herald_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("HERALD_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("herald");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p herald-standalone`, which tests/run does)",
        bin.display()
    );
    bin
}

/// `herald token --auth-hmac-key-file KEY ARGS`: a token signed with `key`, as a developer mints
/// one (the tests' tokens come from the real command).
pub fn mint_token(key: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(herald_bin())
        .arg("token")
        .arg("--auth-hmac-key-file")
        .arg(key)
        .args(args)
        .output()
        .expect("running herald token");
    assert!(
        out.status.success(),
        "herald token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}

impl Herald {
    /// Starts `herald` on a free port with `data_dir` and extra flags.
    pub async fn start(data_dir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Self::spawn(data_dir.to_path_buf(), "127.0.0.1:0", args).await
    }

    async fn spawn(data_dir: PathBuf, listen: &str, args: Vec<String>) -> anyhow::Result<Self> {
        let mut child = Command::new(herald_bin())
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&args)
            .env(
                "HERALD_LOG",
                std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning herald")?;
        let stdout = child.stdout.take().context("herald stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .context("herald did not start in time")??
            .context("herald exited before listening")?;
        let Some(base) = line.strip_prefix("herald listening on ") else {
            bail!("unexpected first line from herald: {line:?}");
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            base: base.to_owned(),
            data_dir,
            args,
        })
    }

    /// A client for this node.
    pub fn api(&self) -> Api {
        Api::new(self.base.clone())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("herald is running")
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// `kill -9`, and waits for the process to be gone.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        assert!(send_sigterm(self.pid()), "kill -TERM failed");
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn wait_exit(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .context("herald did not exit in time")?
            .context("waiting for herald")
    }

    /// Starts a new process on the same data directory and flags (a new port).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await;
        let next = Self::spawn(self.data_dir.clone(), "127.0.0.1:0", self.args.clone()).await?;
        *self = next;
        Ok(())
    }

    /// Starts a new process on the same data directory, flags and port.
    pub async fn restart_same_port(&mut self) -> anyhow::Result<()> {
        self.kill9().await;
        let listen = self.base.trim_start_matches("http://").to_owned();
        *self = retry_on_port(|| Self::spawn(self.data_dir.clone(), &listen, self.args.clone()))
            .await?;
        Ok(())
    }
}

/// Sends SIGTERM to `pid`; whether `kill` succeeded.
pub(crate) fn send_sigterm(pid: u32) -> bool {
    send_signal(pid, "TERM")
}

/// `kill -<signal> <pid>`; whether it was delivered.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// SIGKILL to the whole process group `pgid` (a process spawned with `process_group(0)` and
/// whatever it started: nginx's workers, chromedriver's browsers), whether its leader is still
/// there or not.
pub fn kill_group(pgid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(std::process::Stdio::null())
        .status();
}

/// Runs `spawn` until it succeeds, up to 50 times 100 ms apart: a port a killed process just
/// released may not be free yet.
pub(crate) async fn retry_on_port<T, F, Fut>(mut spawn: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut last = None;
    for _ in 0..50 {
        match spawn().await {
            Ok(next) => return Ok(next),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.expect("tried at least once"))
}
