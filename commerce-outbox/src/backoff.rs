//! Bounded exponential backoff with jitter.

use std::time::Duration;

/// Exponential backoff: `initial`, doubling per consecutive failure, capped at `max`, with
/// "equal jitter" (half the delay fixed, half random) so many relays or rows that failed
/// together do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay ceiling of the first failure.
    pub initial: Duration,
    /// Largest delay ever returned.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `initial` up to `max`.
    #[must_use]
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The delay after the `failures`-th consecutive failure (1-based; 0 is treated as 1).
    ///
    /// `jitter` in `[0, 1]` picks the point in the upper half of the ceiling; the relay
    /// passes a random number, tests pass fixed ones.
    #[must_use]
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(31);
        let ceiling = self
            .initial
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.max)
            .min(self.max);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ceiling / 2 + ceiling.mul_f64(jitter / 2.0)
    }

    /// [`Backoff::delay`] with a random jitter.
    #[must_use]
    pub fn delay_with_random_jitter(&self, failures: u32) -> Duration {
        self.delay(failures, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

    #[test]
    fn doubles_per_failure_within_the_jitter_band() {
        assert_eq!(B.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(B.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(B.delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(B.delay(4, 0.5), Duration::from_millis(600));
    }

    #[test]
    fn is_bounded_by_max_even_for_huge_failure_counts() {
        assert_eq!(B.delay(40, 1.0), Duration::from_secs(5));
        assert_eq!(B.delay(u32::MAX, 1.0), Duration::from_secs(5));
        assert_eq!(B.delay(0, 1.0), Duration::from_millis(100));
    }

    #[test]
    fn out_of_range_jitter_is_clamped() {
        assert_eq!(B.delay(1, 7.0), Duration::from_millis(100));
        assert_eq!(B.delay(1, -1.0), Duration::from_millis(50));
        assert_eq!(B.delay(1, f64::NAN), Duration::from_millis(50));
    }
}
