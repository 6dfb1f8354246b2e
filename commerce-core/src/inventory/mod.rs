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
pub(crate) use take::{take_and_record_lines, take_stock, Allocation};

/// A product to create.
///
/// ```
/// use commerce_core::{NewProduct, ProductId};
/// let kettle = NewProduct::new(ProductId(7), "Kettle").sku("KET-7").price(3_999).stock(10);
/// assert_eq!(kettle.initial_stock, 10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewProduct {
    /// The application's id for it.
    pub id: ProductId,
    /// A display name.
    pub name: String,
    /// Units in stock at creation (recorded in the ledger as `inbound`).
    pub initial_stock: i64,
    /// Stock-keeping unit, unique among products when given.
    #[serde(default)]
    pub sku: Option<String>,
    /// Unit price in minor units (e.g. cents); order lines keep the price they were placed at.
    #[serde(default)]
    pub price: i64,
}

impl NewProduct {
    /// A product without stock, SKU or price yet.
    #[must_use]
    pub fn new(id: ProductId, name: impl Into<String>) -> Self {
        Self {
            id,
            name: name.into(),
            initial_stock: 0,
            sku: None,
            price: 0,
        }
    }

    /// Sets the units in stock at creation.
    #[must_use]
    pub fn stock(mut self, units: i64) -> Self {
        self.initial_stock = units;
        self
    }

    /// Sets the stock-keeping unit.
    #[must_use]
    pub fn sku(mut self, sku: impl Into<String>) -> Self {
        self.sku = Some(sku.into());
        self
    }

    /// Sets the unit price in minor units.
    #[must_use]
    pub fn price(mut self, price: i64) -> Self {
        self.price = price;
        self
    }
}

/// A product's catalogue facts (not its stock, which changes with every order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Its id.
    pub id: ProductId,
    /// Its display name.
    pub name: String,
    /// Its stock-keeping unit, if it has one.
    pub sku: Option<String>,
    /// Its unit price in minor units.
    pub price: i64,
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
