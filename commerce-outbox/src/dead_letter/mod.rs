//! Dead letters: list, inspect, replay (one, or every one of a topic), discard.
//!
//! Two kinds, one on each side of the transport:
//!
//! - **Outbox dead letters** (the relay's): an event the broker (or, in-process, a consumer
//!   group) kept refusing becomes a dead letter after the relay's `max_attempts`. Later
//!   events of the same aggregate are held (not published) until the dead letter is
//!   replayed or discarded, so no consumer ever sees an aggregate's events out of order or
//!   with a hole it cannot detect. [`list_dead_letters`], [`inspect_event`],
//!   [`replay_dead_letter`], [`replay_dead_letters`], [`discard_dead_letter`].
//! - **Consumer dead letters** (an [`crate::InboxConsumer`]'s): an event its handler declared
//!   unprocessable ([`crate::UnprocessableEvent`]) is set aside at once, per consumer, and the
//!   events behind it go on. [`list_consumer_dead_letters`],
//!   [`count_consumer_dead_letters`], [`replay_consumer_dead_letter`] (through the
//!   handler), [`discard_consumer_dead_letter`].

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::EventId;

mod consumer;

pub(crate) use consumer::set_aside;
pub use consumer::{
    count_consumer_dead_letters, discard_consumer_dead_letter, list_consumer_dead_letters,
    replay_consumer_dead_letter, ConsumerDeadLetter, MAX_ERROR_BYTES,
};

const COLUMNS: &str = "
    e.id, e.topic, e.event_type, e.aggregate_type, e.aggregate_id, e.aggregate_seq,
    e.occurred_at, e.schema_version, e.payload, e.status, e.attempts, e.last_error,
    e.created_at, e.published_at, e.dead_at,
    (SELECT count(*) FROM commerce_outbox.event h
     WHERE h.aggregate_type = e.aggregate_type AND h.aggregate_id = e.aggregate_id
       AND h.aggregate_seq > e.aggregate_seq AND h.status = 'pending') AS held_behind";

/// An outbox row with its delivery state, as the dead-letter tools show it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OutboxEvent {
    /// Event id.
    #[sqlx(try_from = "Uuid")]
    pub id: EventId,
    /// Target topic.
    pub topic: String,
    /// Event type.
    pub event_type: String,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Position within the aggregate (commit order).
    pub aggregate_seq: i64,
    /// When the fact happened.
    pub occurred_at: DateTime<Utc>,
    /// Payload schema version.
    pub schema_version: i32,
    /// The payload.
    pub payload: serde_json::Value,
    /// `pending`, `published`, `dead` or `discarded`.
    pub status: String,
    /// Publish attempts the broker refused.
    pub attempts: i32,
    /// The last publish error.
    pub last_error: Option<String>,
    /// When it was enqueued (committed rows only are visible).
    pub created_at: DateTime<Utc>,
    /// When the broker acknowledged it.
    pub published_at: Option<DateTime<Utc>>,
    /// When it became a dead letter.
    pub dead_at: Option<DateTime<Utc>>,
    /// Later events of the same aggregate still pending (held behind this one if dead).
    pub held_behind: i64,
}

/// Dead letters, oldest first, at most `limit`.
///
/// # Errors
/// [`Error::Database`] when the query fails.
pub async fn list_dead_letters(pool: &PgPool, limit: i64) -> Result<Vec<OutboxEvent>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM commerce_outbox.event e WHERE e.status = 'dead' ORDER BY e.dead_at, e.position LIMIT $1"
    );
    Ok(sqlx::query_as(&sql).bind(limit).fetch_all(pool).await?)
}

/// Any outbox event, whatever its status.
///
/// # Errors
/// [`Error::EventNotFound`] when it does not exist (or was pruned).
pub async fn inspect_event(pool: &PgPool, id: EventId) -> Result<OutboxEvent> {
    let sql = format!("SELECT {COLUMNS} FROM commerce_outbox.event e WHERE e.id = $1");
    sqlx::query_as(&sql)
        .bind(id.0)
        .fetch_optional(pool)
        .await?
        .ok_or(Error::EventNotFound(id))
}

/// Makes a dead letter pending again with its attempts reset; the relay publishes it (and
/// then the events held behind it) on its next batch. Replay after fixing the cause (topic
/// created, broker limit raised, consumer fixed).
///
/// # Errors
/// [`Error::EventNotFound`] or [`Error::NotDeadLetter`].
pub async fn replay_dead_letter(pool: &PgPool, id: EventId) -> Result<()> {
    settle_dead_letter(
        pool,
        id,
        "UPDATE commerce_outbox.event
         SET status = 'pending', attempts = 0, next_attempt_at = now(), dead_at = NULL
         WHERE id = $1 AND status = 'dead'",
    )
    .await
}

/// Makes every dead letter of `topic` pending again, attempts reset, and returns their ids
/// in sequence order (the order they were enqueued in, which is each aggregate's sequence
/// order). The relay publishes each of them before the events held behind it.
///
/// This is the recovery after a cause that hit the whole topic (an ACL change, a missing
/// topic, a size limit tightened): one call instead of one replay per aggregate. Fix the
/// cause first, or the events simply die again after `max_attempts`.
///
/// # Errors
/// [`Error::Database`] when the statement fails. A topic without dead letters is not an
/// error: the list is empty.
pub async fn replay_dead_letters(pool: &PgPool, topic: &str) -> Result<Vec<EventId>> {
    let mut tx = pool.begin().await?;
    // Locked oldest first, as the claim locks, so two replays of one topic at the same time
    // wait for each other instead of deadlocking.
    let replayed: Vec<Uuid> = sqlx::query_scalar(
        "WITH dead AS (
             SELECT id, position FROM commerce_outbox.event
             WHERE topic = $1 AND status = 'dead'
             ORDER BY position
             FOR UPDATE
         ), replayed AS (
             UPDATE commerce_outbox.event e
             SET status = 'pending', attempts = 0, next_attempt_at = now(), dead_at = NULL
             FROM dead WHERE e.id = dead.id
             RETURNING e.id, dead.position
         )
         SELECT id FROM replayed ORDER BY position",
    )
    .bind(topic)
    .fetch_all(&mut *tx)
    .await?;
    if !replayed.is_empty() {
        sqlx::query("SELECT pg_notify('commerce_outbox', '')")
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(replayed.into_iter().map(EventId).collect())
}

/// Gives up on a dead letter: it is kept as `discarded` (pruned with published rows) and the
/// events held behind it are released. Consumers will never see it.
///
/// # Errors
/// [`Error::EventNotFound`] or [`Error::NotDeadLetter`].
pub async fn discard_dead_letter(pool: &PgPool, id: EventId) -> Result<()> {
    settle_dead_letter(
        pool,
        id,
        "UPDATE commerce_outbox.event SET status = 'discarded', dead_at = now()
         WHERE id = $1 AND status = 'dead'",
    )
    .await
}

async fn settle_dead_letter(pool: &PgPool, id: EventId, sql: &str) -> Result<()> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query::<Postgres>(sql)
        .bind(id.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if updated == 0 {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM commerce_outbox.event WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await?;
        return Err(match status {
            None => Error::EventNotFound(id),
            Some(status) => Error::NotDeadLetter { id, status },
        });
    }
    sqlx::query("SELECT pg_notify('commerce_outbox', '')")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
