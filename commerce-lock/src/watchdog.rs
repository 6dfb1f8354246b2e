//! Lease renewal while a guard is alive (Redisson's lock watchdog, minus its flaws: it stops
//! for good on release and reports a lost lease instead of only logging it).

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::LockOptions;

pub(crate) struct Watchdog {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) keys: Vec<String>,
    pub(crate) token: String,
    pub(crate) options: LockOptions,
    pub(crate) lost: CancellationToken,
    pub(crate) stop: CancellationToken,
}

/// Spawns the renewal task, owned by the client's task tracker; it ends on `stop` (release
/// or drop), on a lost lease, or on client shutdown.
pub(crate) fn spawn(watchdog: Watchdog) {
    let tasks = watchdog.backend.tasks().clone();
    tasks.spawn(watchdog.run());
}

impl Watchdog {
    async fn run(self) {
        let interval = self.options.renew_interval();
        let lease = self.options.lease;
        let mut confirmed_until = Instant::now() + lease;
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                () = self.backend.shutdown().cancelled() => {
                    // Nobody renews any more: the holder must not assume it still holds.
                    self.lost.cancel();
                    return;
                }
                () = tokio::time::sleep(interval) => {}
            }
            let attempt_started = Instant::now();
            let renewed = self.backend.renew(&self.keys, &self.token, lease).await;
            if self.stop.is_cancelled() {
                return;
            }
            match renewed {
                Ok(true) => confirmed_until = attempt_started + lease,
                Ok(false) => {
                    tracing::warn!(keys = ?self.keys, "lock lost: key expired or taken over");
                    self.lost.cancel();
                    return;
                }
                Err(error) => {
                    // One failure is survivable; not being able to confirm the lease past the
                    // next attempt is not.
                    if Instant::now() + interval >= confirmed_until {
                        tracing::warn!(keys = ?self.keys, %error, "lock lost: renewals failed until the lease could expire");
                        self.lost.cancel();
                        return;
                    }
                    tracing::debug!(keys = ?self.keys, %error, "lock renewal failed; retrying");
                }
            }
        }
    }
}
