//! A per-user limit on the rate of order placement: one GCRA state per user (governor's keyed
//! limiter), so one customer's burst cannot take everyone's stock nor the server's time.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::OrderSettings;

type Limiter<C> =
    RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// How often users back to a fresh state are forgotten, so the limiter holds only the users
/// seen within about a burst's worth of the rate.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// Orders each user may place: a burst at once, then a steady rate. Cheap to clone.
#[derive(Clone)]
pub struct PlacementRate<C: Clock + Clone = DefaultClock> {
    /// `None` when the limit is off (`ORDER_RATE_PER_MINUTE=0`).
    limiter: Option<Arc<Limiter<C>>>,
    clock: C,
}

impl<C: Clock + Clone> std::fmt::Debug for PlacementRate<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlacementRate")
            .field("on", &self.limiter.is_some())
            .field("users", &self.limiter.as_ref().map_or(0, |l| l.len()))
            .finish()
    }
}

impl PlacementRate {
    /// The limit `settings` describe, on the real clock.
    #[must_use]
    pub fn new(settings: &OrderSettings) -> Self {
        Self::with_clock(settings, DefaultClock::default())
    }
}

impl<C: Clock + Clone + Send + Sync + 'static> PlacementRate<C> {
    /// The limit `settings` describe, on `clock` (a fake one in tests).
    #[must_use]
    pub fn with_clock(settings: &OrderSettings, clock: C) -> Self {
        Self::per_minute(settings.rate_per_minute, settings.burst, clock)
    }

    /// `rate` a minute per key after a `burst` at once (`None` or 0: no limit), on `clock`;
    /// the gateway's per-user limit on every request is one too.
    #[must_use]
    pub fn per_minute(rate: Option<u32>, burst: u32, clock: C) -> Self {
        let rate = rate.and_then(NonZeroU32::new);
        let limiter = rate.map(|rate| {
            // The settings check refuses a burst of 0; one is the least that makes sense.
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            Arc::new(RateLimiter::new(
                Quota::per_minute(rate).allow_burst(burst),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ))
        });
        Self { limiter, clock }
    }

    /// Takes one order's place from `user`'s allowance.
    ///
    /// # Errors
    /// How long until `user` may place an order, when they may not now.
    pub fn check(&self, user: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&user.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets the users whose allowance is full again (they are indistinguishable from new
    /// ones), so memory follows the recent users, not every user ever seen.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Forgets idle users every minute until `shutdown`.
    pub fn spawn_forgetting(&self, shutdown: CancellationToken, tasks: &TaskTracker) {
        if self.limiter.is_none() {
            return;
        }
        let rate = self.clone();
        tasks.spawn(async move {
            let mut every = tokio::time::interval(FORGET_EVERY);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = every.tick() => rate.forget_idle(),
                }
            }
        });
    }

    /// Users the limiter holds a state for.
    #[must_use]
    pub fn users(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limit(
        rate_per_minute: u32,
        burst: u32,
    ) -> (PlacementRate<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let settings = OrderSettings {
            rate_per_minute: Some(rate_per_minute),
            burst,
            ..OrderSettings::default()
        };
        (PlacementRate::with_clock(&settings, clock.clone()), clock)
    }

    #[test]
    fn a_burst_then_the_rate_per_user_with_the_wait_until_the_next() {
        let (rate, clock) = limit(6, 3);
        for _ in 0..3 {
            rate.check("alice").unwrap();
        }
        // 6 per minute: one place comes back every 10 s.
        assert_eq!(rate.check("alice"), Err(Duration::from_secs(10)));
        rate.check("bob")
            .expect("another user has their own allowance");
        clock.advance(Duration::from_secs(4));
        assert_eq!(rate.check("alice"), Err(Duration::from_secs(6)));
        clock.advance(Duration::from_secs(6));
        rate.check("alice").unwrap();
        assert_eq!(rate.check("alice"), Err(Duration::from_secs(10)));
    }

    #[test]
    fn idle_users_are_forgotten_and_the_limit_can_be_off() {
        let (rate, clock) = limit(60, 2);
        rate.check("alice").unwrap();
        rate.check("bob").unwrap();
        assert_eq!(rate.users(), 2);
        clock.advance(Duration::from_secs(5));
        rate.forget_idle();
        assert_eq!(rate.users(), 0);

        let (off, _) = limit(0, 1);
        for _ in 0..1_000 {
            off.check("load").unwrap();
        }
    }
}
