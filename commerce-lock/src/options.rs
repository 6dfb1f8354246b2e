//! Per-acquire options.

use std::time::Duration;

/// How long to wait for a lock and how long a lease lasts.
///
/// Defaults: wait 5 s, lease 30 s (Redisson's `lockWatchdogTimeout`), watchdog on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockOptions {
    /// The longest time to wait for a held lock; zero means try once.
    pub wait: Duration,
    /// How long the key lives without renewal; it frees the lock if the holder dies.
    pub lease: Duration,
    /// Whether a watchdog renews the lease every `lease / 3` while the guard is alive.
    /// Without it the lock simply expires after `lease` (like Redisson's explicit lease time),
    /// and [`LockGuard::lost`](crate::LockGuard::lost) fires shortly before that.
    pub watchdog: bool,
}

impl LockOptions {
    /// Default bounded wait.
    pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
    /// Default lease.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

    /// Options with the given wait and lease, watchdog on.
    #[must_use]
    pub const fn new(wait: Duration, lease: Duration) -> Self {
        Self {
            wait,
            lease,
            watchdog: true,
        }
    }

    /// The same options with the bounded wait replaced.
    #[must_use]
    pub const fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The same options with the lease replaced.
    #[must_use]
    pub const fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The same options without a watchdog: the lock expires `lease` after acquisition
    /// whatever the holder is doing, and the guard's
    /// [`lost`](crate::LockGuard::lost) signal fires shortly before it does.
    #[must_use]
    pub const fn without_watchdog(mut self) -> Self {
        self.watchdog = false;
        self
    }

    /// Interval between two watchdog renewals: a third of the lease, so two renewals can
    /// fail before the key expires.
    pub(crate) fn renew_interval(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(1))
    }

    /// How long one renewal may take: half an interval, so a renewal that hangs (a network
    /// that drops packets rather than refusing connections) leaves time for another attempt.
    pub(crate) fn renew_timeout(&self) -> Duration {
        (self.renew_interval() / 2).max(Duration::from_millis(1))
    }

    /// Pause before retrying a failed renewal: well inside the time left on the lease.
    pub(crate) fn renew_retry_delay(&self) -> Duration {
        (self.renew_interval() / 4).max(Duration::from_millis(1))
    }

    /// How long after the lease may have started the holder must consider it lost unless a
    /// renewal confirmed it: the lease minus a tenth. The tenth covers the client's clock
    /// running slower than the server's (Redlock allows 1 %) and gives the holder time to
    /// stop before a successor can take the key.
    pub(crate) fn lease_trusted_for(&self) -> Duration {
        self.lease - self.lease / 10
    }
}

impl Default for LockOptions {
    fn default() -> Self {
        Self::new(Self::DEFAULT_WAIT, Self::DEFAULT_LEASE)
    }
}
