//! The lease keeper behind every guard: renews the lease while the guard lives (Redisson's
//! lock watchdog, minus its flaws: it stops for good on release and reports a lost lease
//! instead of only logging it), and fires the guard's lost signal before the lease can have
//! run out on the server, whatever a renewal is doing. Without a watchdog it only keeps that
//! deadline.

use std::future::pending;
use std::sync::Arc;

use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::deadline::after;
use crate::LockOptions;

pub(crate) struct Watchdog {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) keys: Vec<String>,
    pub(crate) token: String,
    pub(crate) options: LockOptions,
    /// When the acquire request was sent: the store started the lease no earlier.
    pub(crate) acquire_sent: Instant,
    pub(crate) lost: CancellationToken,
    pub(crate) stop: CancellationToken,
}

/// Spawns the keeper, owned by the client's task tracker; it ends on `stop` (release or
/// drop), on a lost lease, or on client shutdown.
pub(crate) fn spawn(watchdog: Watchdog) {
    let tasks = watchdog.backend.tasks().clone();
    tasks.spawn(watchdog.run());
}

/// Why the keeper gave up on the lease.
enum Ended {
    /// Released or dropped: nothing to report.
    Stopped,
    /// The client shut down: nobody renews any more, so the holder must not assume it
    /// still holds the lock (an expected end, not worth a warning).
    ShutDown,
    /// The holder must assume it no longer holds the lock.
    Lost(&'static str),
}

impl Watchdog {
    async fn run(self) {
        match self.keep().await {
            Ended::Stopped => {}
            Ended::ShutDown => {
                tracing::debug!(keys = ?self.keys, "lock client shut down; lock given up");
                self.lost.cancel();
            }
            Ended::Lost(why) => {
                tracing::warn!(keys = ?self.keys, "lock lost: {why}");
                self.lost.cancel();
            }
        }
    }

    async fn keep(&self) -> Ended {
        let options = &self.options;
        // Deadlines count from when a request was *sent*: the server's lease started at some
        // point after that, so it cannot end before ours.
        let mut lost_at = after(self.acquire_sent, options.lease_trusted_for());
        let mut next_renewal = options
            .watchdog
            .then(|| after(self.acquire_sent, options.renew_interval()));
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return Ended::Stopped,
                () = self.backend.shutdown().cancelled() => return Ended::ShutDown,
                () = sleep_until(lost_at) => return Ended::Lost(expired(options)),
                () = sleep_until_some(next_renewal) => {}
            }
            let attempt_sent = Instant::now();
            let renewal = timeout(
                options.renew_timeout(),
                self.backend.renew(&self.keys, &self.token, options.lease),
            );
            // `stop` first: a release deletes the key right after cancelling it, and the
            // renewal that then finds the key gone must not be reported as a loss.
            let renewed = tokio::select! {
                biased;
                () = self.stop.cancelled() => return Ended::Stopped,
                () = self.backend.shutdown().cancelled() => return Ended::ShutDown,
                // Racing the deadline is the point: a renewal may hang until its own timeouts,
                // and the holder must hear of the loss before a successor can take the key.
                () = sleep_until(lost_at) => return Ended::Lost(expired(options)),
                renewed = renewal => renewed,
            };
            match renewed {
                Ok(Ok(true)) => {
                    lost_at = after(attempt_sent, options.lease_trusted_for());
                    next_renewal = Some(after(attempt_sent, options.renew_interval()));
                }
                Ok(Ok(false)) => return Ended::Lost("a key expired or was taken over"),
                Ok(Err(error)) => {
                    tracing::debug!(keys = ?self.keys, %error, "lock renewal failed; retrying");
                    next_renewal = Some(after(Instant::now(), options.renew_retry_delay()));
                }
                Err(_) => {
                    tracing::debug!(keys = ?self.keys, "lock renewal timed out; retrying");
                    next_renewal = Some(after(Instant::now(), options.renew_retry_delay()));
                }
            }
        }
    }
}

fn expired(options: &LockOptions) -> &'static str {
    if options.watchdog {
        "renewals failed until the lease could expire"
    } else {
        "its lease ran out (no watchdog)"
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => pending().await,
    }
}
