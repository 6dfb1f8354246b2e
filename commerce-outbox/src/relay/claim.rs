//! Claiming a batch of pending rows without breaking per-aggregate order.
//!
//! A row may be published only when every earlier event of its aggregate is published.
//! The claim locks candidate rows with `FOR UPDATE SKIP LOCKED` (so relays never wait on each
//! other), then keeps, per aggregate, only a run of consecutive sequence numbers that starts
//! at the aggregate's oldest unsettled event. A row whose predecessor is locked by another
//! relay (in flight there) or dead is dropped and stays pending. Sequence numbers have no
//! gaps and follow commit order (see `enqueue`), so "consecutive from the oldest unsettled"
//! is exact, and a transaction that commits late simply shows up in a later claim: no cursor
//! can skip it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;
use crate::event::{Envelope, EventId};
use crate::transport::OutboundMessage;

/// One statement: lock up to `$1` candidates, oldest first, skipping the topics in `$2`
/// (backing off because the broker did not answer for them), then read (without locks, so
/// rows locked by other relays count too) the oldest unsettled sequence number of each
/// claimed aggregate. Rows whose aggregate has an earlier dead row or an earlier row waiting
/// out its retry backoff are not even candidates, so a blocked aggregate cannot fill the
/// batch and starve the others.
///
/// The blocker probe matches `event_blocking_idx` (only rows in retry or dead), and each
/// head is the first entry of `event_unsettled_idx`, so a 1,000-row claim stays a few
/// milliseconds whatever the table's size.
///
/// Each claimed row probes its own head (rows of one aggregate probe the same entry). A join
/// of the claimed rows with their distinct aggregates instead was planned as a nested loop
/// over both whenever the statistics said few rows were pending (taken while a relay kept
/// up, they say so): its work grew with the square of the batch, 17 of a 19 ms claim of 382
/// rows in the HTTP benchmark (`plan_tests` below).
///
/// The heads are read with the statement's snapshot. That can only be conservative: an
/// earlier event of the aggregate cannot be invisible while a later one is visible, because
/// sequence numbers are handed out one committed transaction after another.
const CLAIM_SQL: &str = "
WITH claimed AS (
    SELECT e.id, e.topic, e.event_type, e.aggregate_type, e.aggregate_id, e.aggregate_seq,
           e.occurred_at, e.schema_version, e.payload, e.traceparent, e.attempts, e.position
    FROM commerce_outbox.event e
    WHERE e.status = 'pending'
      AND e.next_attempt_at <= now()
      AND e.topic <> ALL($2)
      AND NOT EXISTS (
          SELECT 1 FROM commerce_outbox.event b
          WHERE b.aggregate_type = e.aggregate_type
            AND b.aggregate_id = e.aggregate_id
            AND b.aggregate_seq < e.aggregate_seq
            AND (b.status = 'dead'
                 OR (b.status = 'pending' AND b.attempts > 0 AND b.next_attempt_at > now())))
    ORDER BY e.position
    LIMIT $1
    FOR UPDATE OF e SKIP LOCKED
)
SELECT c.id, c.topic, c.event_type, c.aggregate_type, c.aggregate_id, c.aggregate_seq,
       c.occurred_at, c.schema_version, c.payload, c.traceparent, c.attempts,
       (SELECT u.aggregate_seq FROM commerce_outbox.event u
        WHERE u.aggregate_type = c.aggregate_type AND u.aggregate_id = c.aggregate_id
          AND u.status IN ('pending', 'dead')
        ORDER BY u.aggregate_seq
        LIMIT 1) AS aggregate_head
FROM claimed c
ORDER BY c.position";

/// A claimed row as the claim statement returns it.
#[derive(Debug, sqlx::FromRow)]
struct ClaimRecord {
    id: Uuid,
    topic: String,
    event_type: String,
    aggregate_type: String,
    aggregate_id: String,
    aggregate_seq: i64,
    occurred_at: DateTime<Utc>,
    schema_version: i32,
    payload: serde_json::Value,
    traceparent: Option<String>,
    attempts: i32,
    /// Never null for a row the claim locked (it is unsettled itself, in the statement's
    /// snapshot); a row without one would stay pending.
    aggregate_head: Option<i64>,
}

/// A locked outbox row the relay is about to publish.
#[derive(Debug, Clone)]
pub(crate) struct ClaimedRow {
    /// The message to publish (the row's envelope, key and headers).
    pub(crate) message: OutboundMessage,
    /// Failed attempts so far.
    pub(crate) attempts: i32,
    /// The oldest unsettled sequence number of the row's aggregate when claimed.
    pub(crate) aggregate_head: i64,
}

impl ClaimedRow {
    /// The row to publish, or `None` when its aggregate's head was not read (it then stays
    /// pending, as rows whose predecessor another relay holds do).
    fn from_record(record: ClaimRecord) -> Option<Self> {
        let envelope = Envelope {
            id: EventId(record.id),
            event_type: record.event_type,
            aggregate_type: record.aggregate_type,
            aggregate_id: record.aggregate_id,
            aggregate_seq: record.aggregate_seq,
            occurred_at: record.occurred_at,
            schema_version: record.schema_version,
            payload: record.payload,
            traceparent: record.traceparent,
        };
        Some(Self {
            message: OutboundMessage::new(record.topic, envelope),
            attempts: record.attempts,
            aggregate_head: record.aggregate_head?,
        })
    }

    fn aggregate(&self) -> (String, String) {
        let envelope = &self.message.envelope;
        (
            envelope.aggregate_type.clone(),
            envelope.aggregate_id.clone(),
        )
    }

    fn seq(&self) -> i64 {
        self.message.envelope.aggregate_seq
    }
}

/// What a claim returned.
#[derive(Debug)]
pub(crate) struct Claim {
    /// Rows locked by the candidate query (a full batch means more work is likely waiting).
    pub(crate) locked: usize,
    /// Rows safe to publish, each aggregate's rows in sequence order.
    pub(crate) rows: Vec<ClaimedRow>,
}

/// Locks up to `limit` candidates on `conn` (inside the batch's transaction), none of a
/// topic in `skip_topics`, and returns the ones that may be published now.
pub(crate) async fn claim(
    conn: &mut PgConnection,
    limit: i64,
    skip_topics: &[String],
) -> Result<Claim> {
    let records = sqlx::query_as::<_, ClaimRecord>(CLAIM_SQL)
        .bind(limit)
        .bind(skip_topics)
        .fetch_all(&mut *conn)
        .await?;
    let locked = records.len();
    let candidates = records
        .into_iter()
        .filter_map(ClaimedRow::from_record)
        .collect();
    Ok(Claim {
        locked,
        rows: keep_publishable(candidates),
    })
}

/// Per aggregate, keeps the consecutive run of sequence numbers starting at the aggregate's
/// oldest unsettled one; aggregates keep their first-seen order.
pub(crate) fn keep_publishable(candidates: Vec<ClaimedRow>) -> Vec<ClaimedRow> {
    let mut order: Vec<(String, String)> = Vec::new();
    let mut groups: HashMap<(String, String), Vec<ClaimedRow>> = HashMap::new();
    for row in candidates {
        let key = row.aggregate();
        groups
            .entry(key.clone())
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(row);
    }
    let mut out = Vec::new();
    for key in order {
        let Some(mut rows) = groups.remove(&key) else {
            continue;
        };
        rows.sort_by_key(ClaimedRow::seq);
        let Some(head) = rows.first().map(|r| r.aggregate_head) else {
            continue;
        };
        for (expected, row) in (head..).zip(rows) {
            if row.seq() != expected {
                break;
            }
            out.push(row);
        }
    }
    out
}

/// The claim's cost grows with the rows it claims, not with their square: measured from
/// the work its plan does on a grown table whose statistics were taken while it was young.
#[cfg(test)]
mod plan_tests {
    use commerce_testkit::TestDb;
    use serde_json::{json, Value};

    use super::CLAIM_SQL;
    use crate::{enqueue_all, NewEvent, MIGRATOR};

    /// Rows each plan node produced over all its loops, plus the rows its filters dropped.
    fn rows_handled(node: &Value) -> f64 {
        let field = |name: &str| node.get(name).and_then(Value::as_f64).unwrap_or(0.0);
        let loops = field("Actual Loops").max(1.0);
        let own = (field("Actual Rows")
            + field("Rows Removed by Join Filter")
            + field("Rows Removed by Filter"))
            * loops;
        let below: f64 = node
            .get("Plans")
            .and_then(Value::as_array)
            .map_or(0.0, |plans| plans.iter().map(rows_handled).sum());
        own + below
    }

    async fn enqueue_pairs(pool: &sqlx::PgPool, prefix: &str, aggregates: usize) {
        let events: Vec<NewEvent> = (0..aggregates)
            .flat_map(|n| {
                let id = format!("{prefix}-{n}");
                (0..2).map(move |k| {
                    NewEvent::new("orders", "order.changed", "order", &id, json!({ "k": k }))
                })
            })
            .collect();
        let mut tx = pool.begin().await.unwrap();
        enqueue_all(&mut tx, &events).await.unwrap();
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn a_full_claim_does_work_in_proportion_to_its_rows() {
        let db = TestDb::new(&[&MIGRATOR]).await;
        let pool = db.pool();
        // Young: statistics taken while every row was already published, as a relay that
        // keeps up leaves the table (few pending rows by the statistics).
        enqueue_pairs(pool, "young", 50).await;
        sqlx::query("UPDATE commerce_outbox.event SET status = 'published', published_at = now()")
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("ANALYZE commerce_outbox.event")
            .execute(pool)
            .await
            .unwrap();
        // Then a surge: 1,000 pending events, two per order.
        enqueue_pairs(pool, "surge", 500).await;

        let mut tx = pool.begin().await.unwrap();
        let plan: Value =
            sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {CLAIM_SQL}"))
                .bind(1_000_i64)
                .bind(Vec::<String>::new())
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        tx.rollback().await.unwrap();
        let root = &plan[0]["Plan"];
        assert_eq!(root["Actual Rows"].as_f64(), Some(1_000.0), "{plan:#}");
        let handled = rows_handled(root);
        assert!(
            handled <= 20_000.0,
            "claiming 1,000 rows handled {handled} rows in its plan: {plan:#}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(aggregate: &str, seq: i64, head: i64) -> ClaimedRow {
        ClaimedRow {
            message: crate::transport::tests::message("t", aggregate, seq),
            attempts: 0,
            aggregate_head: head,
        }
    }

    fn seqs(rows: &[ClaimedRow]) -> Vec<(String, i64)> {
        rows.iter()
            .map(|r| (r.message.key.clone(), r.seq()))
            .collect()
    }

    #[test]
    fn keeps_a_run_starting_at_the_head() {
        let kept = keep_publishable(vec![
            row("a", 3, 3),
            row("a", 4, 3),
            row("b", 1, 1),
            row("a", 5, 3),
        ]);
        assert_eq!(
            seqs(&kept),
            vec![
                ("a".into(), 3),
                ("a".into(), 4),
                ("a".into(), 5),
                ("b".into(), 1)
            ]
        );
    }

    #[test]
    fn drops_an_aggregate_whose_head_is_held_elsewhere() {
        // Seq 2 is locked by another relay (not among our candidates): 3 and 4 must wait.
        let kept = keep_publishable(vec![row("a", 3, 2), row("a", 4, 2), row("b", 7, 7)]);
        assert_eq!(seqs(&kept), vec![("b".into(), 7)]);
    }

    #[test]
    fn stops_at_a_gap_in_the_claimed_run() {
        // Seq 2 was skipped (locked by another relay that dropped it); 3 must not overtake it.
        let kept = keep_publishable(vec![row("a", 1, 1), row("a", 3, 1)]);
        assert_eq!(seqs(&kept), vec![("a".into(), 1)]);
    }
}
