//! The crate's one shutdown idiom, the same as commerce-lock's: a handle owns its tasks in a
//! `TaskTracker` and stops them with a `CancellationToken` they select on.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sleeps for `delay` unless `shutdown` is cancelled first; true when shutdown was requested
/// (the caller then returns instead of doing another round).
pub(crate) async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(delay) => shutdown.is_cancelled(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sleeps_the_whole_delay_when_nobody_stops_it() {
        let shutdown = CancellationToken::new();
        let started = tokio::time::Instant::now();
        assert!(!sleep_or_shutdown(Duration::from_secs(5), &shutdown).await);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn returns_at_once_when_shutdown_is_requested() {
        let shutdown = CancellationToken::new();
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stopper.cancel();
        });
        let started = tokio::time::Instant::now();
        assert!(sleep_or_shutdown(Duration::from_secs(60), &shutdown).await);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
