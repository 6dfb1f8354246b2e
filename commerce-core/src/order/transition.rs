//! Moving orders through the state machine.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::effects::{commit, Hooks, TxEffects};
use crate::error::{Error, Result};
use crate::event::CoreEvent;
use crate::ids::{OrderId, ProductId};
use crate::inventory::{allocate_backorders, leave_queues, lock_products, store_stock, LedgerKind};

use super::read::{load_order, parse_status};
use super::{check_text, history, Order, OrderStatus, MAX_TEXT};

fn check_reason(reason: &str) -> Result<()> {
    check_text("reason", reason, MAX_TEXT)
}

async fn record_change(
    conn: &mut PgConnection,
    effects: &mut TxEffects,
    order: OrderId,
    from: OrderStatus,
    to: OrderStatus,
    reason: &str,
) -> Result<()> {
    sqlx::query("UPDATE commerce.orders SET status = $2, updated_at = now() WHERE id = $1")
        .bind(order.0)
        .bind(to.as_str())
        .execute(&mut *conn)
        .await?;
    history::record(conn, order, Some(from), to, reason).await?;
    effects.events.push(CoreEvent::OrderStatusChanged {
        order,
        from,
        to,
        reason: reason.to_owned(),
    });
    Ok(())
}

/// Moves an order forward (CREATED -> PROCESSING -> SHIPPED -> DELIVERED) in a transaction of
/// its own; cancellation goes through [`cancel_order`] because it returns stock.
pub(crate) async fn transition_order(
    pool: &PgPool,
    hooks: &Hooks,
    order: OrderId,
    to: OrderStatus,
    reason: &str,
) -> Result<Order> {
    check_reason(reason)?;
    let mut tx = pool.begin().await?;
    let updated = transition_order_in(&mut tx, hooks, order, to, reason).await?;
    commit(tx).await?;
    Ok(updated)
}

/// [`transition_order`] inside the caller's transaction (which commits or rolls back).
pub(crate) async fn transition_order_in(
    conn: &mut PgConnection,
    hooks: &Hooks,
    order: OrderId,
    to: OrderStatus,
    reason: &str,
) -> Result<Order> {
    check_reason(reason)?;
    if to == OrderStatus::Cancelled {
        return cancel_order_in(conn, hooks, order, reason).await;
    }
    let from: Option<String> =
        sqlx::query_scalar("SELECT status FROM commerce.orders WHERE id = $1 FOR UPDATE")
            .bind(order.0)
            .fetch_optional(&mut *conn)
            .await?;
    let from = parse_status(&from.ok_or(Error::OrderNotFound { order })?)?;
    if !from.can_transition_to(to) {
        return Err(Error::IllegalTransition { order, from, to });
    }
    let mut effects = TxEffects::default();
    record_change(conn, &mut effects, order, from, to, reason).await?;
    effects.flush(conn, hooks).await?;
    load_order(conn, order).await
}

/// What [`Commerce::transition_orders_in`](crate::Commerce::transition_orders_in) did with each
/// order it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchTransition {
    /// Orders that were in the expected status and moved, in ascending id.
    pub moved: Vec<OrderId>,
    /// Orders found in another status (left alone), with that status, in ascending id.
    pub skipped: Vec<(OrderId, OrderStatus)>,
    /// Orders that do not exist.
    pub missing: Vec<OrderId>,
}

/// Moves every order of `orders` that is in `from` when its row is locked to `to`, inside the
/// caller's transaction: one status update, one history insert, one hook run for all of them.
/// Orders in another status are left alone and reported, as are unknown ones.
pub(crate) async fn transition_orders_in(
    conn: &mut PgConnection,
    hooks: &Hooks,
    orders: &[OrderId],
    from: OrderStatus,
    to: OrderStatus,
    reason: &str,
) -> Result<BatchTransition> {
    check_reason(reason)?;
    if to == OrderStatus::Cancelled {
        // A cancellation returns stock, order by order: not a status flip.
        return Err(Error::InvalidInput {
            field: "to",
            reason: "cancel orders one by one: a cancellation returns stock",
        });
    }
    if !from.can_transition_to(to) {
        return Err(Error::InvalidInput {
            field: "from",
            reason: "no order in this status may move to the target status",
        });
    }
    let mut ids: Vec<Uuid> = orders.iter().map(|o| o.0).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(BatchTransition::default());
    }
    // Rows locked in ascending id, as every other multi-order writer takes them. This and
    // the update run unprepared, planned for their ids each time: prepared, Postgres kept
    // the generic plan it made while the table was young (a whole-table read is cheapest
    // there) until something analyzed the table, and every round then read all the orders.
    let found: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, status FROM commerce.orders WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .persistent(false)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut outcome = BatchTransition::default();
    let mut seen = Vec::with_capacity(found.len());
    for (id, status) in found {
        let status = parse_status(&status)?;
        seen.push(id);
        if status == from {
            outcome.moved.push(OrderId(id));
        } else {
            outcome.skipped.push((OrderId(id), status));
        }
    }
    outcome.missing = ids
        .into_iter()
        .filter(|id| seen.binary_search(id).is_err())
        .map(OrderId)
        .collect();
    if outcome.moved.is_empty() {
        return Ok(outcome);
    }
    let moved: Vec<Uuid> = outcome.moved.iter().map(|o| o.0).collect();
    sqlx::query("UPDATE commerce.orders SET status = $2, updated_at = now() WHERE id = ANY($1)")
        .persistent(false)
        .bind(&moved)
        .bind(to.as_str())
        .execute(&mut *conn)
        .await?;
    history::record_many(conn, &outcome.moved, Some(from), to, reason).await?;
    let mut effects = TxEffects::default();
    effects.events.extend(
        outcome
            .moved
            .iter()
            .map(|&order| CoreEvent::OrderStatusChanged {
                order,
                from,
                to,
                reason: reason.to_owned(),
            }),
    );
    effects.flush(conn, hooks).await?;
    Ok(outcome)
}

/// Cancels an order: returns its allocated stock (a `cancel` ledger row per product), leaves
/// the backorder queue, and hands the returned stock to the oldest backorders waiting for it.
pub(crate) async fn cancel_order(
    pool: &PgPool,
    hooks: &Hooks,
    order: OrderId,
    reason: &str,
) -> Result<Order> {
    check_reason(reason)?;
    let mut tx = pool.begin().await?;
    let updated = cancel_order_in(&mut tx, hooks, order, reason).await?;
    commit(tx).await?;
    Ok(updated)
}

/// [`cancel_order`] inside the caller's transaction (which commits or rolls back).
pub(crate) async fn cancel_order_in(
    conn: &mut PgConnection,
    hooks: &Hooks,
    order: OrderId,
    reason: &str,
) -> Result<Order> {
    let cancelled = cancel_locked(conn, hooks, order, None, reason).await?;
    // Without an expected status nothing turns the cancel down but an error.
    cancelled.ok_or(Error::OrderNotFound { order })
}

/// [`cancel_order`] only if the order is in `expected` when its row is locked; `None`, with
/// nothing written, when it is not.
pub(crate) async fn cancel_order_if(
    pool: &PgPool,
    hooks: &Hooks,
    order: OrderId,
    expected: OrderStatus,
    reason: &str,
) -> Result<Option<Order>> {
    check_expected(expected)?;
    check_reason(reason)?;
    let mut tx = pool.begin().await?;
    let cancelled = cancel_locked(&mut tx, hooks, order, Some(expected), reason).await?;
    if cancelled.is_some() {
        commit(tx).await?;
    }
    Ok(cancelled)
}

/// [`cancel_order_if`] inside the caller's transaction (which commits or rolls back).
pub(crate) async fn cancel_order_if_in(
    conn: &mut PgConnection,
    hooks: &Hooks,
    order: OrderId,
    expected: OrderStatus,
    reason: &str,
) -> Result<Option<Order>> {
    check_expected(expected)?;
    cancel_locked(conn, hooks, order, Some(expected), reason).await
}

/// An expected status no order can be cancelled from is a mistake of the caller's, not a
/// condition that is merely false today.
fn check_expected(expected: OrderStatus) -> Result<()> {
    if expected.can_transition_to(OrderStatus::Cancelled) {
        Ok(())
    } else {
        Err(Error::InvalidInput {
            field: "expected",
            reason: "no order in this status may be cancelled",
        })
    }
}

/// Cancels the order under its row lock: returns its allocated stock (a `cancel` ledger row
/// per product), leaves the backorder queue, and hands the returned stock to the oldest
/// backorders waiting for it. With `expected`, does nothing and returns `None` unless the
/// locked order is in that status.
async fn cancel_locked(
    conn: &mut PgConnection,
    hooks: &Hooks,
    order: OrderId,
    expected: Option<OrderStatus>,
    reason: &str,
) -> Result<Option<Order>> {
    check_reason(reason)?;
    // Product rows before the order row: the lock order receipts use too (product, then the
    // orders they serve), so a cancel and a receipt cannot deadlock.
    let products: Vec<i64> = sqlx::query_scalar(
        "SELECT product_id FROM commerce.order_lines WHERE order_id = $1 ORDER BY product_id",
    )
    .bind(order.0)
    .fetch_all(&mut *conn)
    .await?;
    let products: Vec<ProductId> = products.into_iter().map(ProductId).collect();
    let mut stock = lock_products(conn, &products).await?;
    // The status is read only now, under the order's row lock: a payment that moved the
    // order on while this waited for the lock has committed and is seen.
    let current = load_order_for_update(conn, order).await?;
    if expected.is_some_and(|expected| current.status != expected) {
        return Ok(None);
    }
    if !current.status.can_transition_to(OrderStatus::Cancelled) {
        return Err(Error::IllegalTransition {
            order,
            from: current.status,
            to: OrderStatus::Cancelled,
        });
    }
    let mut effects = TxEffects::default();
    record_change(
        conn,
        &mut effects,
        order,
        current.status,
        OrderStatus::Cancelled,
        reason,
    )
    .await?;
    let mut returned = Vec::new();
    for (line, level) in current.lines.iter().zip(stock.iter_mut()) {
        let outstanding = line.quantity - line.allocated;
        if outstanding > 0 {
            level.backordered -= outstanding;
        }
        if line.allocated > 0 {
            level.available += line.allocated;
            effects.ledger(
                line.product,
                line.allocated,
                LedgerKind::Cancel,
                Some(order.to_string()),
                level.available,
            );
            returned.push((line.product, line.allocated));
        }
    }
    leave_queues(conn, order).await?;
    effects.events.push(CoreEvent::OrderCancelled {
        order,
        returned,
        reason: reason.to_owned(),
    });
    // Returned stock is stock like any other: the oldest waiting orders get it first.
    for level in &mut stock {
        allocate_backorders(conn, level, &mut effects).await?;
        store_stock(conn, *level).await?;
    }
    effects.flush(conn, hooks).await?;
    load_order(conn, order).await.map(Some)
}

async fn load_order_for_update(conn: &mut PgConnection, order: OrderId) -> Result<Order> {
    let locked: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM commerce.orders WHERE id = $1 FOR UPDATE")
            .bind(order.0)
            .fetch_optional(&mut *conn)
            .await?;
    locked.ok_or(Error::OrderNotFound { order })?;
    load_order(conn, order).await
}
