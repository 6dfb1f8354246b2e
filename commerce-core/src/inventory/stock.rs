//! Reading and moving a product's stock.

use sqlx::{PgConnection, PgPool};

use crate::effects::{commit, Hooks, TxEffects};
use crate::error::{violated_constraint, Error, Result};
use crate::event::CoreEvent;
use crate::ids::ProductId;
use crate::order::{check_quantity, check_text, MAX_TEXT};

use super::{
    allocate_backorders, mark_created, LedgerKind, NewProduct, Product, Receipt, StockLevel,
};

/// Largest single receipt or adjustment; keeps `available` far from overflow.
pub(crate) const MAX_MOVEMENT: i64 = 1_000_000_000;

#[derive(sqlx::FromRow)]
struct StockRow {
    id: i64,
    available: i64,
    backordered: i64,
}

impl From<StockRow> for StockLevel {
    fn from(r: StockRow) -> Self {
        Self {
            product: ProductId(r.id),
            available: r.available,
            backordered: r.backordered,
        }
    }
}

pub(crate) async fn create_product(
    pool: &PgPool,
    hooks: &Hooks,
    product: NewProduct,
) -> Result<StockLevel> {
    check_name(&product.name)?;
    if product.initial_stock != 0 {
        check_quantity(Some(product.id), product.initial_stock, MAX_MOVEMENT)?;
    }
    if let Some(sku) = &product.sku {
        check_text("sku", sku, MAX_SKU)?;
    }
    check_price(product.price)?;
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO commerce.products (id, name, available, sku, price) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(product.id.0)
    .bind(&product.name)
    .bind(product.initial_stock)
    .bind(&product.sku)
    .bind(product.price)
    .execute(&mut *tx)
    .await;
    if let Err(e) = inserted {
        return Err(match violated_constraint(&e) {
            Some("products_pkey") => Error::ProductAlreadyExists {
                product: product.id,
            },
            Some("products_sku_key") => Error::SkuAlreadyExists {
                sku: product.sku.unwrap_or_default(),
            },
            _ => e.into(),
        });
    }
    let mut effects = TxEffects::default();
    if product.initial_stock > 0 {
        effects.ledger(
            product.id,
            product.initial_stock,
            LedgerKind::Inbound,
            Some("initial stock".to_owned()),
            product.initial_stock,
        );
        effects.events.push(CoreEvent::StockReceived {
            product: product.id,
            quantity: product.initial_stock,
            available: product.initial_stock,
        });
    }
    effects.flush(&mut tx, hooks).await?;
    commit(tx).await?;
    Ok(StockLevel {
        product: product.id,
        available: product.initial_stock,
        backordered: 0,
    })
}

fn check_name(name: &str) -> Result<()> {
    check_text("name", name, MAX_TEXT)
}

/// Longest stock-keeping unit.
const MAX_SKU: usize = 100;
/// Highest unit price: ten billion units of the currency in minor units, far from any
/// overflow of `quantity × price` sums.
pub(crate) const MAX_PRICE: i64 = 1_000_000_000_000;

fn check_price(price: i64) -> Result<()> {
    if (0..=MAX_PRICE).contains(&price) {
        Ok(())
    } else {
        Err(Error::InvalidInput {
            field: "price",
            reason: "must be between 0 and 1000000000000 minor units",
        })
    }
}

#[derive(sqlx::FromRow)]
struct ProductRow {
    id: i64,
    name: String,
    sku: Option<String>,
    price: i64,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<ProductRow> for Product {
    fn from(r: ProductRow) -> Self {
        Self {
            id: ProductId(r.id),
            name: r.name,
            sku: r.sku,
            price: r.price,
            created_at: r.created_at,
        }
    }
}

/// The product, or `None` when no product has this id.
pub(crate) async fn find_product(pool: &PgPool, product: ProductId) -> Result<Option<Product>> {
    let row: Option<ProductRow> = sqlx::query_as(
        "SELECT id, name, sku, price, created_at FROM commerce.products WHERE id = $1",
    )
    .bind(product.0)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Product::from))
}

pub(crate) async fn rename_product(
    pool: &PgPool,
    product: ProductId,
    name: &str,
) -> Result<Product> {
    check_name(name)?;
    let row: Option<ProductRow> = sqlx::query_as(
        "UPDATE commerce.products SET name = $2, updated_at = now() WHERE id = $1 \
         RETURNING id, name, sku, price, created_at",
    )
    .bind(product.0)
    .bind(name)
    .fetch_optional(pool)
    .await?;
    row.map(Product::from)
        .ok_or(Error::ProductNotFound { product })
}

/// The stock of `products` without locking, in ascending product id.
pub(crate) async fn read_stock(
    executor: impl sqlx::PgExecutor<'_>,
    products: &[ProductId],
) -> Result<Vec<StockLevel>> {
    let ids: Vec<i64> = products.iter().map(|p| p.0).collect();
    let rows: Vec<StockRow> = sqlx::query_as(
        "SELECT id, available, backordered FROM commerce.products WHERE id = ANY($1) ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(executor)
    .await?;
    let found: Vec<StockLevel> = rows.into_iter().map(StockLevel::from).collect();
    if let Some(missing) = products
        .iter()
        .find(|p| !found.iter().any(|s| s.product == **p))
    {
        return Err(Error::ProductNotFound { product: *missing });
    }
    Ok(found)
}

/// Locks the rows of `products` (ascending id, the one lock order of this crate) and returns
/// their stock in the same order.
pub(crate) async fn lock_products(
    conn: &mut PgConnection,
    products: &[ProductId],
) -> Result<Vec<StockLevel>> {
    let mut ids: Vec<i64> = products.iter().map(|p| p.0).collect();
    ids.sort_unstable();
    ids.dedup();
    let rows: Vec<StockRow> = sqlx::query_as(
        "SELECT id, available, backordered FROM commerce.products \
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != ids.len() {
        let missing = ids
            .iter()
            .find(|id| !rows.iter().any(|r| r.id == **id))
            .copied()
            .unwrap_or_default();
        return Err(Error::ProductNotFound {
            product: ProductId(missing),
        });
    }
    Ok(rows.into_iter().map(StockLevel::from).collect())
}

/// Writes a locked product's new stock figures.
pub(crate) async fn store_stock(conn: &mut PgConnection, stock: StockLevel) -> Result<()> {
    sqlx::query(
        "UPDATE commerce.products SET available = $2, backordered = $3, updated_at = now() WHERE id = $1",
    )
    .bind(stock.product.0)
    .bind(stock.available)
    .bind(stock.backordered)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn receive_stock(
    pool: &PgPool,
    hooks: &Hooks,
    product: ProductId,
    quantity: i64,
    reference: Option<&str>,
) -> Result<Receipt> {
    check_quantity(Some(product), quantity, MAX_MOVEMENT)?;
    if let Some(reference) = reference {
        check_text("reference", reference, MAX_TEXT)?;
    }
    let mut tx = pool.begin().await?;
    let mut stock = lock_products(&mut tx, &[product]).await?[0];
    let mut effects = TxEffects::default();
    stock.available += quantity;
    effects.ledger(
        product,
        quantity,
        LedgerKind::Inbound,
        reference.map(str::to_owned),
        stock.available,
    );
    effects.events.push(CoreEvent::StockReceived {
        product,
        quantity,
        available: stock.available,
    });
    // Arriving stock serves the oldest backorders first, in this same transaction.
    let mut allocations = allocate_backorders(&mut tx, &mut stock, &mut effects).await?;
    if let Some(CoreEvent::StockReceived { available, .. }) = effects.events.first_mut() {
        *available = stock.available;
    }
    store_stock(&mut tx, stock).await?;
    let created = effects.flush(&mut tx, hooks).await?;
    commit(tx).await?;
    mark_created(&mut allocations, &created);
    Ok(Receipt {
        product,
        received: quantity,
        allocations,
        stock,
    })
}

pub(crate) async fn adjust_stock(
    pool: &PgPool,
    hooks: &Hooks,
    product: ProductId,
    delta: i64,
    reason: &str,
) -> Result<StockLevel> {
    check_quantity(Some(product), delta.saturating_abs(), MAX_MOVEMENT)?;
    check_text("reason", reason, MAX_TEXT)?;
    let mut tx = pool.begin().await?;
    let mut stock = lock_products(&mut tx, &[product]).await?[0];
    if stock.available + delta < 0 {
        return Err(Error::InsufficientStock {
            product,
            requested: -delta,
            available: stock.available,
        });
    }
    let mut effects = TxEffects::default();
    stock.available += delta;
    effects.ledger(
        product,
        delta,
        LedgerKind::Adjust,
        Some(reason.to_owned()),
        stock.available,
    );
    effects.events.push(CoreEvent::StockAdjusted {
        product,
        delta,
        available: stock.available,
    });
    if delta > 0 {
        allocate_backorders(&mut tx, &mut stock, &mut effects).await?;
        // The event tells what is left after the backorders were served, as a receipt's does.
        if let Some(CoreEvent::StockAdjusted { available, .. }) = effects.events.first_mut() {
            *available = stock.available;
        }
    }
    store_stock(&mut tx, stock).await?;
    effects.flush(&mut tx, hooks).await?;
    commit(tx).await?;
    Ok(stock)
}
