//! An order's lines: what was ordered per product, and how much of it is allocated.

use sqlx::PgConnection;

use crate::error::Result;
use crate::ids::{OrderId, ProductId};
use crate::inventory::Allocation;

/// Inserts the lines of a new order with what was allocated at placement.
pub(crate) async fn insert_lines(
    conn: &mut PgConnection,
    order: OrderId,
    allocations: &[Allocation],
) -> Result<()> {
    let products: Vec<i64> = allocations.iter().map(|a| a.product.0).collect();
    let quantities: Vec<i64> = allocations.iter().map(|a| a.quantity).collect();
    let allocated: Vec<i64> = allocations.iter().map(|a| a.allocated).collect();
    let prices: Vec<i64> = allocations.iter().map(|a| a.unit_price).collect();
    sqlx::query(
        "INSERT INTO commerce.order_lines (order_id, product_id, quantity, allocated, unit_price) \
         SELECT $1, * FROM UNNEST($2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])",
    )
    .bind(order.0)
    .bind(&products)
    .bind(&quantities)
    .bind(&allocated)
    .bind(&prices)
    .execute(&mut *conn)
    .await?;
    // An unknown product cannot get here: taking its stock already failed.
    Ok(())
}

/// Adds `quantity` units served from the backorder queue to one line; the caller holds the
/// product's row lock.
pub(crate) async fn allocate_line(
    conn: &mut PgConnection,
    order: OrderId,
    product: ProductId,
    quantity: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE commerce.order_lines SET allocated = allocated + $3 \
         WHERE order_id = $1 AND product_id = $2",
    )
    .bind(order.0)
    .bind(product.0)
    .bind(quantity)
    .execute(conn)
    .await?;
    Ok(())
}
