//! How often and how patiently the client repeats a request that got no usable answer.

use std::time::Duration;

use backon::ExponentialBuilder;

/// The retry policy of reads and of order placements (which carry an idempotency key, so a
/// repeat cannot place a second order). Other writes are sent once.
///
/// A request is repeated after a transport error (no connection, a broken connection, a
/// timeout), a 429 or a 503 (`timeout`, `unavailable`, `conflict_retry`, `outcome_unknown`),
/// waiting an exponentially growing, jittered delay in between, or the server's `Retry-After`
/// when that is longer; a `Retry-After` beyond the longest delay ends the retries.
///
/// The default: 3 attempts in all, delays from 100 ms doubling up to 2 s, with jitter.
///
/// ```
/// use std::time::Duration;
/// use commerce_client::RetryPolicy;
///
/// let patient = RetryPolicy::default()
///     .attempts(5)
///     .delays(Duration::from_millis(50), Duration::from_secs(1));
/// assert_eq!(patient.max_attempts(), 5);
/// assert_eq!(RetryPolicy::none().max_attempts(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    min_delay: Duration,
    max_delay: Duration,
    jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retry (a load test measuring the server, not the client).
    #[must_use]
    pub fn none() -> Self {
        Self {
            attempts: 1,
            ..Self::default()
        }
    }

    /// At most `attempts` attempts in all, the first included (at least 1).
    #[must_use]
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The first delay, and the most any delay grows to (each is double the last).
    #[must_use]
    pub fn delays(mut self, first: Duration, most: Duration) -> Self {
        self.min_delay = first;
        self.max_delay = most.max(first);
        self
    }

    /// Whether delays are jittered (default yes: clients that failed together do not all
    /// come back at the same instant).
    #[must_use]
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Attempts in all, the first included.
    #[must_use]
    pub fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait before the next attempt after `error`, the backoff having planned `planned`
    /// (`None`: no attempt left). A server's `Retry-After` is honoured when it is longer; one
    /// beyond the policy's longest delay ends the retries (the caller gets the error and
    /// decides whether to wait that long).
    pub(crate) fn wait(&self, error: &crate::Error, planned: Option<Duration>) -> Option<Duration> {
        let planned = planned?;
        match error.retry_after() {
            Some(asked) if asked > self.max_delay => None,
            Some(asked) => Some(asked.max(planned)),
            None => Some(planned),
        }
    }

    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.attempts.saturating_sub(1) as usize);
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }
}
