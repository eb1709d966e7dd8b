//! The fault-schedule checker (`herald_tests::checker`) against the standalone `herald`: its
//! faults are `kill -9` and SIGTERM plus a restart on the same data directory and port.

use std::time::Duration;

use herald_tests::{
    Api, Herald,
    checker::{self, System},
};

struct Standalone {
    herald: Herald,
    _dir: tempfile::TempDir,
}

impl Standalone {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A short drain, so SIGTERM does not wait out the streams; no retention limit is reached.
        let herald = Herald::start(
            dir.path(),
            &["--drain-deadline", "1s", "--drain-jitter", "100ms"],
        )
        .await
        .unwrap();
        Self { herald, _dir: dir }
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_fault_schedules_keep_every_guarantee() {
    checker::run_all("standalone", Standalone::start).await;
}
