//! Reading orders and their status history.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::ids::{OrderId, ProductId};

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

pub(crate) fn parse_status(s: &str) -> Result<OrderStatus> {
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
    let lines: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT product_id, quantity, allocated, unit_price FROM commerce.order_lines \
         WHERE order_id = $1 ORDER BY product_id",
    )
    .bind(id.0)
    .fetch_all(&mut *conn)
    .await?;
    let lines = lines
        .into_iter()
        .map(|(product, quantity, allocated, unit_price)| OrderLine {
            product: ProductId(product),
            quantity,
            allocated,
            unit_price,
        })
        .collect();
    order_from(row, lines)
}

fn order_from(row: OrderRow, lines: Vec<OrderLine>) -> Result<Order> {
    Ok(Order {
        id: OrderId(row.id),
        user_id: row.user_id,
        status: parse_status(&row.status)?,
        policy: ShortagePolicy::from_db(&row.shortage_policy)?,
        idempotency_key: row.idempotency_key,
        lines,
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

/// Where a page of a user's orders ended: the last order's creation time and id (orders are
/// listed newest first, ties broken by id).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderCursor {
    /// The last listed order's creation time.
    pub created_at: DateTime<Utc>,
    /// The last listed order's id.
    pub id: OrderId,
}

/// One page of a user's orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPage {
    /// The orders, newest first, with their lines.
    pub orders: Vec<Order>,
    /// Where the next page starts, when there may be one.
    pub next: Option<OrderCursor>,
}

/// A user's orders, newest first, after `after` (keyset pagination on the
/// `(user_id, created_at)` index: stable while new orders arrive).
pub(crate) async fn orders_of_user(
    pool: &PgPool,
    user: &str,
    limit: u32,
    after: Option<&OrderCursor>,
) -> Result<OrderPage> {
    let limit = limit.clamp(1, 100);
    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT id, user_id, status, shortage_policy, idempotency_key, created_at, updated_at \
         FROM commerce.orders WHERE user_id = $1 \
         AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
    .bind(user)
    .bind(after.map(|c| c.created_at))
    .bind(after.map(|c| c.id.0))
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await?;
    let more = rows.len() > limit as usize;
    let rows: Vec<OrderRow> = rows.into_iter().take(limit as usize).collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let lines: Vec<(Uuid, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT order_id, product_id, quantity, allocated, unit_price FROM commerce.order_lines \
         WHERE order_id = ANY($1) ORDER BY order_id, product_id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut orders = Vec::with_capacity(rows.len());
    for row in rows {
        let lines = lines
            .iter()
            .filter(|l| l.0 == row.id)
            .map(|&(_, product, quantity, allocated, unit_price)| OrderLine {
                product: ProductId(product),
                quantity,
                allocated,
                unit_price,
            })
            .collect();
        orders.push(order_from(row, lines)?);
    }
    let next = if more {
        orders.last().map(|o| OrderCursor {
            created_at: o.created_at,
            id: o.id,
        })
    } else {
        None
    };
    Ok(OrderPage { orders, next })
}

/// Orders that have been in `status` for longer than `older_than` (since their last status
/// change), oldest first, at most `limit`.
pub(crate) async fn orders_stuck_in(
    pool: &PgPool,
    status: OrderStatus,
    older_than: std::time::Duration,
    limit: u32,
) -> Result<Vec<OrderId>> {
    let micros = i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
    // Unprepared (decision 0019): only a plan made for its status can use the index of the
    // waiting orders (a partial one), and a generic plan made while the table was young
    // (read it whole) stayed until something analyzed the table (tests/young_tables.rs).
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM commerce.orders WHERE status = $1 \
         AND updated_at < now() - make_interval(secs => $2::float8 / 1000000) \
         ORDER BY updated_at LIMIT $3",
    )
    .persistent(false)
    .bind(status.as_str())
    .bind(micros)
    .bind(i64::from(limit.clamp(1, 1000)))
    .fetch_all(pool)
    .await?;
    Ok(ids.into_iter().map(OrderId).collect())
}

/// What one order costs, for a caller that charges for it (e.g. a payment saga).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderTotal {
    /// The order.
    pub order: OrderId,
    /// Who placed it (who is charged).
    pub user_id: String,
    /// The sum of its lines' `quantity × unit_price` at the prices it was placed at, in
    /// minor units: [`Order::total`], without reading the lines.
    pub total: i64,
}

/// The totals of `orders` that exist, in ascending order id, read on `conn`.
pub(crate) async fn order_totals(
    conn: &mut PgConnection,
    orders: &[OrderId],
) -> Result<Vec<OrderTotal>> {
    if orders.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = orders.iter().map(|o| o.0).collect();
    // Summed in numeric and capped, so it saturates as `Order::total` does instead of
    // failing on a bigint overflow. Run unprepared, planned for its ids each time: a
    // prepared generic plan made while the tables were young reads them whole until
    // something analyzes them. And the lines are summed per order in a subquery, not joined:
    // before the first statistics Postgres takes an order to have a hundred lines and joins
    // by reading every line (tests/young_tables.rs). The lines of a page of orders (above)
    // need neither: their order is the primary key's, so the key wins at any size.
    let rows: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT o.id, o.user_id, \
                (SELECT LEAST(COALESCE(sum(l.quantity::numeric * l.unit_price), 0), \
                              9223372036854775807)::bigint \
                 FROM commerce.order_lines l WHERE l.order_id = o.id) \
         FROM commerce.orders o WHERE o.id = ANY($1) ORDER BY o.id",
    )
    .persistent(false)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, user_id, total)| OrderTotal {
            order: OrderId(id),
            user_id,
            total,
        })
        .collect())
}
