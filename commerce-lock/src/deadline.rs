//! Instant arithmetic that cannot overflow: callers pass `Duration::MAX` to mean "forever"
//! (as a wait or a lease), and `Instant + Duration::MAX` would panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Stand-in for "never": far beyond any process lifetime, yet small enough that adding it to
/// any instant the clock can produce stays representable (tokio uses the same horizon).
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// `start + duration`, saturating at a far-future instant instead of panicking.
pub(crate) fn after(start: Instant, duration: Duration) -> Instant {
    let mut step = duration.min(FAR_FUTURE);
    // Only a platform whose clock cannot even represent `start + 30 years` gets here; halving
    // reaches zero, which always fits, so this cannot loop forever.
    loop {
        if let Some(deadline) = start.checked_add(step) {
            return deadline;
        }
        step /= 2;
    }
}

/// Microseconds since the Unix epoch on the system (wall) clock; zero if the clock reads
/// before 1970. Fencing tokens start from it so they keep growing when counters are lost.
pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forever_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) >= now + FAR_FUTURE);
        assert_eq!(
            after(now, Duration::from_millis(5)),
            now + Duration::from_millis(5)
        );
    }

    #[test]
    fn wall_clock_micros_are_after_2020() {
        // 2020-01-01T00:00:00Z; a clock this wrong would make every token suspect anyway.
        assert!(unix_micros() > 1_577_836_800_000_000);
    }
}
