//! Reading orders and moving them through the state machine.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::CoreEvent;
use crate::ids::{OrderId, ProductId};
use crate::inventory::{allocate_backorders, lock_products, store_stock, LedgerKind};
use crate::tx::{Hooks, TxEffects};

use super::{Order, OrderLine, OrderStatus, ShortagePolicy, StatusChange};

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    user_id: String,
    status: String,
    shortage_policy: String,
    idempotency_key: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn parse_status(s: &str) -> Result<OrderStatus> {
    s.parse()
        .map_err(|e: super::UnknownStatus| Error::Database(sqlx::Error::Decode(Box::new(e))))
}

/// Reads an order with its lines.
pub(crate) async fn load_order(conn: &mut PgConnection, id: OrderId) -> Result<Order> {
    let row: Option<OrderRow> = sqlx::query_as(
        "SELECT id, user_id, status, shortage_policy, idempotency_key, created_at, updated_at \
         FROM commerce.orders WHERE id = $1",
    )
    .bind(id.0)
    .fetch_optional(&mut *conn)
    .await?;
    let row = row.ok_or(Error::OrderNotFound { order: id })?;
    let lines: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT product_id, quantity, allocated FROM commerce.order_lines \
         WHERE order_id = $1 ORDER BY product_id",
    )
    .bind(id.0)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Order {
        id: OrderId(row.id),
        user_id: row.user_id,
        status: parse_status(&row.status)?,
        policy: ShortagePolicy::from_db(&row.shortage_policy),
        idempotency_key: row.idempotency_key,
        lines: lines
            .into_iter()
            .map(|(product, quantity, allocated)| OrderLine {
                product: ProductId(product),
                quantity,
                allocated,
            })
            .collect(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// The order's status changes, oldest first.
pub(crate) async fn status_history(pool: &PgPool, id: OrderId) -> Result<Vec<StatusChange>> {
    let rows: Vec<(Option<String>, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT from_status, to_status, reason, at FROM commerce.order_status_history \
         WHERE order_id = $1 ORDER BY id",
    )
    .bind(id.0)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Err(Error::OrderNotFound { order: id });
    }
    rows.into_iter()
        .map(|(from, to, reason, at)| {
            Ok(StatusChange {
                from: from.as_deref().map(parse_status).transpose()?,
                to: parse_status(&to)?,
                reason,
                at,
            })
        })
        .collect()
}

fn check_reason(reason: &str) -> Result<()> {
    if reason.trim().is_empty() || reason.len() > 500 {
        return Err(Error::InvalidInput {
            field: "reason",
            reason: "must be 1 to 500 bytes and not blank",
        });
    }
    Ok(())
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
    sqlx::query(
        "INSERT INTO commerce.order_status_history (order_id, from_status, to_status, reason) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(order.0)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    effects.events.push(CoreEvent::OrderStatusChanged {
        order,
        from,
        to,
        reason: reason.to_owned(),
    });
    Ok(())
}

/// Moves an order forward (CREATED -> PROCESSING -> SHIPPED -> DELIVERED); cancellation goes
/// through [`cancel_order`] because it returns stock.
pub(crate) async fn transition_order(
    pool: &PgPool,
    hooks: &Hooks,
    order: OrderId,
    to: OrderStatus,
    reason: &str,
) -> Result<Order> {
    check_reason(reason)?;
    if to == OrderStatus::Cancelled {
        return cancel_order(pool, hooks, order, reason).await;
    }
    let mut tx = pool.begin().await?;
    let from: Option<String> =
        sqlx::query_scalar("SELECT status FROM commerce.orders WHERE id = $1 FOR UPDATE")
            .bind(order.0)
            .fetch_optional(&mut *tx)
            .await?;
    let from = parse_status(&from.ok_or(Error::OrderNotFound { order })?)?;
    if !from.can_transition_to(to) {
        return Err(Error::IllegalTransition { order, from, to });
    }
    let mut effects = TxEffects::default();
    record_change(&mut tx, &mut effects, order, from, to, reason).await?;
    effects.flush(&mut tx, hooks).await?;
    let updated = load_order(&mut tx, order).await?;
    tx.commit().await?;
    Ok(updated)
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
    // Product rows before the order row: the lock order receipts use too (product, then the
    // orders they serve), so a cancel and a receipt cannot deadlock.
    let products: Vec<i64> = sqlx::query_scalar(
        "SELECT product_id FROM commerce.order_lines WHERE order_id = $1 ORDER BY product_id",
    )
    .bind(order.0)
    .fetch_all(&mut *tx)
    .await?;
    let products: Vec<ProductId> = products.into_iter().map(ProductId).collect();
    let mut stock = lock_products(&mut tx, &products).await?;
    let current = load_order_for_update(&mut tx, order).await?;
    if !current.status.can_transition_to(OrderStatus::Cancelled) {
        return Err(Error::IllegalTransition {
            order,
            from: current.status,
            to: OrderStatus::Cancelled,
        });
    }
    let mut effects = TxEffects::default();
    record_change(
        &mut tx,
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
    sqlx::query("DELETE FROM commerce.backorders WHERE order_id = $1")
        .bind(order.0)
        .execute(&mut *tx)
        .await?;
    effects.events.push(CoreEvent::OrderCancelled {
        order,
        returned,
        reason: reason.to_owned(),
    });
    // Returned stock is stock like any other: the oldest waiting orders get it first.
    for level in &mut stock {
        allocate_backorders(&mut tx, level, &mut effects).await?;
        store_stock(&mut tx, *level).await?;
    }
    effects.flush(&mut tx, hooks).await?;
    let updated = load_order(&mut tx, order).await?;
    tx.commit().await?;
    Ok(updated)
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
