//! The backorder queue: FIFO per product, served whenever stock comes in or back.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::effects::TxEffects;
use crate::error::Result;
use crate::event::CoreEvent;
use crate::ids::{OrderId, ProductId};
use crate::order;

use super::{Allocation, Backorder, BackorderAllocation, LedgerKind, StockLevel};

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
/// meanwhile. An order whose line is fully served is noted in `effects`, which checks at
/// the end of the transaction whether that completed the order (`order_created` of the
/// returned allocations is set then).
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
            order::allocate_line(conn, order, product, take).await?;
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
            if outstanding == 0 {
                effects.line_completed(order);
            }
            allocations.push(BackorderAllocation {
                order,
                quantity: take,
                outstanding,
                order_created: false,
            });
        }
    }
    Ok(allocations)
}

/// Queues the short lines of a new order; runs while their product rows are locked, so
/// queue ids follow commit order per product.
pub(crate) async fn enqueue_backorders(
    conn: &mut PgConnection,
    order: OrderId,
    allocations: &[Allocation],
) -> Result<()> {
    let short: Vec<&Allocation> = allocations.iter().filter(|a| a.shortfall() > 0).collect();
    if short.is_empty() {
        return Ok(());
    }
    let products: Vec<i64> = short.iter().map(|a| a.product.0).collect();
    let outstanding: Vec<i64> = short.iter().map(|a| a.shortfall()).collect();
    sqlx::query(
        "INSERT INTO commerce.backorders (order_id, product_id, outstanding) \
         SELECT $1, * FROM UNNEST($2::bigint[], $3::bigint[])",
    )
    .bind(order.0)
    .bind(&products)
    .bind(&outstanding)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Takes a cancelled order out of every queue it waits in; the caller holds the rows of
/// all its products.
pub(crate) async fn leave_queues(conn: &mut PgConnection, order: OrderId) -> Result<()> {
    sqlx::query("DELETE FROM commerce.backorders WHERE order_id = $1")
        .bind(order.0)
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks the allocations whose order the transaction moved to CREATED.
pub(crate) fn mark_created(allocations: &mut [BackorderAllocation], created: &BTreeSet<OrderId>) {
    for allocation in allocations {
        allocation.order_created = created.contains(&allocation.order);
    }
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
