//! The order service's requests and answers: placing, reading, listing and moving orders, and
//! the status events of an order's stream.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most lines in one order (commerce-core's default `OrderLimits::max_lines`).
pub const MAX_LINES: usize = 100;
/// Most units on one line (commerce-core's default `OrderLimits::max_quantity`).
pub const MAX_QUANTITY: i64 = 10_000;
/// Longest `Idempotency-Key`, in bytes (commerce-core's default).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// Where an order stands. The API spells it in capitals (`"CREATED"`). Ordered as an order
/// moves through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Placed under the backorder policy; waits for stock of some line.
    Backordered,
    /// Has all its stock; its payment is under way.
    Created,
    /// Paid; being prepared.
    Processing,
    /// Handed to the carrier.
    Shipped,
    /// Delivered (final).
    Delivered,
    /// Cancelled by its customer, an admin, a failed payment or the saga's timeout (final).
    Cancelled,
}

impl OrderStatus {
    /// The status as the API spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backordered => "BACKORDERED",
            Self::Created => "CREATED",
            Self::Processing => "PROCESSING",
            Self::Shipped => "SHIPPED",
            Self::Delivered => "DELIVERED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Whether the order stays in this status for good (its status stream ends there).
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Cancelled)
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do when a line asks for more than is in stock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Shortage {
    /// Refuse the whole order (409 `insufficient_stock`).
    #[default]
    Reject,
    /// Take what is there, queue the rest (202, status `BACKORDERED`).
    Backorder,
}

/// One requested line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OrderItem {
    /// The product.
    #[serde(deserialize_with = "crate::int::i64")]
    pub product_id: i64,
    /// Units, 1 to 10000.
    #[serde(deserialize_with = "crate::int::i64")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000))]
    pub quantity: i64,
}

/// An order to place: 1 to 100 lines, each product at most once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// The lines, 1 to 100; each `product_id` at most once (a repeated product is refused
    /// with 422 `validation_failed`).
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 100))]
    pub items: Vec<OrderItem>,
    /// What to do when stock is short; default `reject`.
    #[serde(default)]
    pub on_shortage: Shortage,
}

impl PlaceOrder {
    /// An order of one line, `quantity` units of `product_id`, refused when stock is short.
    #[must_use]
    pub fn one(product_id: i64, quantity: i64) -> Self {
        Self {
            items: vec![OrderItem {
                product_id,
                quantity,
            }],
            on_shortage: Shortage::Reject,
        }
    }

    /// Adds a line.
    #[must_use]
    pub fn line(mut self, product_id: i64, quantity: i64) -> Self {
        self.items.push(OrderItem {
            product_id,
            quantity,
        });
        self
    }

    /// Sets what to do when stock is short.
    #[must_use]
    pub fn on_shortage(mut self, policy: Shortage) -> Self {
        self.on_shortage = policy;
        self
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ItemView {
    /// The product.
    pub product_id: i64,
    /// Units ordered.
    pub quantity: i64,
    /// Unit price when the order was placed, minor units.
    pub unit_price: i64,
}

/// One status change of an order (also the data of each event of its status stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryView {
    /// The status entered.
    pub status: OrderStatus,
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Why (e.g. `payment approved`).
    pub reason: String,
}

/// An order as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderView {
    /// Its id.
    pub id: Uuid,
    /// Who placed it.
    pub user_id: String,
    /// Where it stands.
    pub status: OrderStatus,
    /// Its lines.
    pub items: Vec<ItemView>,
    /// Sum of quantity × unit price, minor units.
    pub total: i64,
    /// Currency of the prices (ISO 4217, e.g. `EUR`).
    pub currency: String,
    /// Its status changes, oldest first (empty in lists).
    pub history: Vec<HistoryView>,
    /// When it was placed.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The pattern of an order-list cursor: microseconds since the Unix epoch, a dot, and an order
/// id as 32 lowercase hex digits.
pub const ORDER_CURSOR_PATTERN: &str = r"^[0-9]{1,16}\.[0-9a-f]{32}$";

/// Paging of the caller's orders (`GET /api/v1/orders` query).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct ListQuery {
    /// Orders per page, 1 to 100 (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 100))]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page, as given (`<micros>.<32 hex digits>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(pattern = r"^[0-9]{1,16}\.[0-9a-f]{32}$"))]
    pub cursor: Option<String>,
}

/// A page of the caller's orders, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderList {
    /// The orders (without history).
    pub items: Vec<OrderView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}
