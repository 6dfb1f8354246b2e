//! Consumer dead letters: events a consumer's handler declared unprocessable
//! ([`crate::UnprocessableEvent`]), set aside in `commerce_outbox.consumer_dead_letter` so
//! the events behind them go on.
//!
//! The runner writes the row in one transaction with the event's inbox record (a redelivery
//! is skipped), then acknowledges the delivery. Unlike an outbox dead letter, nothing is held
//! behind it: the handler said the event can never be applied, so waiting would not help.
//! Once the cause is fixed (a handler that now understands the payload, the missing data
//! created), [`replay_consumer_dead_letter`] applies it through the handler; or
//! [`discard_consumer_dead_letter`] gives up on it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::consumer::EventHandler;
use crate::error::{Error, Result};
use crate::event::{Envelope, EventId};
use crate::inbox::record_once;

/// The longest error text kept with a consumer dead letter, in bytes: a handler's error can
/// carry a whole payload, and the table is read by people.
pub const MAX_ERROR_BYTES: usize = 4096;

const COLUMNS: &str = "consumer, topic, event_id, event_type, aggregate_type, aggregate_id,
    aggregate_seq, occurred_at, schema_version, payload, error, dead_at";

/// An event a consumer set aside because its handler declared it unprocessable.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerDeadLetter {
    /// The consumer (its inbox name) whose handler refused it.
    pub consumer: String,
    /// The topic it was delivered from.
    pub topic: String,
    /// The event, as the handler got it.
    pub envelope: Envelope,
    /// The handler's error (at most [`MAX_ERROR_BYTES`]).
    pub error: String,
    /// When it was set aside.
    pub dead_at: DateTime<Utc>,
}

/// A row of `commerce_outbox.consumer_dead_letter`.
#[derive(sqlx::FromRow)]
struct Row {
    consumer: String,
    topic: String,
    event_id: Uuid,
    event_type: String,
    aggregate_type: String,
    aggregate_id: String,
    aggregate_seq: i64,
    occurred_at: DateTime<Utc>,
    schema_version: i32,
    payload: serde_json::Value,
    error: String,
    dead_at: DateTime<Utc>,
}

impl From<Row> for ConsumerDeadLetter {
    fn from(row: Row) -> Self {
        Self {
            consumer: row.consumer,
            topic: row.topic,
            envelope: Envelope {
                id: EventId(row.event_id),
                event_type: row.event_type,
                aggregate_type: row.aggregate_type,
                aggregate_id: row.aggregate_id,
                aggregate_seq: row.aggregate_seq,
                occurred_at: row.occurred_at,
                schema_version: row.schema_version,
                payload: row.payload,
                traceparent: None,
            },
            error: row.error,
            dead_at: row.dead_at,
        }
    }
}

/// Records that `consumer` handled `envelope` (the inbox) and sets it aside as a dead letter
/// with `error`, in one transaction of its own. Returns `false`, writing nothing, when the
/// inbox already held the event (another member of the group handled it meanwhile).
pub(crate) async fn set_aside(
    pool: &PgPool,
    consumer: &str,
    topic: &str,
    envelope: &Envelope,
    error: &str,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    if !record_once(&mut tx, consumer, envelope.id).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO commerce_outbox.consumer_dead_letter
             (consumer, topic, event_id, event_type, aggregate_type, aggregate_id,
              aggregate_seq, occurred_at, schema_version, payload, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(topic)
    .bind(envelope.id.0)
    .bind(&envelope.event_type)
    .bind(&envelope.aggregate_type)
    .bind(&envelope.aggregate_id)
    .bind(envelope.aggregate_seq)
    .bind(envelope.occurred_at)
    .bind(envelope.schema_version)
    .bind(&envelope.payload)
    .bind(bounded(error))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// `text` cut to at most [`MAX_ERROR_BYTES`], on a character boundary.
fn bounded(text: &str) -> &str {
    if text.len() <= MAX_ERROR_BYTES {
        return text;
    }
    let cut = (0..=MAX_ERROR_BYTES)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[..cut]
}

/// `consumer`'s dead letters, oldest first, at most `limit`.
///
/// # Errors
/// [`Error::Database`] when the query fails.
pub async fn list_consumer_dead_letters(
    pool: &PgPool,
    consumer: &str,
    limit: i64,
) -> Result<Vec<ConsumerDeadLetter>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM commerce_outbox.consumer_dead_letter
         WHERE consumer = $1 ORDER BY dead_at, event_id LIMIT $2"
    );
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(consumer)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(ConsumerDeadLetter::from).collect())
}

/// The number of dead letters of each consumer that has any, by consumer name (e.g. a gauge
/// per consumer; [`crate::OutboxStats::consumer_dead_letters`] has the total).
///
/// # Errors
/// [`Error::Database`] when the query fails.
pub async fn count_consumer_dead_letters(pool: &PgPool) -> Result<BTreeMap<String, i64>> {
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT consumer, count(*) FROM commerce_outbox.consumer_dead_letter GROUP BY consumer",
    )
    .fetch_all(pool)
    .await?;
    Ok(counts.into_iter().collect())
}

/// Applies `consumer`'s dead letter `event_id` through `handler` (the consumer's handler,
/// fixed), in one transaction: the handler's writes commit together with the removal of the
/// dead letter. On failure everything rolls back and the dead letter stays.
///
/// The inbox already holds the event (the runner recorded it when it set it aside, so
/// redeliveries are skipped); the replay leaves it there, and records it again if it was
/// pruned meanwhile. Two replays of one dead letter at the same time apply it once: the
/// second waits for the first and then finds nothing to replay.
///
/// # Errors
/// [`Error::ConsumerDeadLetterNotFound`] when there is no such dead letter (never written,
/// already replayed or discarded); [`Error::ReplayFailed`] with the handler's error (an
/// [`crate::UnprocessableEvent`] when it still cannot apply it); [`Error::Database`].
pub async fn replay_consumer_dead_letter<H: EventHandler + ?Sized>(
    pool: &PgPool,
    consumer: &str,
    event_id: EventId,
    handler: &H,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    let letter = lock(&mut tx, consumer, event_id).await?;
    record_once(&mut tx, consumer, event_id).await?;
    if let Err(source) = handler.handle(&mut tx, &letter.envelope).await {
        if let Err(rollback) = tx.rollback().await {
            tracing::warn!(consumer, %event_id, %rollback, "rolling back a failed replay failed; the connection drops it");
        }
        return Err(Error::ReplayFailed {
            consumer: consumer.to_owned(),
            event_id,
            source,
        });
    }
    delete(&mut tx, consumer, event_id).await?;
    tx.commit().await?;
    Ok(())
}

/// Gives up on `consumer`'s dead letter `event_id`: the row is deleted and the event stays
/// recorded in the inbox, so this consumer never applies it.
///
/// # Errors
/// [`Error::ConsumerDeadLetterNotFound`] when there is no such dead letter;
/// [`Error::Database`].
pub async fn discard_consumer_dead_letter(
    pool: &PgPool,
    consumer: &str,
    event_id: EventId,
) -> Result<()> {
    let mut conn = pool.acquire().await?;
    delete(&mut conn, consumer, event_id).await
}

/// Locks the dead letter for a replay.
async fn lock(
    conn: &mut PgConnection,
    consumer: &str,
    event_id: EventId,
) -> Result<ConsumerDeadLetter> {
    let sql = format!(
        "SELECT {COLUMNS} FROM commerce_outbox.consumer_dead_letter
         WHERE consumer = $1 AND event_id = $2 FOR UPDATE"
    );
    let row: Option<Row> = sqlx::query_as(&sql)
        .bind(consumer)
        .bind(event_id.0)
        .fetch_optional(conn)
        .await?;
    row.map(ConsumerDeadLetter::from)
        .ok_or_else(|| not_found(consumer, event_id))
}

async fn delete(conn: &mut PgConnection, consumer: &str, event_id: EventId) -> Result<()> {
    let deleted = sqlx::query(
        "DELETE FROM commerce_outbox.consumer_dead_letter WHERE consumer = $1 AND event_id = $2",
    )
    .bind(consumer)
    .bind(event_id.0)
    .execute(conn)
    .await?
    .rows_affected();
    if deleted == 0 {
        return Err(not_found(consumer, event_id));
    }
    Ok(())
}

fn not_found(consumer: &str, event_id: EventId) -> Error {
    Error::ConsumerDeadLetterNotFound {
        consumer: consumer.to_owned(),
        event_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cuts_long_errors_on_a_character_boundary() {
        let short = "database down";
        assert_eq!(bounded(short), short);
        let exact = "x".repeat(MAX_ERROR_BYTES);
        assert_eq!(bounded(&exact), exact);
        // 'é' is 2 bytes: the limit falls inside the last one kept whole.
        let long = format!("x{}", "é".repeat(MAX_ERROR_BYTES));
        let cut = bounded(&long);
        assert_eq!(cut.len(), MAX_ERROR_BYTES - 1);
        assert!(cut.ends_with('é'));
    }
}
