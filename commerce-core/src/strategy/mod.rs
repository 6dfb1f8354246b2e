//! How stock is taken when orders are placed, and the kit to write a strategy of your own
//! ([`OrderWriter`], [`ReserveMode`], [`ValidatedOrder`]).
//!
//! A [`StockStrategy`] owns the transaction boundary of placing an order, so that very
//! different approaches fit behind one trait:
//! - [`ConditionalUpdate`] (this crate's default): one transaction per order, the database's
//!   row lock taken by a conditional `UPDATE` is the only lock.
//! - [`DistributedLockStrategy`] (feature `lock`): take a lock per product (sorted, all or nothing) around the
//!   transaction and read, check and write inside it ([`ReserveMode::ReadCheckWrite`]).
//! - [`Batching`] (feature `batching`): group commit per product: the concurrent orders of a
//!   busy product are written in one transaction, one stock update for the batch.

use async_trait::async_trait;

#[cfg(feature = "batching")]
mod batching;
#[cfg(feature = "lock")]
mod distributed_lock;
#[cfg(feature = "lock")]
pub use distributed_lock::DistributedLockStrategy;

#[cfg(feature = "batching")]
pub use batching::{BatchSettings, Batching};

pub use crate::order::{OrderWriter, ReserveMode, ValidatedOrder};

use crate::error::Result;
use crate::ids::ProductId;
use crate::order::PlacedOrder;

/// Decides how an order's stock is taken and in which transaction the order is written.
#[async_trait]
pub trait StockStrategy: Send + Sync + 'static {
    /// A short name for logs and benchmark output.
    fn name(&self) -> &'static str;

    /// Places `order`, writing it with `writer`. Implementations must keep the guarantee of
    /// [`OrderWriter::place`] (the stock, the order and its ledger rows commit together or
    /// not at all) and should call [`OrderWriter::screen`] first.
    async fn place(&self, writer: &OrderWriter, order: &ValidatedOrder) -> Result<PlacedOrder>;

    /// Told by [`crate::Commerce`] after a transaction of its own that raised `product`'s
    /// available stock has committed: a receipt, an upward adjustment, a cancellation that
    /// returned the order's units (called once per product of its lines, whether or not
    /// units were allocated). A strategy that answers from what it remembers of the stock
    /// (the batching strategy's sold-out fast path) must stop trusting what it noted before
    /// this call, so that the caller's next order sees the units (read your own writes).
    ///
    /// Not told: raises committed elsewhere (another instance, the caller's own transaction
    /// around a `*_in` method until the caller passes them on with
    /// [`crate::Commerce::stock_raised`], plain SQL), nor one whose commit outcome is unknown;
    /// the batching strategy learns of those from the database's notification. Must not
    /// block. Does nothing by default.
    fn stock_raised(&self, product: ProductId) {
        let _ = product;
    }
}

/// The conditional update: `UPDATE products SET available = available - q WHERE id = p AND
/// available >= q`, in one transaction per order, lines in product order.
///
/// Correct without any lock outside the database, and the baseline every other strategy is
/// measured against.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConditionalUpdate;

#[async_trait]
impl StockStrategy for ConditionalUpdate {
    fn name(&self) -> &'static str {
        "conditional-update"
    }

    async fn place(&self, writer: &OrderWriter, order: &ValidatedOrder) -> Result<PlacedOrder> {
        if let Some(replayed) = writer.screen(order).await? {
            return Ok(replayed);
        }
        writer.place(order, ReserveMode::ConditionalUpdate).await
    }
}
