//! Retention: deleting published rows once they are old enough.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::shutdown::sleep_or_shutdown;

/// Rows deleted per statement, so pruning never holds long locks or builds a huge WAL burst.
const CHUNK: i64 = 10_000;

const PRUNE_PUBLISHED_SQL: &str = "
DELETE FROM commerce_outbox.event WHERE id IN (
    SELECT id FROM commerce_outbox.event
    WHERE status = 'published' AND published_at < clock_timestamp() - make_interval(secs => $1)
    LIMIT $2)";

const PRUNE_DISCARDED_SQL: &str = "
DELETE FROM commerce_outbox.event WHERE id IN (
    SELECT id FROM commerce_outbox.event
    WHERE status = 'discarded' AND dead_at < clock_timestamp() - make_interval(secs => $1)
    LIMIT $2)";

/// An aggregate's sequence row may go once the aggregate has no event left and has been
/// quiet for the retention period. A writer bumping it concurrently holds its row lock and
/// changes `updated_at`, so the DELETE re-checks and skips it.
const PRUNE_SEQUENCES_SQL: &str = "
DELETE FROM commerce_outbox.aggregate_sequence s
WHERE s.updated_at < clock_timestamp() - make_interval(secs => $1)
  AND NOT EXISTS (
      SELECT 1 FROM commerce_outbox.event e
      WHERE e.aggregate_type = s.aggregate_type AND e.aggregate_id = s.aggregate_id)";

/// What [`prune_settled`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Published or discarded events deleted.
    pub events: u64,
    /// Sequence rows of quiet aggregates deleted.
    pub sequences: u64,
}

/// Deletes events published (or discarded) more than `older_than` ago, and the sequence
/// rows of aggregates that have no event left. Pending and dead rows are never pruned.
///
/// The relay calls it periodically when a retention is configured. An aggregate whose
/// sequence row was pruned starts again at sequence 1: consumers must not compare
/// `aggregate_seq` across a gap longer than the retention.
///
/// # Errors
/// [`crate::Error::Database`] when a statement fails.
pub async fn prune_settled(pool: &PgPool, older_than: Duration) -> Result<PruneReport> {
    let secs = older_than.as_secs_f64();
    let mut report = PruneReport::default();
    for sql in [PRUNE_PUBLISHED_SQL, PRUNE_DISCARDED_SQL] {
        loop {
            let deleted = sqlx::query(sql)
                .bind(secs)
                .bind(CHUNK)
                .execute(pool)
                .await?
                .rows_affected();
            report.events += deleted;
            if deleted < CHUNK.unsigned_abs() {
                break;
            }
        }
    }
    report.sequences = sqlx::query(PRUNE_SEQUENCES_SQL)
        .bind(secs)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(report)
}

/// The relay's pruning task: [`prune_settled`] every `interval` until shutdown. A failure
/// is logged and retried at the next round (nothing is lost by pruning late).
pub(crate) async fn prune_periodically(
    pool: PgPool,
    relay: String,
    retention: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    while !sleep_or_shutdown(interval, &shutdown).await {
        match prune_settled(&pool, retention).await {
            Ok(report) if report.events > 0 || report.sequences > 0 => {
                tracing::info!(%relay, events = report.events, sequences = report.sequences, "outbox retention pruned rows");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%relay, %error, "outbox retention pruning failed; will retry");
            }
        }
    }
}
