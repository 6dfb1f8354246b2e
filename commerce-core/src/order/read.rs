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
        policy: ShortagePolicy::from_db(&row.shortage_policy)?,
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
