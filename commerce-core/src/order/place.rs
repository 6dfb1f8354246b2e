//! Placing an order: stock, order, lines, history, ledger and events in one transaction.

use sqlx::{PgConnection, PgPool};

use crate::error::{violated_constraint, Error, Result};
use crate::event::CoreEvent;
use crate::ids::{OrderId, ProductId};
use crate::inventory::{lock_products, read_stock, LedgerKind, StockLevel};
use crate::tx::{Hooks, TxEffects};

use super::transition::load_order;
use super::{Order, OrderLine, OrderStatus, ShortagePolicy, ValidatedOrder};

/// How the stock of the lines is taken inside the order transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveMode {
    /// `UPDATE ... SET available = available - q WHERE id = p AND available >= q`, one line
    /// after another in product order: the row lock is the only lock, held from the update to
    /// commit. (Backorder-policy orders lock the rows with `SELECT ... FOR UPDATE` first, as
    /// they need the figure before they write.)
    ConditionalUpdate,
    /// Read, check in Rust, write back with a compare-and-set on the value read. For callers
    /// that already serialise access to the products (e.g. a distributed lock): no row lock
    /// is taken while reading, and the compare-and-set refuses the write with
    /// [`Error::Strategy`] if the value changed meanwhile, so a lost lock cannot oversell.
    ReadCheckWrite,
}

/// The outcome of [`crate::Commerce::place_order`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedOrder {
    /// The order (the first one, on a replay).
    pub order: Order,
    /// `true` when the request repeated an idempotency key and no new order was made.
    pub replayed: bool,
}

/// A stock taken for one line.
#[derive(Debug, Clone, Copy)]
struct Allocation {
    product: ProductId,
    quantity: i64,
    allocated: i64,
    available_after: i64,
}

/// The building blocks a [`crate::StockStrategy`] uses to write orders.
///
/// Cheap to clone. Every method writes the order, its lines, its first history row, the
/// ledger rows, the backorder queue entries and the hook's rows in one transaction.
#[derive(Debug, Clone)]
pub struct OrderWriter {
    pool: PgPool,
    hooks: Hooks,
}

/// The lost race of two requests with one idempotency key.
struct KeyTaken;

impl OrderWriter {
    pub(crate) fn new(pool: PgPool, hooks: Hooks) -> Self {
        Self { pool, hooks }
    }

    /// The pool the orders are written to.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The cheap checks to run before taking any lock or opening a transaction: returns the
    /// first order when the request repeats an idempotency key, and turns a reject-policy
    /// order away when an unlocked read already shows a short line.
    ///
    /// The read is only a shortcut that keeps most doomed orders of a sold-out product from
    /// queueing for its row lock (what makes a sold-out flash sale cheap); the check that
    /// counts is the one inside the transaction.
    ///
    /// # Errors
    /// [`Error::InsufficientStock`], [`Error::ProductNotFound`], [`Error::DuplicateRequest`],
    /// database errors.
    pub async fn screen(&self, order: &ValidatedOrder) -> Result<Option<PlacedOrder>> {
        if let Some(existing) = self.replay(order).await? {
            return Ok(Some(existing));
        }
        self.check_stock(order).await?;
        Ok(None)
    }

    /// The stock half of [`OrderWriter::screen`]: for a reject-policy order, one unlocked read
    /// of its products' stock, failing on the first short line. Under a lock that serialises
    /// every writer of these products the read is exact, so a lock-based strategy calls it
    /// again once it holds the lock and spares doomed orders the transaction.
    ///
    /// # Errors
    /// [`Error::InsufficientStock`], [`Error::ProductNotFound`], database errors.
    pub async fn check_stock(&self, order: &ValidatedOrder) -> Result<()> {
        if order.policy() == ShortagePolicy::Reject {
            let products: Vec<ProductId> = order.products().collect();
            let stock = read_stock(&self.pool, &products).await?;
            short_line(order, &stock)?;
        }
        Ok(())
    }

    /// Places `order` in a transaction of its own, taking stock with `mode`. A racing request
    /// with the same idempotency key that committed first is returned instead.
    ///
    /// # Errors
    /// [`Error::InsufficientStock`] (reject policy), [`Error::ProductNotFound`],
    /// [`Error::DuplicateRequest`], database and hook errors. On any error nothing is written.
    pub async fn place(&self, order: &ValidatedOrder, mode: ReserveMode) -> Result<PlacedOrder> {
        self.place_with_fences(order, mode, &[]).await
    }

    /// [`OrderWriter::place`] with [`ReserveMode::ReadCheckWrite`] for a caller holding a
    /// distributed lock per product: `fences` pairs each product with the lock's fencing token.
    /// Each stock write records its token on the product row and is refused, with
    /// [`Error::Strategy`] and nothing written, when a newer token already wrote it: a holder
    /// whose lease expired during a pause cannot write after its successor.
    ///
    /// # Errors
    /// As [`OrderWriter::place`].
    pub async fn place_fenced(
        &self,
        order: &ValidatedOrder,
        fences: &[(ProductId, i64)],
    ) -> Result<PlacedOrder> {
        self.place_with_fences(order, ReserveMode::ReadCheckWrite, fences)
            .await
    }

    async fn place_with_fences(
        &self,
        order: &ValidatedOrder,
        mode: ReserveMode,
        fences: &[(ProductId, i64)],
    ) -> Result<PlacedOrder> {
        let mut tx = self.pool.begin().await?;
        match self.write(&mut tx, order, mode, fences).await {
            Ok(Ok(placed)) => {
                tx.commit().await?;
                Ok(placed)
            }
            Ok(Err(KeyTaken)) => {
                drop(tx);
                self.replay(order).await?.ok_or_else(|| {
                    // The other request rolled back after we saw its key; ours is gone too.
                    Error::Conflict(sqlx::Error::Protocol(
                        "idempotency key released by a rolled-back request".into(),
                    ))
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The first order placed with `order`'s idempotency key, if any.
    async fn replay(&self, order: &ValidatedOrder) -> Result<Option<PlacedOrder>> {
        let Some(key) = order.idempotency_key() else {
            return Ok(None);
        };
        let id: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM commerce.orders WHERE user_id = $1 AND idempotency_key = $2",
        )
        .bind(order.user_id())
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(id) = id else {
            return Ok(None);
        };
        let mut conn = self.pool.acquire().await?;
        let existing = load_order(&mut conn, OrderId(id)).await?;
        let same_request = existing.policy == order.policy()
            && existing.lines.len() == order.lines().len()
            && existing
                .lines
                .iter()
                .zip(order.lines())
                .all(|(a, b)| a.product == b.product && a.quantity == b.quantity);
        if !same_request {
            return Err(Error::DuplicateRequest {
                user: order.user_id().to_owned(),
                key: key.to_owned(),
                existing: existing.id,
            });
        }
        Ok(Some(PlacedOrder {
            order: existing,
            replayed: true,
        }))
    }

    /// Writes `order` inside the caller's transaction.
    async fn write(
        &self,
        conn: &mut PgConnection,
        order: &ValidatedOrder,
        mode: ReserveMode,
        fences: &[(ProductId, i64)],
    ) -> Result<Result<PlacedOrder, KeyTaken>> {
        let id = OrderId::new();
        let mut effects = TxEffects::default();
        let allocations = if order.policy() == ShortagePolicy::Reject {
            // The order's own rows go first and the contended stock update last, so the hot
            // product row stays locked for as short a time as possible.
            if insert_order(conn, id, order, OrderStatus::Created)
                .await?
                .is_err()
            {
                return Ok(Err(KeyTaken));
            }
            let allocations = reserve(conn, order, mode, fences).await?;
            insert_lines(conn, id, &allocations).await?;
            allocations
        } else {
            let allocations = reserve(conn, order, mode, fences).await?;
            let status = status_for(&allocations);
            if insert_order(conn, id, order, status).await?.is_err() {
                return Ok(Err(KeyTaken));
            }
            insert_lines(conn, id, &allocations).await?;
            queue_backorders(conn, id, &allocations).await?;
            allocations
        };
        let status = status_for(&allocations);
        sqlx::query(
            "INSERT INTO commerce.order_status_history (order_id, from_status, to_status, reason) \
             VALUES ($1, NULL, $2, 'placed')",
        )
        .bind(id.0)
        .bind(status.as_str())
        .execute(&mut *conn)
        .await?;
        for a in allocations.iter().filter(|a| a.allocated > 0) {
            effects.ledger(
                a.product,
                -a.allocated,
                LedgerKind::Order,
                Some(id.to_string()),
                a.available_after,
            );
        }
        let lines: Vec<OrderLine> = allocations
            .iter()
            .map(|a| OrderLine {
                product: a.product,
                quantity: a.quantity,
                allocated: a.allocated,
            })
            .collect();
        effects.events.push(CoreEvent::OrderPlaced {
            order: id,
            user_id: order.user_id().to_owned(),
            status,
            policy: order.policy(),
            lines: lines.clone(),
        });
        effects.flush(conn, &self.hooks).await?;
        let now = chrono::Utc::now();
        Ok(Ok(PlacedOrder {
            order: Order {
                id,
                user_id: order.user_id().to_owned(),
                status,
                policy: order.policy(),
                idempotency_key: order.idempotency_key().map(str::to_owned),
                lines,
                created_at: now,
                updated_at: now,
            },
            replayed: false,
        }))
    }
}

fn status_for(allocations: &[Allocation]) -> OrderStatus {
    if allocations.iter().all(|a| a.allocated == a.quantity) {
        OrderStatus::Created
    } else {
        OrderStatus::Backordered
    }
}

/// The first line (in product order) that `stock` cannot cover.
fn short_line(order: &ValidatedOrder, stock: &[StockLevel]) -> Result<()> {
    for (line, level) in order.lines().iter().zip(stock) {
        if level.available < line.quantity {
            return Err(Error::InsufficientStock {
                product: line.product,
                requested: line.quantity,
                available: level.available,
            });
        }
    }
    Ok(())
}

/// Takes the stock of every line, in product order; all or nothing for the reject policy.
async fn reserve(
    conn: &mut PgConnection,
    order: &ValidatedOrder,
    mode: ReserveMode,
    fences: &[(ProductId, i64)],
) -> Result<Vec<Allocation>> {
    let products: Vec<ProductId> = order.products().collect();
    if mode == ReserveMode::ConditionalUpdate && order.policy() == ShortagePolicy::Reject {
        let mut allocations = Vec::with_capacity(products.len());
        for line in order.lines() {
            let after: Option<i64> = sqlx::query_scalar(
                "UPDATE commerce.products SET available = available - $2, updated_at = now() \
                 WHERE id = $1 AND available >= $2 RETURNING available",
            )
            .bind(line.product.0)
            .bind(line.quantity)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(available_after) = after else {
                // Say why: unknown product, or short (with the figure seen under the lock).
                let stock = lock_products(conn, &[line.product]).await?;
                return Err(Error::InsufficientStock {
                    product: line.product,
                    requested: line.quantity,
                    available: stock[0].available,
                });
            };
            allocations.push(Allocation {
                product: line.product,
                quantity: line.quantity,
                allocated: line.quantity,
                available_after,
            });
        }
        return Ok(allocations);
    }

    let stock = if mode == ReserveMode::ConditionalUpdate {
        lock_products(conn, &products).await?
    } else {
        read_stock(&mut *conn, &products).await?
    };
    if order.policy() == ShortagePolicy::Reject {
        short_line(order, &stock)?;
    }
    let mut allocations = Vec::with_capacity(products.len());
    for (line, level) in order.lines().iter().zip(stock) {
        let allocated = line.quantity.min(level.available);
        let shortfall = line.quantity - allocated;
        let fence = fences
            .iter()
            .find(|(product, _)| *product == line.product)
            .map(|(_, token)| *token);
        let written = sqlx::query(
            "UPDATE commerce.products SET available = available - $2, \
             backordered = backordered + $3, lock_fence = COALESCE($6, lock_fence), \
             updated_at = now() \
             WHERE id = $1 AND available = $4 AND backordered = $5 \
             AND lock_fence <= COALESCE($6, lock_fence)",
        )
        .bind(line.product.0)
        .bind(allocated)
        .bind(shortfall)
        .bind(level.available)
        .bind(level.backordered)
        .bind(fence)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if written != 1 {
            return Err(Error::Strategy(
                format!(
                    "stock write of product {} refused: the stock changed since it was read, \
                     or a newer lock holder (fencing token) wrote it; the lock was lost",
                    line.product
                )
                .into(),
            ));
        }
        allocations.push(Allocation {
            product: line.product,
            quantity: line.quantity,
            allocated,
            available_after: level.available - allocated,
        });
    }
    Ok(allocations)
}

async fn insert_order(
    conn: &mut PgConnection,
    id: OrderId,
    order: &ValidatedOrder,
    status: OrderStatus,
) -> Result<Result<(), KeyTaken>> {
    let inserted = sqlx::query(
        "INSERT INTO commerce.orders (id, user_id, idempotency_key, status, shortage_policy) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id.0)
    .bind(order.user_id())
    .bind(order.idempotency_key())
    .bind(status.as_str())
    .bind(order.policy().as_str())
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => Ok(Ok(())),
        Err(e) if violated_constraint(&e) == Some("orders_user_idempotency_key") => {
            Ok(Err(KeyTaken))
        }
        Err(e) => Err(e.into()),
    }
}

async fn insert_lines(
    conn: &mut PgConnection,
    id: OrderId,
    allocations: &[Allocation],
) -> Result<()> {
    let products: Vec<i64> = allocations.iter().map(|a| a.product.0).collect();
    let quantities: Vec<i64> = allocations.iter().map(|a| a.quantity).collect();
    let allocated: Vec<i64> = allocations.iter().map(|a| a.allocated).collect();
    let inserted = sqlx::query(
        "INSERT INTO commerce.order_lines (order_id, product_id, quantity, allocated) \
         SELECT $1, * FROM UNNEST($2::bigint[], $3::bigint[], $4::bigint[])",
    )
    .bind(id.0)
    .bind(&products)
    .bind(&quantities)
    .bind(&allocated)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if violated_constraint(&e) == Some("order_lines_product_id_fkey") => {
            Err(Error::ProductNotFound {
                product: allocations.first().map_or(ProductId(0), |a| a.product),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Queues the short lines; runs while their product rows are locked, so queue ids follow
/// commit order per product.
async fn queue_backorders(
    conn: &mut PgConnection,
    id: OrderId,
    allocations: &[Allocation],
) -> Result<()> {
    let short: Vec<&Allocation> = allocations
        .iter()
        .filter(|a| a.allocated < a.quantity)
        .collect();
    if short.is_empty() {
        return Ok(());
    }
    let products: Vec<i64> = short.iter().map(|a| a.product.0).collect();
    let outstanding: Vec<i64> = short.iter().map(|a| a.quantity - a.allocated).collect();
    sqlx::query(
        "INSERT INTO commerce.backorders (order_id, product_id, outstanding) \
         SELECT $1, * FROM UNNEST($2::bigint[], $3::bigint[])",
    )
    .bind(id.0)
    .bind(&products)
    .bind(&outstanding)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
