//! Bounds on durations handed to L1, L2 and timers.

use std::time::Duration;

/// The longest lifetime the cache gives anything: 100 years, "never expires" for a cache.
///
/// Longer durations (`Duration::MAX` is the usual way to say "forever") are clamped to it
/// wherever they are used: added to an instant or to jitter they would overflow and panic,
/// moka refuses expiries over 1000 years, and Redis refuses a `PEXPIRE` whose expiry time
/// does not fit its 64-bit millisecond clock.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `duration`, at most [`MAX_TTL`].
pub(crate) fn clamp(duration: Duration) -> Duration {
    duration.min(MAX_TTL)
}

/// [`MAX_TTL`] in whole milliseconds, as the Lua scripts check it.
pub(crate) fn max_ttl_ms() -> u64 {
    u64::try_from(MAX_TTL.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_ttl_fits_redis_and_lua() {
        // Redis adds the TTL to its clock in ms (i64); Lua numbers are exact up to 2^53.
        assert!(max_ttl_ms() < 1 << 53);
        assert_eq!(clamp(Duration::MAX), MAX_TTL);
        assert_eq!(clamp(Duration::from_secs(1)), Duration::from_secs(1));
    }
}
