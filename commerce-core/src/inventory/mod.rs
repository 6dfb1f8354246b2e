//! Products, their stock, and every movement of it.

mod backorder;
mod ledger;
mod stock;
mod take;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{OrderId, ProductId};

pub(crate) use backorder::{
    allocate_backorders, enqueue_backorders, leave_queues, list_backorders, mark_created,
};
pub(crate) use ledger::{append as append_ledger, list_ledger, Movement};
pub use ledger::{LedgerKind, LedgerPage, StockLedgerEntry};
pub(crate) use stock::{
    adjust_stock, create_product, find_product, lock_products, read_stock, receive_stock,
    rename_product, store_stock,
};
pub(crate) use take::{take_stock, Allocation};

/// A product to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewProduct {
    /// The application's id for it.
    pub id: ProductId,
    /// A display name.
    pub name: String,
    /// Units in stock at creation (recorded in the ledger as `inbound`).
    pub initial_stock: i64,
}

/// A product's catalogue facts (not its stock, which changes with every order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Its id.
    pub id: ProductId,
    /// Its display name.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A product's stock at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    /// The product.
    pub product: ProductId,
    /// Units free to be ordered.
    pub available: i64,
    /// Units ordered but waiting for stock (the sum of the backorder queue).
    pub backordered: i64,
}

/// What a receipt of stock did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The product.
    pub product: ProductId,
    /// Units received.
    pub received: i64,
    /// Units handed to backordered orders, oldest first.
    pub allocations: Vec<BackorderAllocation>,
    /// Stock after the receipt.
    pub stock: StockLevel,
}

/// Units of arriving (or returned) stock given to one backordered order line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackorderAllocation {
    /// The order served.
    pub order: OrderId,
    /// Units allocated now.
    pub quantity: i64,
    /// Units the line still waits for.
    pub outstanding: i64,
    /// Whether the order had every line covered and moved to CREATED.
    pub order_created: bool,
}

/// One entry of a product's backorder queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backorder {
    /// Position in the product's queue (lower is served first).
    pub position: i64,
    /// The waiting order.
    pub order: OrderId,
    /// Units it still waits for.
    pub outstanding: i64,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
}
