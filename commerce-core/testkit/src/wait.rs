//! Bounded waits: a test that waits for something never hangs a broken build.

use std::future::Future;
use std::time::Duration;

/// Polls `condition` every 10 ms until it holds or `timeout` passed; returns whether it held.
///
/// `condition` is an async closure (`async || ...`) or a closure returning a future (`||
/// async { ... }`); for a plain (non-async) check pass `|| std::future::ready(check())`.
pub async fn eventually(timeout: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `future`, failing the test instead of hanging when it takes longer than `timeout`.
///
/// # Panics
/// When `future` did not finish within `timeout`.
pub async fn within<T>(timeout: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or_else(|_| panic!("did not finish within {timeout:?}: hung"))
}
