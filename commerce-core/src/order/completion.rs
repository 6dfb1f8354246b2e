//! A BACKORDERED order becomes CREATED once arriving stock has covered every line.

use std::collections::BTreeSet;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;
use crate::event::CoreEvent;
use crate::ids::OrderId;

use super::{history, OrderStatus};

/// Why a completed order moved to CREATED, in its history.
const REASON: &str = "stock allocated";

/// Moves every order of `candidates` that is BACKORDERED and has no queued line left to
/// CREATED, with its history row and event; returns the orders moved.
///
/// Runs after every product row the transaction needs is locked (the crate's lock order:
/// products, then orders in ascending id). The candidates are locked first, in one
/// statement in ascending id, and checked in the next statement: that statement's snapshot
/// is taken after every other transaction that held one of these orders (and served one of
/// its lines) committed, so one of any two transactions completing the same order always
/// sees both served lines.
pub(crate) async fn promote_completed(
    conn: &mut PgConnection,
    candidates: &BTreeSet<OrderId>,
    events: &mut Vec<CoreEvent>,
) -> Result<BTreeSet<OrderId>> {
    if candidates.is_empty() {
        return Ok(BTreeSet::new());
    }
    let ids: Vec<Uuid> = candidates.iter().map(|o| o.0).collect();
    // Both statements run unprepared, planned for their ids each time: prepared, Postgres
    // keeps the generic plan it made while the table was young (a whole-table read is
    // cheapest there) until something analyzes the table, and every completion then reads
    // all the orders (tests/young_tables.rs).
    sqlx::query("SELECT id FROM commerce.orders WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .persistent(false)
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    let promoted: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE commerce.orders o SET status = 'CREATED', updated_at = now() \
         WHERE o.id = ANY($1) AND o.status = 'BACKORDERED' \
         AND NOT EXISTS (SELECT 1 FROM commerce.backorders b WHERE b.order_id = o.id) \
         RETURNING o.id",
    )
    .persistent(false)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let promoted: BTreeSet<OrderId> = promoted.into_iter().map(OrderId).collect();
    let ordered: Vec<OrderId> = promoted.iter().copied().collect();
    history::record_many(
        conn,
        &ordered,
        Some(OrderStatus::Backordered),
        OrderStatus::Created,
        REASON,
    )
    .await?;
    events.extend(ordered.iter().map(|&order| CoreEvent::OrderStatusChanged {
        order,
        from: OrderStatus::Backordered,
        to: OrderStatus::Created,
        reason: REASON.to_owned(),
    }));
    Ok(promoted)
}
