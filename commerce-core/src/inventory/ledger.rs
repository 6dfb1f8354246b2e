//! The stock ledger: one row for every movement of stock, never updated or deleted.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use crate::error::Result;
use crate::ids::ProductId;

/// Why stock moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// Stock arrived (restock, initial stock).
    Inbound,
    /// Stock was taken by an order (at placement, or later for a backordered line).
    Order,
    /// Stock came back from a cancelled order.
    Cancel,
    /// A manual correction (count, damage, shrinkage).
    Adjust,
}

impl LedgerKind {
    /// The kind as stored.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Order => "order",
            Self::Cancel => "cancel",
            Self::Adjust => "adjust",
        }
    }

    /// The stored kind; anything else is a corrupt row, not a default.
    fn from_db(s: &str) -> Result<Self> {
        match s {
            "inbound" => Ok(Self::Inbound),
            "order" => Ok(Self::Order),
            "cancel" => Ok(Self::Cancel),
            "adjust" => Ok(Self::Adjust),
            other => Err(crate::Error::Database(sqlx::Error::Decode(
                format!("unknown ledger kind {other:?}").into(),
            ))),
        }
    }
}

impl fmt::Display for LedgerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A movement to be appended to the ledger by [`append`].
#[derive(Debug, Clone)]
pub(crate) struct Movement {
    pub(crate) product: ProductId,
    pub(crate) delta: i64,
    pub(crate) kind: LedgerKind,
    pub(crate) reference: Option<String>,
    pub(crate) available_after: i64,
}

/// Appends `movements` in one statement, in their order: the ledger ids follow the order
/// of the movements (UNNEST keeps array order). The caller holds the products' row locks,
/// so each product's ledger order is its commit order.
pub(crate) async fn append(conn: &mut PgConnection, movements: Vec<Movement>) -> Result<()> {
    if movements.is_empty() {
        return Ok(());
    }
    let n = movements.len();
    let (mut products, mut deltas, mut kinds, mut references, mut afters) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for movement in movements {
        products.push(movement.product.0);
        deltas.push(movement.delta);
        kinds.push(movement.kind.as_str());
        references.push(movement.reference);
        afters.push(movement.available_after);
    }
    sqlx::query(
        "INSERT INTO commerce.stock_ledger (product_id, delta, kind, reference, available_after) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[])",
    )
    .bind(products)
    .bind(deltas)
    .bind(kinds)
    .bind(references)
    .bind(afters)
    .execute(conn)
    .await?;
    Ok(())
}

/// One movement of stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLedgerEntry {
    /// Position in the ledger (ascending in time).
    pub id: i64,
    /// The product.
    pub product: ProductId,
    /// Signed change of `available`.
    pub delta: i64,
    /// Why.
    pub kind: LedgerKind,
    /// What caused it: the order id for `order` and `cancel`, the caller's reference otherwise.
    pub reference: Option<String>,
    /// `available` right after this movement.
    pub available_after: i64,
    /// When.
    pub at: DateTime<Utc>,
}

/// One page of a product's ledger, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerPage {
    /// The entries, newest first.
    pub entries: Vec<StockLedgerEntry>,
    /// Pass as `before` to get the next (older) page; `None` when this was the last.
    pub next_before: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct LedgerRow {
    id: i64,
    product_id: i64,
    delta: i64,
    kind: String,
    reference: Option<String>,
    available_after: i64,
    at: DateTime<Utc>,
}

/// Lists entries of `product` with id below `before` (all when `None`), newest first.
pub(crate) async fn list_ledger(
    pool: &PgPool,
    product: ProductId,
    before: Option<i64>,
    limit: u32,
) -> Result<LedgerPage> {
    let limit = limit.clamp(1, 1000);
    // Keyset pagination: stable while new rows arrive, and cheap on the (product, id) index.
    let rows: Vec<LedgerRow> = sqlx::query_as(
        "SELECT id, product_id, delta, kind, reference, available_after, at \
         FROM commerce.stock_ledger WHERE product_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(product.0)
    .bind(before.unwrap_or(i64::MAX))
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await?;
    let more = rows.len() > limit as usize;
    let entries: Vec<StockLedgerEntry> = rows
        .into_iter()
        .take(limit as usize)
        .map(|r| {
            Ok(StockLedgerEntry {
                id: r.id,
                product: ProductId(r.product_id),
                delta: r.delta,
                kind: LedgerKind::from_db(&r.kind)?,
                reference: r.reference,
                available_after: r.available_after,
                at: r.at,
            })
        })
        .collect::<Result<_>>()?;
    let next_before = if more {
        entries.last().map(|e| e.id)
    } else {
        None
    };
    Ok(LedgerPage {
        entries,
        next_before,
    })
}
