//! The store service's requests and answers: the catalogue, stock, inbound stock and the stock
//! ledger.
//!
//! Text fields are limited in characters (what JSON Schema's `maxLength` counts), chosen so
//! that they also fit commerce-core's limits in bytes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest stock-keeping unit, in characters (printable ASCII, so also bytes).
pub const MAX_SKU_LEN: usize = 100;
/// Longest product name or ledger note, in characters (at most 4 bytes each, within
/// commerce-core's 500 bytes).
pub const MAX_TEXT_CHARS: usize = 120;
/// Highest unit price, in minor units (commerce-core's limit).
pub const MAX_PRICE: i64 = 1_000_000_000_000;
/// Most units one stock movement (initial stock, a receipt) may move (commerce-core's limit).
pub const MAX_MOVEMENT: i64 = 1_000_000_000;

/// A product to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// Stock-keeping unit, unique: 1 to 100 printable ASCII characters, not all spaces.
    #[cfg_attr(
        feature = "openapi",
        schema(example = "KET-01", max_length = 100, pattern = r"^[ -~]*[!-~][ -~]*$")
    )]
    pub sku: String,
    /// Display name: 1 to 120 characters, not all white space, no control characters.
    #[cfg_attr(
        feature = "openapi",
        schema(
            example = "Kettle",
            max_length = 120,
            pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
        )
    )]
    pub name: String,
    /// Unit price in minor units (cents), 0 to 1000000000000.
    #[cfg_attr(
        feature = "openapi",
        schema(example = 3999, minimum = 0, maximum = 1_000_000_000_000_i64)
    )]
    #[serde(deserialize_with = "crate::int::i64")]
    pub price: i64,
    /// Units in stock at creation, 0 to 1000000000 (default 0).
    #[serde(default, deserialize_with = "crate::int::i64")]
    #[cfg_attr(
        feature = "openapi",
        schema(example = 100, minimum = 0, maximum = 1_000_000_000)
    )]
    pub initial_stock: i64,
}

/// A product's new name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RenameProduct {
    /// Display name: 1 to 120 characters, not all white space, no control characters.
    #[cfg_attr(
        feature = "openapi",
        schema(
            example = "Kettle, 1.7 l",
            max_length = 120,
            pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
        )
    )]
    pub name: String,
}

/// A product with its current stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProductView {
    /// Its id.
    pub id: i64,
    /// Stock-keeping unit (`null` for products created outside the API without one).
    pub sku: Option<String>,
    /// Display name.
    pub name: String,
    /// Unit price in minor units.
    pub price: i64,
    /// Units free to be ordered now.
    pub available: i64,
    /// Units ordered and waiting for stock.
    pub backordered: i64,
}

/// A product's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StockView {
    /// The product.
    pub product_id: i64,
    /// Units free to be ordered now.
    pub available: i64,
    /// Units ordered and waiting for stock.
    pub backordered: i64,
}

/// Arriving stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// Units received, 1 to 1000000000.
    #[serde(deserialize_with = "crate::int::i64")]
    #[cfg_attr(
        feature = "openapi",
        schema(example = 50, minimum = 1, maximum = 1_000_000_000)
    )]
    pub quantity: i64,
    /// A reference kept in the ledger (delivery note, purchase order): 1 to 120 characters,
    /// not all white space, no control characters; absent or `null` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            example = "PO-1234",
            max_length = 120,
            pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
        )
    )]
    pub note: Option<String>,
}

/// What a receipt did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InboundView {
    /// The product.
    pub product_id: i64,
    /// Units free after the receipt (and after serving backorders).
    pub available: i64,
    /// Units still waiting for stock.
    pub backordered: i64,
    /// Backordered orders this receipt gave stock to, oldest first.
    pub allocated_order_ids: Vec<Uuid>,
}

/// Paging of the ledger (`GET /api/v1/products/{id}/movements` query).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct MovementsQuery {
    /// Entries per page, 1 to 1000 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page: entries older than this ledger position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<i64>,
}

/// The kind of a stock movement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MovementKind {
    /// Stock arrived (a receipt, the initial stock).
    Inbound,
    /// Stock taken by an order.
    Order,
    /// Stock returned by a cancelled order.
    Cancel,
    /// A manual correction.
    Adjust,
}

/// One stock movement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MovementView {
    /// Its position in the ledger.
    pub id: i64,
    /// What moved the stock.
    pub kind: MovementKind,
    /// Units in (positive) or out (negative).
    pub delta: i64,
    /// `available` right after the movement.
    pub available_after: i64,
    /// The order it belongs to (`order` and `cancel` movements), else `null`.
    pub order_id: Option<String>,
    /// The reference or reason (other movements), else `null`.
    pub note: Option<String>,
    /// When it happened.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A page of the ledger, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MovementsPage {
    /// The movements.
    pub items: Vec<MovementView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<i64>,
}
