//! Taking the stock of an order's lines, inside the order transaction.

use sqlx::PgConnection;

use crate::error::{Error, Result};
use crate::ids::{OrderId, ProductId};
use crate::order::{OrderStatus, ReserveMode, ValidatedOrder};

use super::{lock_products, read_stock, StockLevel};

/// The stock taken for one line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allocation {
    pub(crate) product: ProductId,
    /// Units ordered.
    pub(crate) quantity: i64,
    /// Units taken now; the rest waits in the backorder queue.
    pub(crate) allocated: i64,
    /// The product's `available` right after this line took its units.
    pub(crate) available_after: i64,
    /// The product's unit price, read in the same statement that took the stock.
    pub(crate) unit_price: i64,
}

impl Allocation {
    /// Units still missing.
    pub(crate) fn shortfall(&self) -> i64 {
        self.quantity - self.allocated
    }

    /// The status an order with these allocations is placed in (the one rule,
    /// [`OrderStatus::on_placement`]).
    pub(crate) fn placement_status(allocations: &[Self]) -> OrderStatus {
        OrderStatus::on_placement(allocations.iter().all(|a| a.shortfall() == 0))
    }
}

/// Backorder policy: takes what there is of every line of `order`, in product order (the
/// crate's lock order), and reports the rest as shortfall for the queue. `fences` pairs
/// products with the fencing token of the distributed lock the caller holds on them
/// (recorded on the row, and refused when a newer token already wrote it). Reject-policy
/// orders use [`take_and_record_lines`].
///
/// # Errors
/// [`Error::ProductNotFound`], [`Error::StockChanged`] when a write that relied on figures
/// read earlier was refused.
pub(crate) async fn take_stock(
    conn: &mut PgConnection,
    order: &ValidatedOrder,
    mode: ReserveMode,
    fences: &[(ProductId, i64)],
) -> Result<Vec<Allocation>> {
    let products: Vec<ProductId> = order.products().collect();
    let stock = match mode {
        ReserveMode::ConditionalUpdate => lock_products(conn, &products).await?,
        ReserveMode::ReadCheckWrite => read_stock(&mut *conn, &products).await?,
    };
    take_what_is_there(conn, order, &stock, fences).await
}

fn fence_of(fences: &[(ProductId, i64)], product: ProductId) -> Option<i64> {
    fences
        .iter()
        .find(|(p, _)| *p == product)
        .map(|(_, token)| *token)
}

/// Reject policy, all of a line in one statement per line: the conditional decrement
/// (`available = available - q WHERE available >= q`: it needs no figure read before it, so
/// it cannot oversell whether or not a distributed lock is still held, and writers that do
/// not take that lock cannot make it fail), and
/// with it (only if it took the units) the order line at the price it read and the ledger
/// row. In product order (the crate's lock order), all or nothing: the caller rolls back on
/// an error.
///
/// # Errors
/// As [`take_stock`] for the reject policy.
pub(crate) async fn take_and_record_lines(
    conn: &mut PgConnection,
    order_id: OrderId,
    order: &ValidatedOrder,
    fences: &[(ProductId, i64)],
) -> Result<Vec<Allocation>> {
    let mut allocations = Vec::with_capacity(order.lines().len());
    for line in order.lines() {
        let fence = fence_of(fences, line.product);
        let after: Option<(i64, i64)> = sqlx::query_as(
            "WITH upd AS ( \
               UPDATE commerce.products SET available = available - $2, \
               lock_fence = COALESCE($3, lock_fence), updated_at = now() \
               WHERE id = $1 AND available >= $2 AND lock_fence <= COALESCE($3, lock_fence) \
               RETURNING available, price \
             ), line AS ( \
               INSERT INTO commerce.order_lines \
                 (order_id, product_id, quantity, allocated, unit_price) \
               SELECT $4, $1, $2, $2, price FROM upd \
             ), ledger AS ( \
               INSERT INTO commerce.stock_ledger \
                 (product_id, delta, kind, reference, available_after) \
               SELECT $1, -$2, 'order', $4::text, available FROM upd \
             ) \
             SELECT available, price FROM upd",
        )
        .bind(line.product.0)
        .bind(line.quantity)
        .bind(fence)
        .bind(order_id.0)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((available_after, unit_price)) = after else {
            return Err(refusal(conn, line.product, line.quantity, fence).await);
        };
        allocations.push(Allocation {
            product: line.product,
            quantity: line.quantity,
            allocated: line.quantity,
            available_after,
            unit_price,
        });
    }
    Ok(allocations)
}

/// Says why a conditional decrement wrote nothing: an unknown product, a newer fencing
/// token, or too little stock (with the figure seen under the row lock).
async fn refusal(
    conn: &mut PgConnection,
    product: ProductId,
    requested: i64,
    fence: Option<i64>,
) -> Error {
    let row: Result<Option<(i64, i64)>, sqlx::Error> = sqlx::query_as(
        "SELECT available, lock_fence FROM commerce.products WHERE id = $1 FOR UPDATE",
    )
    .bind(product.0)
    .fetch_optional(&mut *conn)
    .await;
    match row {
        Err(e) => e.into(),
        Ok(None) => Error::ProductNotFound { product },
        Ok(Some((_, newest))) if fence.is_some_and(|token| newest > token) => {
            Error::StockChanged { product }
        }
        Ok(Some((available, _))) => Error::InsufficientStock {
            product,
            requested,
            available,
        },
    }
}

/// Backorder policy: take what `stock` shows and queue the rest. The write is a
/// compare-and-set on the `available` figure read, because the split between allocated
/// and queued depends on it: with the rows locked it always holds; after an unlocked read
/// (under a distributed lock) a concurrent writer makes it fail with
/// [`Error::StockChanged`], and nothing is written.
async fn take_what_is_there(
    conn: &mut PgConnection,
    order: &ValidatedOrder,
    stock: &[StockLevel],
    fences: &[(ProductId, i64)],
) -> Result<Vec<Allocation>> {
    let mut allocations = Vec::with_capacity(stock.len());
    for (line, level) in order.lines().iter().zip(stock) {
        let allocated = line.quantity.min(level.available);
        let fence = fence_of(fences, line.product);
        let after: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE commerce.products SET available = available - $2, \
             backordered = backordered + $3, lock_fence = COALESCE($5, lock_fence), \
             updated_at = now() \
             WHERE id = $1 AND available = $4 AND lock_fence <= COALESCE($5, lock_fence) \
             RETURNING available, price",
        )
        .bind(line.product.0)
        .bind(allocated)
        .bind(line.quantity - allocated)
        .bind(level.available)
        .bind(fence)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((available_after, unit_price)) = after else {
            return Err(Error::StockChanged {
                product: line.product,
            });
        };
        allocations.push(Allocation {
            product: line.product,
            quantity: line.quantity,
            allocated,
            available_after,
            unit_price,
        });
    }
    Ok(allocations)
}
