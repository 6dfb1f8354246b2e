//! Outbox and relay metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::error::Result;

const STATS_SQL: &str = "
SELECT count(*) FILTER (WHERE status = 'pending'),
       extract(epoch FROM clock_timestamp() - min(created_at) FILTER (WHERE status = 'pending'))::float8,
       count(*) FILTER (WHERE status = 'dead'),
       (SELECT count(*) FROM commerce_outbox.consumer_dead_letter)
FROM commerce_outbox.event
WHERE status IN ('pending', 'dead')";

/// The outbox table's state, as any process sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutboxStats {
    /// Events not yet published (including those held behind a dead letter).
    pub pending: i64,
    /// Age of the oldest pending event; `None` when nothing is pending.
    pub oldest_pending_age: Option<Duration>,
    /// Dead letters waiting for a replay or discard.
    pub dead_letters: i64,
    /// Consumer dead letters (events a consumer's handler declared unprocessable) waiting
    /// for a replay or discard, all consumers together
    /// ([`crate::dead_letter::count_consumer_dead_letters`] has them per consumer).
    pub consumer_dead_letters: i64,
}

/// Reads [`OutboxStats`] (one indexed query, plus a count of the consumer dead letters, a
/// table that stays small; cheap enough for a metrics scrape).
///
/// # Errors
/// [`crate::Error::Database`] when the query fails.
pub async fn outbox_stats(pool: &PgPool) -> Result<OutboxStats> {
    let (pending, age, dead, consumer_dead): (i64, Option<f64>, i64, i64) =
        sqlx::query_as(STATS_SQL).fetch_one(pool).await?;
    Ok(OutboxStats {
        pending,
        oldest_pending_age: age.map(|secs| Duration::from_secs_f64(secs.max(0.0))),
        dead_letters: dead,
        consumer_dead_letters: consumer_dead,
    })
}

/// A relay's metrics: the table's state plus this relay's counters since it started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelayMetrics {
    /// The outbox table's state.
    pub outbox: OutboxStats,
    /// Events this relay published.
    pub published_total: u64,
    /// Publish rate since the previous snapshot (or since the relay started).
    pub published_per_sec: f64,
    /// Failed publish attempts: refused by the broker, for a topic that does not exist, or
    /// undelivered while the broker answered (each counts towards dead-lettering).
    pub refused_total: u64,
    /// Rows that could not be sent because the broker was unreachable (no attempt counted).
    pub unavailable_total: u64,
    /// Events this relay dead-lettered.
    pub dead_lettered_total: u64,
    /// Batches this relay processed.
    pub batches_total: u64,
}

/// Counters the relay's workers bump; read by [`crate::RelayHandle::metrics`].
#[derive(Debug)]
pub(crate) struct RelayCounters {
    pub(crate) published: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) unavailable: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) batches: AtomicU64,
    last_sample: Mutex<(Instant, u64)>,
}

impl RelayCounters {
    pub(crate) fn new() -> Self {
        Self {
            published: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            last_sample: Mutex::new((Instant::now(), 0)),
        }
    }

    pub(crate) fn snapshot(&self, outbox: OutboxStats) -> RelayMetrics {
        let published_total = self.published.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut last = self
            .last_sample
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.duration_since(last.0).as_secs_f64();
        let published_per_sec = if elapsed > 0.0 {
            published_total.saturating_sub(last.1) as f64 / elapsed
        } else {
            0.0
        };
        *last = (now, published_total);
        RelayMetrics {
            outbox,
            published_total,
            published_per_sec,
            refused_total: self.refused.load(Ordering::Relaxed),
            unavailable_total: self.unavailable.load(Ordering::Relaxed),
            dead_lettered_total: self.dead_lettered.load(Ordering::Relaxed),
            batches_total: self.batches.load(Ordering::Relaxed),
        }
    }
}
