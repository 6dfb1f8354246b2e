//! A circuit breaker for L2: after a failure, L2 is skipped until a single probe succeeds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `0` while healthy; otherwise the time (ms since `origin`, at least 1) of the next probe.
#[derive(Debug)]
pub(crate) struct L2Health {
    origin: Instant,
    next_probe_ms: AtomicU64,
    retry_after: Duration,
}

impl L2Health {
    pub(crate) fn new(retry_after: Duration) -> Self {
        Self {
            origin: Instant::now(),
            next_probe_ms: AtomicU64::new(0),
            retry_after,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn retry_ms(&self) -> u64 {
        u64::try_from(self.retry_after.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether L2 may be asked now. While down, exactly one caller per retry interval gets
    /// `true` (the probe); everyone else goes straight to the loader.
    pub(crate) fn admit(&self) -> bool {
        let next = self.next_probe_ms.load(Ordering::Acquire);
        if next == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= next
            && self
                .next_probe_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.retry_ms()),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// Records a successful L2 operation; returns `true` if L2 was down until now.
    pub(crate) fn succeeded(&self) -> bool {
        self.next_probe_ms.load(Ordering::Acquire) != 0
            && self.next_probe_ms.swap(0, Ordering::AcqRel) != 0
    }

    /// Records a failed L2 operation; returns `true` if L2 was healthy until now.
    pub(crate) fn failed(&self) -> bool {
        let next = self.now_ms().saturating_add(self.retry_ms());
        self.next_probe_ms.swap(next, Ordering::AcqRel) == 0
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.next_probe_ms.load(Ordering::Acquire) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transitions_are_reported_and_no_one_is_admitted_while_waiting() {
        let health = L2Health::new(Duration::from_secs(3600));
        assert!(health.admit());
        assert!(health.failed(), "healthy -> down is reported");
        assert!(!health.failed(), "a second failure is not");
        assert!(!health.admit(), "no probe before the retry interval");
        assert!(!health.is_healthy());
        assert!(health.succeeded(), "down -> healthy is reported");
        assert!(!health.succeeded());
        assert!(health.admit());
    }

    #[test]
    fn one_probe_per_interval_once_it_has_passed() {
        let health = L2Health::new(Duration::ZERO);
        health.failed();
        // With a zero retry interval the next probe is due at once, and again after it.
        assert!(health.admit());
        assert!(health.admit());
    }
}
