//! Recording each row's outcome in the batch's transaction.

use rdkafka::producer::FutureProducer;
use sqlx::PgConnection;
use uuid::Uuid;

use super::claim::ClaimedRow;
use super::publish::{publish_dead_letter, RowOutcome};
use crate::backoff::Backoff;
use crate::error::Result;

/// `clock_timestamp()`, not `now()`: the publish time is after the acknowledgement, not the
/// batch transaction's start.
const MARK_PUBLISHED_SQL: &str = "
UPDATE commerce_outbox.event
SET status = 'published', published_at = clock_timestamp()
WHERE id = ANY($1)";

const MARK_RETRY_SQL: &str = "
UPDATE commerce_outbox.event
SET attempts = attempts + 1, last_error = $2,
    next_attempt_at = clock_timestamp() + make_interval(secs => $3)
WHERE id = $1";

const MARK_DEAD_SQL: &str = "
UPDATE commerce_outbox.event
SET attempts = attempts + 1, last_error = $2, status = 'dead', dead_at = clock_timestamp()
WHERE id = $1";

const NOTE_UNAVAILABLE_SQL: &str = "
UPDATE commerce_outbox.event SET last_error = $2 WHERE id = ANY($1)";

/// When a refused event becomes a dead letter, and how long it waits between attempts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
}

/// What a batch did, for metrics and the relay's backoff.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Settlement {
    pub(crate) published: u64,
    pub(crate) rejected: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) unavailable: u64,
    /// One of the broker errors behind `unavailable`, for the log line.
    pub(crate) unavailable_error: Option<String>,
}

pub(crate) async fn settle(
    conn: &mut PgConnection,
    producer: &FutureProducer,
    rows: &[ClaimedRow],
    outcomes: &[RowOutcome],
    policy: RetryPolicy,
) -> Result<Settlement> {
    let mut settlement = Settlement::default();
    let mut published: Vec<Uuid> = Vec::new();
    let mut unavailable: Vec<Uuid> = Vec::new();
    let mut unavailable_error = String::new();
    for (row, outcome) in rows.iter().zip(outcomes) {
        match outcome {
            RowOutcome::Published => published.push(row.id),
            RowOutcome::Held => {}
            RowOutcome::Unavailable(error) => {
                unavailable.push(row.id);
                unavailable_error.clone_from(error);
            }
            RowOutcome::Rejected(error) => {
                let attempts = row.attempts.saturating_add(1);
                if u32::try_from(attempts).unwrap_or(u32::MAX) >= policy.max_attempts {
                    dead_letter(conn, producer, row, error, attempts).await?;
                    settlement.dead_lettered += 1;
                } else {
                    let delay = policy
                        .backoff
                        .delay_with_random_jitter(u32::try_from(attempts).unwrap_or(u32::MAX));
                    tracing::warn!(
                        event_id = %row.id, topic = %row.topic, attempts, %error,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        "outbox event refused by kafka; will retry"
                    );
                    sqlx::query(MARK_RETRY_SQL)
                        .bind(row.id)
                        .bind(error)
                        .bind(delay.as_secs_f64())
                        .execute(&mut *conn)
                        .await?;
                }
                settlement.rejected += 1;
            }
        }
    }
    if !published.is_empty() {
        sqlx::query(MARK_PUBLISHED_SQL)
            .bind(&published)
            .execute(&mut *conn)
            .await?;
    }
    if !unavailable.is_empty() {
        sqlx::query(NOTE_UNAVAILABLE_SQL)
            .bind(&unavailable)
            .bind(&unavailable_error)
            .execute(&mut *conn)
            .await?;
    }
    settlement.published = published.len() as u64;
    settlement.unavailable = unavailable.len() as u64;
    if !unavailable.is_empty() {
        settlement.unavailable_error = Some(unavailable_error);
    }
    Ok(settlement)
}

async fn dead_letter(
    conn: &mut PgConnection,
    producer: &FutureProducer,
    row: &ClaimedRow,
    error: &str,
    attempts: i32,
) -> Result<()> {
    let recorded = match publish_dead_letter(producer, row, error, attempts).await {
        Ok(()) => error.to_owned(),
        Err(dlq_error) => {
            tracing::error!(
                event_id = %row.id, %dlq_error,
                "could not publish dead letter to the .dlq topic; the outbox row keeps it"
            );
            format!("{error}; dead-letter topic publish failed: {dlq_error}")
        }
    };
    tracing::error!(
        event_id = %row.id, topic = %row.topic, aggregate_type = %row.aggregate_type,
        aggregate_id = %row.aggregate_id, attempts, %error,
        "outbox event dead-lettered; later events of its aggregate are held until it is replayed or discarded"
    );
    sqlx::query(MARK_DEAD_SQL)
        .bind(row.id)
        .bind(recorded)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
