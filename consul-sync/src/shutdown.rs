//! Shutdown, in the manner of mini-redis: [`app::run`](crate::app::run) holds the [`Trigger`],
//! every task a [`Shutdown`]; a task selects on [`Shutdown::recv`] (or sleeps with
//! [`sleep_or_shutdown`]) and returns when it completes.

use std::time::Duration;
use tokio::sync::watch;

/// Starts the shutdown of every [`Shutdown`] made from it (also when dropped).
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A task's view of the shutdown.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// A trigger and the first handle; clone the handle for each task.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// True once the shutdown has started.
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the shutdown has started (at once if it has), or the trigger is gone.
    pub async fn recv(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Sleeps for `d`; true when the shutdown came first.
pub async fn sleep_or_shutdown(d: Duration, shutdown: &mut Shutdown) -> bool {
    if shutdown.is_shutdown() {
        return true;
    }
    tokio::select! {
        _ = shutdown.recv() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_handle_sees_the_shutdown_also_one_cloned_after_it() {
        let (trigger, mut first) = channel();
        let mut second = first.clone();
        assert!(!first.is_shutdown());
        assert!(!sleep_or_shutdown(Duration::from_millis(1), &mut first).await);
        trigger.fire();
        let mut late = first.clone();
        tokio::time::timeout(Duration::from_secs(5), async {
            first.recv().await;
            second.recv().await;
            late.recv().await;
        })
        .await
        .unwrap();
        assert!(sleep_or_shutdown(Duration::from_secs(3600), &mut late).await);
    }

    #[tokio::test]
    async fn a_dropped_trigger_ends_the_wait() {
        let (trigger, mut shutdown) = channel();
        drop(trigger);
        tokio::time::timeout(Duration::from_secs(5), shutdown.recv())
            .await
            .unwrap();
    }
}
