//! Placement paced to the payment saga: when more than [`BACKLOG`] orders wait for their
//! payment (CREATED) and the oldest of them is older than [`TARGET`], each new placement waits
//! for the excess (up to [`MOST`]) before it is placed.
//!
//! Placing is batched and cheap; paying is not (a gateway call, the payment row, three events
//! and their relay). In a flash sale of two thousand buyers on the benchmark machine, orders
//! were placed at 6,134 a second while the saga, on the same cores, paid 794: 54,630 orders
//! were still CREATED when the sale stopped, paid 13 s later. Waiting at the door slows the
//! buyers to what the saga pays (each is answered later, none refused), so the orders placed
//! are paid within about [`TARGET`] of their placement. The lag is read from the database
//! (`orders_waiting`, an index on status and time), so every order instance of a deployment
//! paces by the same figure.
//!
//! A backlog of a few thousand is not held against the buyers: an outage of the payment
//! gateway leaves every order placed meanwhile CREATED and old, and once it is over the saga
//! pays them while new orders go straight through (the fault suite's rounds measure how soon
//! orders are acknowledged after a fault heals). Pacing is for a saga that cannot keep up with
//! the door, not for one that waited on something else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Orders waiting for their payment that never hold placements back, however old.
pub const BACKLOG: i64 = 5_000;
/// The saga's lag within which placements are not held back.
pub const TARGET: Duration = Duration::from_secs(2);
/// The longest a placement waits for the saga.
pub const MOST: Duration = Duration::from_secs(2);
/// How often the lag is read.
const EVERY: Duration = Duration::from_millis(200);

/// The saga's lag as last read (cheap to clone, shared by the requests).
#[derive(Debug, Clone, Default)]
pub struct SagaPace {
    lag_ms: Arc<AtomicU64>,
}

impl SagaPace {
    /// How long a placement waits now: the lag beyond [`TARGET`], at most [`MOST`].
    #[must_use]
    pub fn wait(&self) -> Duration {
        wait_for(Duration::from_millis(self.lag_ms.load(Ordering::Relaxed)))
    }

    /// Reads the lag every 200 ms until `shutdown` (zero while at most [`BACKLOG`] orders
    /// wait); a failed read counts as no lag (the placement itself meets the database's
    /// trouble and answers it).
    pub fn spawn(&self, pool: PgPool, shutdown: CancellationToken, tasks: &TaskTracker) {
        let lag_ms = Arc::clone(&self.lag_ms);
        tasks.spawn(async move {
            loop {
                let lag = lag(&pool).await.unwrap_or_else(|error| {
                    tracing::debug!(%error, "saga lag not read");
                    Duration::ZERO
                });
                let ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX);
                lag_ms.store(ms, Ordering::Relaxed);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(EVERY) => {}
                }
            }
        });
    }
}

/// The wait for a lag of `lag`.
fn wait_for(lag: Duration) -> Duration {
    lag.saturating_sub(TARGET).min(MOST)
}

/// The age of the oldest CREATED order when more than [`BACKLOG`] are CREATED, else zero.
/// Both from the index on (status, updated_at): at most `BACKLOG + 1` entries counted.
async fn lag(pool: &PgPool) -> sqlx::Result<Duration> {
    let seconds: f64 = sqlx::query_scalar(
        "SELECT CASE WHEN (SELECT count(*) FROM (SELECT 1 FROM commerce.orders \
                             WHERE status = 'CREATED' LIMIT $1 + 1) AS waiting) > $1 \
                THEN COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - \
                       (SELECT min(updated_at) FROM commerce.orders WHERE status = 'CREATED')), 0) \
                ELSE 0 END::float8",
    )
    .bind(BACKLOG)
    .fetch_one(pool)
    .await?;
    Ok(Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_wait_only_for_the_lag_beyond_the_target_and_never_more_than_most() {
        assert_eq!(wait_for(Duration::ZERO), Duration::ZERO);
        assert_eq!(wait_for(TARGET), Duration::ZERO);
        assert_eq!(
            wait_for(TARGET + Duration::from_millis(300)),
            Duration::from_millis(300)
        );
        assert_eq!(wait_for(TARGET + MOST * 10), MOST);
    }
}
