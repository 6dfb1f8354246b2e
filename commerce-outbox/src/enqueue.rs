//! Writing events into the outbox inside the caller's transaction.

use std::collections::HashMap;

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
         occurred_at, schema_version, payload, traceparent)
    SELECT $1, $2, $3, $4, $5, seq.last_seq, $6, $7, $8, $9 FROM seq
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
        .bind(&event.traceparent)
        .execute(conn)
        .await?;
    Ok(event.id)
}

/// All of a batch in one round trip: bump each aggregate's sequence once by its number of
/// events (rows locked in (type, id) order), insert every event with its number, and queue one
/// NOTIFY. `$3` is each aggregate's event count, `$12` each event's 1-based position within
/// its aggregate and `$13` its aggregate's count.
const ENQUEUE_ALL_SQL: &str = "
WITH seq AS (
    INSERT INTO commerce_outbox.aggregate_sequence AS s (aggregate_type, aggregate_id, last_seq)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS c(t, i, n) ORDER BY t, i
    ON CONFLICT (aggregate_type, aggregate_id)
    DO UPDATE SET last_seq = s.last_seq + EXCLUDED.last_seq, updated_at = now()
    RETURNING aggregate_type, aggregate_id, last_seq
), ev AS (
    SELECT * FROM UNNEST($4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[],
                         $9::timestamptz[], $10::int[], $11::jsonb[], $12::bigint[], $13::bigint[],
                         $14::text[])
        AS e(id, topic, event_type, aggregate_type, aggregate_id, occurred_at, schema_version,
             payload, nth, n, traceparent)
), inserted AS (
    INSERT INTO commerce_outbox.event
        (id, topic, event_type, aggregate_type, aggregate_id, aggregate_seq,
         occurred_at, schema_version, payload, traceparent)
    SELECT ev.id, ev.topic, ev.event_type, ev.aggregate_type, ev.aggregate_id,
           seq.last_seq - ev.n + ev.nth, ev.occurred_at, ev.schema_version, ev.payload,
           ev.traceparent
    FROM ev JOIN seq USING (aggregate_type, aggregate_id)
    RETURNING 1
)
SELECT pg_notify('commerce_outbox', '') WHERE EXISTS (SELECT 1 FROM inserted)";

/// [`enqueue`] for several events, in one round trip however many there are: each
/// aggregate's events get consecutive sequence numbers in the order they appear in `events`.
///
/// The aggregates' sequence rows are locked in (aggregate type, aggregate id) order, whatever
/// the order of `events`, so two transactions enqueueing events of the same aggregates never
/// deadlock on them.
///
/// # Errors
/// As [`enqueue`]; the caller's transaction should then be rolled back. Nothing is written
/// when any event is invalid.
pub async fn enqueue_all(conn: &mut PgConnection, events: &[NewEvent]) -> Result<Vec<EventId>> {
    match events {
        [] => return Ok(Vec::new()),
        [one] => return Ok(vec![enqueue(conn, one).await?]),
        _ => {}
    }
    for event in events {
        event.validate()?;
    }
    // Position of each event within its aggregate, and each aggregate's count.
    let mut counts: HashMap<(&str, &str), i64> = HashMap::new();
    let nth: Vec<i64> = events
        .iter()
        .map(|e| {
            let n = counts
                .entry((e.aggregate_type.as_str(), e.aggregate_id.as_str()))
                .or_insert(0);
            *n += 1;
            *n
        })
        .collect();
    let of_aggregate: Vec<i64> = events
        .iter()
        .map(|e| counts[&(e.aggregate_type.as_str(), e.aggregate_id.as_str())])
        .collect();
    let (mut types, mut ids, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
    for ((aggregate_type, aggregate_id), n) in &counts {
        types.push(*aggregate_type);
        ids.push(*aggregate_id);
        sizes.push(*n);
    }
    sqlx::query(ENQUEUE_ALL_SQL)
        .bind(&types)
        .bind(&ids)
        .bind(&sizes)
        .bind(events.iter().map(|e| e.id.0).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.aggregate_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.aggregate_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.schema_version).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| sqlx::types::Json(&e.payload))
                .collect::<Vec<_>>(),
        )
        .bind(&nth)
        .bind(&of_aggregate)
        .bind(
            events
                .iter()
                .map(|e| e.traceparent.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(conn)
        .await?;
    Ok(events.iter().map(|e| e.id).collect())
}
