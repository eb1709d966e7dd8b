//! The drain switch.
//!
//! [`Drain`] is held by whoever decides to stop (the signal handler, a test); every part that must
//! react holds a cheap [`DrainWatch`]: readiness reports not-ready, the server stops accepting, and
//! each event stream ends after its own random delay in `[0, jitter]` so clients do not all
//! reconnect in the same instant.

use std::time::Duration;

use tokio::sync::watch;

/// Starts the drain.
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// Observes the drain.
#[derive(Debug, Clone)]
pub struct DrainWatch {
    rx: watch::Receiver<bool>,
}

impl Drain {
    /// A switch that has not been thrown, and a watch on it.
    pub fn new() -> (Self, DrainWatch) {
        let (tx, rx) = watch::channel(false);
        (Self { tx }, DrainWatch { rx })
    }

    /// Starts draining. Idempotent.
    pub fn start(&self) {
        self.tx.send_replace(true);
    }

    /// Another watch on this switch.
    pub fn watch(&self) -> DrainWatch {
        DrainWatch {
            rx: self.tx.subscribe(),
        }
    }
}

impl DrainWatch {
    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the drain has started (at once if it already has).
    pub async fn started(&self) {
        if !self.thrown().await {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves with `true` once the drain has started, or with `false` when its switch is
    /// dropped without draining (it never will then).
    pub async fn thrown(&self) -> bool {
        self.rx.clone().wait_for(|d| *d).await.is_ok()
    }
}

/// A random delay in `[0, max]`, for spreading stream closes.
pub fn jitter(max: Duration) -> Duration {
    let millis = max.as_millis().min(u128::from(u64::MAX)) as u64;
    Duration::from_millis(fastrand::u64(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watches_see_the_drain() {
        let (drain, watch) = Drain::new();
        let other = drain.watch();
        assert!(!watch.is_draining());
        let waiter = tokio::spawn({
            let w = watch.clone();
            async move { w.started().await }
        });
        drain.start();
        waiter.await.unwrap();
        assert!(watch.is_draining() && other.is_draining());
        other.started().await;
    }

    #[tokio::test]
    async fn a_switch_dropped_without_draining_is_not_thrown() {
        let (drain, watch) = Drain::new();
        drop(drain);
        assert!(!watch.thrown().await);
        let (drain, watch) = Drain::new();
        drain.start();
        drop(drain);
        assert!(
            watch.thrown().await,
            "the drain started before the switch was dropped"
        );
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(50)) <= Duration::from_millis(50));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
