//! The order status history: one row per status change, never updated or deleted.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;
use crate::ids::OrderId;

use super::OrderStatus;

/// Records that `order` moved from `from` (`None` when it was just placed) to `to`.
pub(crate) async fn record(
    conn: &mut PgConnection,
    order: OrderId,
    from: Option<OrderStatus>,
    to: OrderStatus,
    reason: &str,
) -> Result<()> {
    record_many(conn, &[order], from, to, reason).await
}

/// Records the same change for every order of `orders`, in one statement (in their order).
pub(crate) async fn record_many(
    conn: &mut PgConnection,
    orders: &[OrderId],
    from: Option<OrderStatus>,
    to: OrderStatus,
    reason: &str,
) -> Result<()> {
    if orders.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = orders.iter().map(|o| o.0).collect();
    sqlx::query(
        "INSERT INTO commerce.order_status_history (order_id, from_status, to_status, reason) \
         SELECT id, $2, $3, $4 FROM UNNEST($1::uuid[]) AS t(id)",
    )
    .bind(&ids)
    .bind(from.map(OrderStatus::as_str))
    .bind(to.as_str())
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}
