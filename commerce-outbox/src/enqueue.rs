//! Writing events into the outbox inside the caller's transaction.

use sqlx::PgConnection;

use crate::error::Result;
use crate::event::{EventId, NewEvent};

/// The Postgres channel `enqueue` notifies; relays `LISTEN` on it.
pub const NOTIFY_CHANNEL: &str = "commerce_outbox";

/// One round trip: bump the aggregate's sequence (this row lock serializes writers of one
/// aggregate until commit, making sequence order commit order), insert the event, and
/// queue a NOTIFY that Postgres delivers only if the transaction commits.
const ENQUEUE_SQL: &str = "
WITH seq AS (
    INSERT INTO commerce_outbox.aggregate_sequence AS s (aggregate_type, aggregate_id, last_seq)
    VALUES ($4, $5, 1)
    ON CONFLICT (aggregate_type, aggregate_id)
    DO UPDATE SET last_seq = s.last_seq + 1, updated_at = now()
    RETURNING last_seq
), inserted AS (
    INSERT INTO commerce_outbox.event
        (id, topic, event_type, aggregate_type, aggregate_id, aggregate_seq,
         occurred_at, schema_version, payload)
    SELECT $1, $2, $3, $4, $5, seq.last_seq, $6, $7, $8 FROM seq
    RETURNING id
)
SELECT pg_notify('commerce_outbox', '') FROM inserted";

/// Writes `event` to the outbox on `conn`, which must be inside the caller's transaction
/// (pass `&mut *tx`), so the event exists if and only if the business change commits.
///
/// Two transactions enqueueing events of the same aggregate serialize until the first
/// commits; the relay publishes one aggregate's events in that commit order.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> commerce_outbox::Result<()> {
/// use commerce_outbox::{enqueue, NewEvent};
/// let mut tx = pool.begin().await?;
/// // ... the business change on &mut *tx ...
/// let event = NewEvent::new("orders", "order.created", "order", "o-42", serde_json::json!({"total": 10}));
/// enqueue(&mut tx, &event).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`crate::Error::InvalidEvent`] for an empty topic, type or aggregate;
/// [`crate::Error::Database`] when the insert fails (e.g. a duplicate event id).
pub async fn enqueue(conn: &mut PgConnection, event: &NewEvent) -> Result<EventId> {
    event.validate()?;
    sqlx::query(ENQUEUE_SQL)
        .bind(event.id.0)
        .bind(&event.topic)
        .bind(&event.event_type)
        .bind(&event.aggregate_type)
        .bind(&event.aggregate_id)
        .bind(event.occurred_at)
        .bind(event.schema_version)
        .bind(&event.payload)
        .execute(conn)
        .await?;
    Ok(event.id)
}

/// [`enqueue`] for several events, in order.
///
/// # Errors
/// As [`enqueue`]; the caller's transaction should then be rolled back.
pub async fn enqueue_all(conn: &mut PgConnection, events: &[NewEvent]) -> Result<Vec<EventId>> {
    let mut ids = Vec::with_capacity(events.len());
    for event in events {
        ids.push(enqueue(conn, event).await?);
    }
    Ok(ids)
}
