//! Domain events and the hook that sees them inside the transaction that caused them.
//!
//! Every write of commerce-core collects the events it causes and hands them, before
//! commit, to the configured [`TransactionHook`]s on the same connection. An outbox hook
//! stores them in the same transaction, so an event exists exactly when its change does:
//! a rolled-back transaction leaves neither.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::ids::{OrderId, ProductId};
use crate::order::{OrderLine, OrderStatus, ShortagePolicy};

/// Something that happened to an order or to stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CoreEvent {
    /// An order was placed (status CREATED, or BACKORDERED for lines waiting for stock).
    OrderPlaced {
        /// The order.
        order: OrderId,
        /// Who placed it.
        user_id: String,
        /// CREATED or BACKORDERED.
        status: OrderStatus,
        /// Its shortage policy.
        policy: ShortagePolicy,
        /// Its lines with what was allocated at placement.
        lines: Vec<OrderLine>,
    },
    /// An order moved from one status to another (including the move to CANCELLED).
    OrderStatusChanged {
        /// The order.
        order: OrderId,
        /// Before.
        from: OrderStatus,
        /// After.
        to: OrderStatus,
        /// Why.
        reason: String,
    },
    /// An order was cancelled and its allocated stock returned.
    OrderCancelled {
        /// The order.
        order: OrderId,
        /// Units returned per product.
        returned: Vec<(ProductId, i64)>,
        /// Why.
        reason: String,
    },
    /// Stock arrived for a product.
    StockReceived {
        /// The product.
        product: ProductId,
        /// Units received.
        quantity: i64,
        /// Units available after backorders were served.
        available: i64,
    },
    /// Stock was corrected by hand (count, damage, shrinkage).
    StockAdjusted {
        /// The product.
        product: ProductId,
        /// Signed change.
        delta: i64,
        /// Units available after.
        available: i64,
    },
    /// Stock was allocated to a backordered order line.
    BackorderAllocated {
        /// The order.
        order: OrderId,
        /// The product.
        product: ProductId,
        /// Units allocated now.
        quantity: i64,
        /// Units still outstanding on the line.
        outstanding: i64,
    },
}

impl CoreEvent {
    /// A stable, dotted event type name, e.g. `order.placed`.
    #[must_use]
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::OrderPlaced { .. } => "order.placed",
            Self::OrderStatusChanged { .. } => "order.status_changed",
            Self::OrderCancelled { .. } => "order.cancelled",
            Self::StockReceived { .. } => "stock.received",
            Self::StockAdjusted { .. } => "stock.adjusted",
            Self::BackorderAllocated { .. } => "order.backorder_allocated",
        }
    }

    /// The kind of aggregate the event belongs to: `"order"` or `"product"`.
    #[must_use]
    pub fn aggregate_type(&self) -> &'static str {
        match self {
            Self::StockReceived { .. } | Self::StockAdjusted { .. } => "product",
            _ => "order",
        }
    }

    /// The id of the aggregate (order id or product id) as text; events of one aggregate
    /// must keep their order downstream.
    #[must_use]
    pub fn aggregate_id(&self) -> String {
        match self {
            Self::OrderPlaced { order, .. }
            | Self::OrderStatusChanged { order, .. }
            | Self::OrderCancelled { order, .. }
            | Self::BackorderAllocated { order, .. } => order.to_string(),
            Self::StockReceived { product, .. } | Self::StockAdjusted { product, .. } => {
                product.to_string()
            }
        }
    }
}

/// Runs inside every commerce-core write transaction, just before commit.
///
/// `conn` is the transaction's connection: whatever the hook writes commits or rolls back
/// with the business change. An error from the hook rolls the whole transaction back and
/// reaches the caller as [`crate::Error::Hook`].
#[async_trait]
pub trait TransactionHook: Send + Sync + 'static {
    /// Called once per transaction with the events it caused, in the order they happened.
    async fn before_commit(
        &self,
        conn: &mut PgConnection,
        events: &[CoreEvent],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}
