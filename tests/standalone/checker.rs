//! The fault-schedule checker (`herald_tests::checker`) against the standalone `herald`: its
//! faults are `kill -9` and SIGTERM plus a restart on the same data directory and port.

use std::time::Duration;

use herald_tests::{
    Api, Herald,
    checker::{self, System},
};

struct Standalone {
    herald: Herald,
    retention: bool,
    _dir: tempfile::TempDir,
}

impl Standalone {
    async fn start() -> Self {
        Self::start_with(&[], false).await
    }

    /// Retention that removes events during the schedule: 1 KiB of them kept (about 20), trimmed every
    /// 100 ms, so resumes and slow catch-ups race the trimmer (issue 19's first interleaving).
    async fn with_retention() -> Self {
        Self::start_with(
            &[
                "--retention-bytes",
                "1KiB",
                "--trim-interval",
                "100ms",
                "--replay-window",
                "0",
            ],
            true,
        )
        .await
    }

    async fn start_with(extra: &[&str], retention: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A short drain, so SIGTERM does not wait out the streams.
        let mut args = vec!["--drain-deadline", "1s", "--drain-jitter", "100ms"];
        args.extend(extra);
        let herald = Herald::start(dir.path(), &args).await.unwrap();
        Self {
            herald,
            retention,
            _dir: dir,
        }
    }
}

impl System for Standalone {
    fn publisher(&self) -> Api {
        self.herald.api()
    }

    fn stream_base(&self, _: usize) -> String {
        self.herald.api().base
    }

    async fn fault(&mut self, _: &mut fastrand::Rng, graceful: bool) -> String {
        if graceful {
            self.herald.sigterm();
            let status = self
                .herald
                .wait_exit(Duration::from_secs(60))
                .await
                .expect("herald exits after SIGTERM");
            assert!(status.success(), "SIGTERM: {status}");
        }
        self.herald.restart_same_port().await.expect("restart");
        if graceful {
            "SIGTERM, restart"
        } else {
            "kill -9, restart"
        }
        .to_owned()
    }

    async fn crash_publisher(&mut self, _: &mut fastrand::Rng) {
        self.herald.restart_same_port().await.expect("restart");
    }

    fn retention(&self) -> bool {
        self.retention
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_fault_schedules_keep_every_guarantee() {
    checker::run_all("standalone", Standalone::start).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_fault_schedules_with_short_retention_keep_every_guarantee() {
    checker::run_all("standalone, short retention", Standalone::with_retention).await;
}
