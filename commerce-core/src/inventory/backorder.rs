//! The backorder queue: FIFO per product, served whenever stock comes in or back.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::Result;
use crate::event::CoreEvent;
use crate::ids::{OrderId, ProductId};
use crate::order::OrderStatus;
use crate::tx::TxEffects;

use super::{Backorder, BackorderAllocation, LedgerKind, StockLevel};

/// Rows fetched per round while serving a long queue.
const QUEUE_PAGE: i64 = 200;

#[derive(sqlx::FromRow)]
struct QueueRow {
    id: i64,
    order_id: Uuid,
    outstanding: i64,
}

/// Gives `stock.available` to the product's backorders, oldest first, until either runs out.
///
/// The caller holds the product row lock, so no other transaction serves or joins this queue
/// meanwhile. Order rows are locked after the product row, the crate's one lock order.
pub(crate) async fn allocate_backorders(
    conn: &mut PgConnection,
    stock: &mut StockLevel,
    effects: &mut TxEffects,
) -> Result<Vec<BackorderAllocation>> {
    let product = stock.product;
    let mut allocations = Vec::new();
    while stock.available > 0 && stock.backordered > 0 {
        let queue: Vec<QueueRow> = sqlx::query_as(
            "SELECT id, order_id, outstanding FROM commerce.backorders \
             WHERE product_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(product.0)
        .bind(QUEUE_PAGE)
        .fetch_all(&mut *conn)
        .await?;
        if queue.is_empty() {
            break;
        }
        for row in queue {
            if stock.available == 0 {
                break;
            }
            let take = stock.available.min(row.outstanding);
            let outstanding = row.outstanding - take;
            let order = OrderId(row.order_id);
            stock.available -= take;
            stock.backordered -= take;
            if outstanding == 0 {
                sqlx::query("DELETE FROM commerce.backorders WHERE id = $1")
                    .bind(row.id)
                    .execute(&mut *conn)
                    .await?;
            } else {
                sqlx::query("UPDATE commerce.backorders SET outstanding = $2 WHERE id = $1")
                    .bind(row.id)
                    .bind(outstanding)
                    .execute(&mut *conn)
                    .await?;
            }
            sqlx::query(
                "UPDATE commerce.order_lines SET allocated = allocated + $3 \
                 WHERE order_id = $1 AND product_id = $2",
            )
            .bind(order.0)
            .bind(product.0)
            .bind(take)
            .execute(&mut *conn)
            .await?;
            effects.ledger(
                product,
                -take,
                LedgerKind::Order,
                Some(order.to_string()),
                stock.available,
            );
            effects.events.push(CoreEvent::BackorderAllocated {
                order,
                product,
                quantity: take,
                outstanding,
            });
            let order_created =
                outstanding == 0 && promote_if_complete(conn, order, effects).await?;
            allocations.push(BackorderAllocation {
                order,
                quantity: take,
                outstanding,
                order_created,
            });
        }
    }
    Ok(allocations)
}

/// Moves a BACKORDERED order with no outstanding lines left to CREATED.
async fn promote_if_complete(
    conn: &mut PgConnection,
    order: OrderId,
    effects: &mut TxEffects,
) -> Result<bool> {
    let promoted = sqlx::query(
        "UPDATE commerce.orders SET status = 'CREATED', updated_at = now() \
         WHERE id = $1 AND status = 'BACKORDERED' \
         AND NOT EXISTS (SELECT 1 FROM commerce.backorders WHERE order_id = $1)",
    )
    .bind(order.0)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if promoted {
        let reason = "stock allocated";
        sqlx::query(
            "INSERT INTO commerce.order_status_history (order_id, from_status, to_status, reason) \
             VALUES ($1, 'BACKORDERED', 'CREATED', $2)",
        )
        .bind(order.0)
        .bind(reason)
        .execute(&mut *conn)
        .await?;
        effects.events.push(CoreEvent::OrderStatusChanged {
            order,
            from: OrderStatus::Backordered,
            to: OrderStatus::Created,
            reason: reason.to_owned(),
        });
    }
    Ok(promoted)
}

#[derive(sqlx::FromRow)]
struct BackorderRow {
    id: i64,
    order_id: Uuid,
    outstanding: i64,
    created_at: DateTime<Utc>,
}

pub(crate) async fn list_backorders(pool: &PgPool, product: ProductId) -> Result<Vec<Backorder>> {
    let rows: Vec<BackorderRow> = sqlx::query_as(
        "SELECT id, order_id, outstanding, created_at FROM commerce.backorders \
         WHERE product_id = $1 ORDER BY id",
    )
    .bind(product.0)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Backorder {
            position: r.id,
            order: OrderId(r.order_id),
            outstanding: r.outstanding,
            queued_at: r.created_at,
        })
        .collect())
}
