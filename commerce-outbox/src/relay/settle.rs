//! Recording each row's outcome in the batch's transaction: [`plan`] decides (pure), then
//! [`apply`] writes it and publishes the dead letters.

use std::collections::HashSet;

use rdkafka::producer::FutureProducer;
use sqlx::PgConnection;
use uuid::Uuid;

use super::claim::ClaimedRow;
use super::publish::{publish_dead_letter, RowOutcome};
use crate::backoff::Backoff;
use crate::error::Result;
use crate::kafka::dlq_topic;

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

/// What a batch did, for metrics and the relay's logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Settlement {
    pub(crate) published: u64,
    pub(crate) rejected: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) unavailable: u64,
    /// One of the broker errors behind `unavailable`, for the log line.
    pub(crate) unavailable_error: Option<String>,
}

/// A failed attempt of one row: `row` indexes the batch's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub(crate) row: usize,
    pub(crate) error: String,
    /// Attempts including this one.
    pub(crate) attempts: i32,
}

/// What to write for a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Rows to mark published.
    pub(crate) published: Vec<Uuid>,
    /// Rows that wait `retry_backoff` before their next attempt.
    pub(crate) retries: Vec<Attempt>,
    /// Rows that become dead letters.
    pub(crate) dead: Vec<Attempt>,
    /// Rows the broker was unreachable for: `last_error` only, no attempt.
    pub(crate) unavailable: Vec<Uuid>,
    pub(crate) unavailable_error: Option<String>,
    /// Rows acknowledged after an earlier row of their aggregate failed in the same batch:
    /// left pending, see [`plan`].
    pub(crate) held_after_failure: u64,
}

impl Plan {
    /// The dead-letter topics this plan publishes to.
    pub(crate) fn dead_letter_topics(&self, rows: &[ClaimedRow]) -> Vec<String> {
        let topics: HashSet<String> = self
            .dead
            .iter()
            .map(|attempt| dlq_topic(&rows[attempt.row].topic))
            .collect();
        topics.into_iter().collect()
    }
}

/// Decides what each row's outcome means. `outcomes` must be settled (no `Undelivered`
/// left: see `fault::attribute`); one still undelivered is treated as unavailable.
///
/// Once a row of an aggregate did not go out, the aggregate's later rows of this batch are
/// not marked published even when the broker acknowledged them (an asynchronous failure of
/// seq N with N+1 acknowledged): they stay pending and are published again after N, so
/// every consumer gets N+1 after N (and, once, possibly before it too). Marking N+1 would
/// leave the last delivery out of order.
pub(crate) fn plan(rows: &[ClaimedRow], outcomes: &[RowOutcome], max_attempts: u32) -> Plan {
    let mut plan = Plan::default();
    let mut failed: HashSet<(&str, &str)> = HashSet::new();
    for (index, (row, outcome)) in rows.iter().zip(outcomes).enumerate() {
        let aggregate = (row.aggregate_type.as_str(), row.aggregate_id.as_str());
        if *outcome != RowOutcome::Published {
            failed.insert(aggregate);
        }
        match outcome {
            RowOutcome::Published if failed.contains(&aggregate) => {
                plan.held_after_failure += 1;
            }
            RowOutcome::Published => plan.published.push(row.id),
            RowOutcome::Held => {}
            RowOutcome::Unavailable(error) | RowOutcome::Undelivered(error) => {
                plan.unavailable.push(row.id);
                plan.unavailable_error = Some(error.clone());
            }
            RowOutcome::Rejected(error) => {
                let attempts = row.attempts.saturating_add(1);
                let attempt = Attempt {
                    row: index,
                    error: error.clone(),
                    attempts,
                };
                if u32::try_from(attempts).unwrap_or(u32::MAX) >= max_attempts {
                    plan.dead.push(attempt);
                } else {
                    plan.retries.push(attempt);
                }
            }
        }
    }
    plan
}

/// Writes `plan` on `conn` (the batch's transaction) and publishes its dead letters, except
/// to dead-letter topics in `missing_dead_letter_topics` (the row then records that).
pub(crate) async fn apply(
    conn: &mut PgConnection,
    producer: &FutureProducer,
    rows: &[ClaimedRow],
    plan: Plan,
    retry_backoff: Backoff,
    missing_dead_letter_topics: &HashSet<String>,
) -> Result<Settlement> {
    for Attempt {
        row,
        error,
        attempts,
    } in &plan.retries
    {
        let row = &rows[*row];
        let delay = retry_backoff.delay_with_random_jitter(u32::try_from(*attempts).unwrap_or(0));
        tracing::warn!(
            event_id = %row.id, topic = %row.topic, attempts, %error,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "outbox event not published; will retry"
        );
        sqlx::query(MARK_RETRY_SQL)
            .bind(row.id)
            .bind(error)
            .bind(delay.as_secs_f64())
            .execute(&mut *conn)
            .await?;
    }
    for attempt in &plan.dead {
        let row = &rows[attempt.row];
        let dlq = dlq_topic(&row.topic);
        let missing = missing_dead_letter_topics.contains(&dlq);
        dead_letter(
            conn,
            producer,
            row,
            attempt,
            missing.then_some(dlq.as_str()),
        )
        .await?;
    }
    if !plan.published.is_empty() {
        sqlx::query(MARK_PUBLISHED_SQL)
            .bind(&plan.published)
            .execute(&mut *conn)
            .await?;
    }
    if let Some(error) = &plan.unavailable_error {
        sqlx::query(NOTE_UNAVAILABLE_SQL)
            .bind(&plan.unavailable)
            .bind(error)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Settlement {
        published: plan.published.len() as u64,
        rejected: (plan.retries.len() + plan.dead.len()) as u64,
        dead_lettered: plan.dead.len() as u64,
        unavailable: plan.unavailable.len() as u64,
        unavailable_error: plan.unavailable_error,
    })
}

/// Marks the row dead and sends it to `<topic>.dlq`, unless that topic is known to be
/// `missing` (sending would only wait out the delivery timeout).
async fn dead_letter(
    conn: &mut PgConnection,
    producer: &FutureProducer,
    row: &ClaimedRow,
    attempt: &Attempt,
    missing: Option<&str>,
) -> Result<()> {
    let error = attempt.error.as_str();
    let sent = match missing {
        Some(dlq) => Err(format!("topic {dlq} does not exist")),
        None => publish_dead_letter(producer, row, error, attempt.attempts).await,
    };
    let recorded = match sent {
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
        aggregate_id = %row.aggregate_id, attempts = attempt.attempts, %error,
        "outbox event dead-lettered; later events of its aggregate are held until it is replayed or discarded"
    );
    sqlx::query(MARK_DEAD_SQL)
        .bind(row.id)
        .bind(recorded)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn row(aggregate: &str, seq: i64, attempts: i32) -> ClaimedRow {
        ClaimedRow {
            id: Uuid::now_v7(),
            topic: "orders".into(),
            event_type: "e".into(),
            aggregate_type: "order".into(),
            aggregate_id: aggregate.into(),
            aggregate_seq: seq,
            occurred_at: Utc::now(),
            schema_version: 1,
            payload: serde_json::Value::Null,
            attempts,
            aggregate_head: 1,
        }
    }

    fn refused() -> RowOutcome {
        RowOutcome::Rejected("Broker: Message size too large".into())
    }

    #[test]
    fn a_later_event_acknowledged_after_its_predecessor_failed_is_not_marked_published() {
        let rows = [row("a", 1, 0), row("a", 2, 0), row("b", 1, 0)];
        let plan = plan(
            &rows,
            &[refused(), RowOutcome::Published, RowOutcome::Published],
            10,
        );
        assert_eq!(
            plan.published,
            vec![rows[2].id],
            "seq 2 of a waits for seq 1; b is unaffected"
        );
        assert_eq!(plan.held_after_failure, 1);
        assert_eq!(plan.retries.len(), 1);
        assert_eq!(plan.retries[0].row, 0);
    }

    #[test]
    fn an_unavailable_predecessor_holds_its_successors_too() {
        let rows = [row("a", 1, 0), row("a", 2, 0)];
        let plan = plan(
            &rows,
            &[
                RowOutcome::Unavailable("Local: Message timed out".into()),
                RowOutcome::Published,
            ],
            10,
        );
        assert!(plan.published.is_empty());
        assert_eq!(plan.unavailable, vec![rows[0].id]);
        assert!(plan.retries.is_empty(), "no attempt counted for an outage");
    }

    #[test]
    fn the_last_allowed_attempt_makes_a_dead_letter() {
        let rows = [row("a", 1, 2), row("b", 1, 1)];
        let plan = plan(&rows, &[refused(), refused()], 3);
        assert_eq!(plan.dead.len(), 1);
        assert_eq!(plan.dead[0].row, 0);
        assert_eq!(plan.dead[0].attempts, 3);
        assert_eq!(plan.retries[0].attempts, 2);
        assert_eq!(plan.dead_letter_topics(&rows), vec!["orders.dlq"]);
    }
}
