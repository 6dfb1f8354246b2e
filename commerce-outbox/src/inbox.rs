//! The inbox: turning at-least-once delivery into an exactly-once effect.
//!
//! A consumer records `(consumer, event id)` in the same transaction as the event's effect.
//! A redelivered event finds its row and is skipped; two instances racing on one event
//! serialize on the primary key, and the loser sees the winner's row once it commits.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::Result;
use crate::event::EventId;

/// Records that `consumer` handles `event_id`, on `conn` inside the consumer's transaction.
///
/// Returns `true` the first time (apply the effect, then commit) and `false` when the event
/// was already handled (skip it). If the transaction rolls back, so does the record, and
/// the redelivery is handled again.
///
/// # Errors
/// [`crate::Error::Database`] when the insert fails.
pub async fn record_once(
    conn: &mut PgConnection,
    consumer: &str,
    event_id: EventId,
) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO commerce_outbox.inbox (consumer, event_id) VALUES ($1, $2)
         ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id.0)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// [`record_once`] for many events in one statement: returns the ids recorded now (first
/// deliveries); the others were handled before (or appear twice in `event_ids`: once is
/// enough).
///
/// # Errors
/// [`crate::Error::Database`] when the insert fails.
pub async fn record_all_once(
    conn: &mut PgConnection,
    consumer: &str,
    event_ids: &[EventId],
) -> Result<HashSet<EventId>> {
    let ids: Vec<Uuid> = event_ids.iter().map(|id| id.0).collect();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO commerce_outbox.inbox (consumer, event_id)
         SELECT $1, id FROM UNNEST($2::uuid[]) AS t(id)
         ON CONFLICT (consumer, event_id) DO NOTHING
         RETURNING event_id",
    )
    .bind(consumer)
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    Ok(inserted.into_iter().map(EventId).collect())
}

/// Deletes inbox rows older than `older_than`. Keep it longer than any redelivery can be
/// late (the broker's retention of the topic), or a very late duplicate is applied again.
///
/// # Errors
/// [`crate::Error::Database`] when the delete fails.
pub async fn prune_inbox(pool: &PgPool, older_than: Duration) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM commerce_outbox.inbox
         WHERE received_at < clock_timestamp() - make_interval(secs => $1)",
    )
    .bind(older_than.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected())
}
