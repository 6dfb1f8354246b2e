//! Placing an order: stock, order, lines, history, ledger and events in one transaction.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::effects::{commit, Hooks, TxEffects};
use crate::error::{violated_constraint, Error, Result};
use crate::event::CoreEvent;
use crate::ids::{OrderId, ProductId};
use crate::inventory::{
    enqueue_backorders, read_stock, take_and_record_lines, take_stock, Allocation, LedgerKind,
    StockLevel,
};

use super::idempotency::{self, KeyTaken};
use super::lines::insert_lines;
use super::{Exposures, Order, OrderLine, OrderStatus, ShortagePolicy, UserLimits, ValidatedOrder};

/// How the stock of the lines is taken inside the order transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveMode {
    /// `UPDATE ... SET available = available - q WHERE id = p AND available >= q`, one line
    /// after another in product order: the row lock is the only lock, held from the update to
    /// commit. (Backorder-policy orders lock the rows with `SELECT ... FOR UPDATE` first, as
    /// they need the figure before they write.)
    ConditionalUpdate,
    /// For callers that already serialise access to the products (e.g. a distributed lock):
    /// no row lock is taken to read. A reject-policy line is taken with the conditional
    /// decrement (which needs no earlier read); a backorder-policy line is read, split
    /// into allocated and queued in Rust, and written back with a compare-and-set on the
    /// figure read, refused with [`Error::StockChanged`] (nothing written) if it changed
    /// meanwhile. Either way a lost lock cannot oversell.
    ReadCheckWrite,
}

/// The reason of every order's first history row.
pub(crate) const PLACED: &str = "placed";

/// The outcome of [`crate::Commerce::place_order`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedOrder {
    /// The order (the first one, on a replay).
    pub order: Order,
    /// `true` when the request repeated an idempotency key and no new order was made.
    pub replayed: bool,
}

impl PlacedOrder {
    /// The status history of a new order, as the placement wrote it, without reading it
    /// back: one change, from nothing to its status, reason `placed`, at its creation time.
    /// `None` for a replay, whose order may have moved on since (read it with
    /// [`crate::Commerce::order_history`]).
    #[must_use]
    pub fn placement_history(&self) -> Option<Vec<super::StatusChange>> {
        (!self.replayed).then(|| {
            vec![super::StatusChange {
                from: None,
                to: self.order.status,
                reason: PLACED.to_owned(),
                at: self.order.created_at,
            }]
        })
    }
}

/// The building blocks a [`crate::StockStrategy`] uses to write orders.
///
/// Cheap to clone. Every method writes the order, its lines, its first history row, the
/// ledger rows, the backorder queue entries and the hook's rows in one transaction, and
/// enforces the per-user limits of the [`crate::Commerce`]'s [`crate::OrderLimits`] in it.
#[derive(Debug, Clone)]
pub struct OrderWriter {
    pool: PgPool,
    hooks: Hooks,
    limits: UserLimits,
}

impl OrderWriter {
    pub(crate) fn new(pool: PgPool, hooks: Hooks, limits: UserLimits) -> Self {
        Self {
            pool,
            hooks,
            limits,
        }
    }

    /// The per-user limits every order write enforces.
    #[cfg(feature = "batching")]
    pub(crate) fn user_limits(&self) -> UserLimits {
        self.limits
    }

    /// The transaction hooks every order write runs before commit.
    #[cfg(feature = "batching")]
    pub(crate) fn hooks(&self) -> &Hooks {
        &self.hooks
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

    /// The first order placed with `order`'s idempotency key, if any (`replayed` set).
    ///
    /// [`crate::Commerce::place_order`] also asks this when a keyed request fails: a racing
    /// repeat may have placed the order meanwhile (taking the last units, say), and the
    /// first order is then the answer.
    ///
    /// # Errors
    /// [`Error::DuplicateRequest`] when the key was used for a different request; database
    /// errors.
    pub async fn replay(&self, order: &ValidatedOrder) -> Result<Option<PlacedOrder>> {
        idempotency::replay(&self.pool, order).await
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
    /// [`Error::DuplicateRequest`], [`Error::StockChanged`] (read-check-write only), database
    /// and hook errors: on any of them nothing is written. [`Error::CommitOutcomeUnknown`]
    /// when the connection broke during commit.
    pub async fn place(&self, order: &ValidatedOrder, mode: ReserveMode) -> Result<PlacedOrder> {
        self.place_with_fences(order, mode, &[]).await
    }

    /// [`OrderWriter::place`] with [`ReserveMode::ReadCheckWrite`] for a caller holding a
    /// distributed lock per product: `fences` pairs each product with the lock's fencing token.
    /// Each stock write records its token on the product row and is refused, with
    /// [`Error::StockChanged`] and nothing written, when a newer token already wrote it: a
    /// holder whose lease expired during a pause cannot write after its successor.
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
                commit(tx).await?;
                Ok(placed)
            }
            Ok(Err(KeyTaken)) => {
                drop(tx);
                self.replay(order).await?.ok_or_else(|| {
                    // The other request rolled back after we saw its key; ours is gone too.
                    Error::Conflict("idempotency key released by a rolled-back request".into())
                })
            }
            Err(e) => Err(e),
        }
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
        // The user's lock comes before any row (the crate's lock order), and only with a
        // per-user limit that concerns this order: without one this costs nothing.
        let mut exposures = if self.limits.apply_to(order.policy()) {
            Some(Exposures::lock_and_count(conn, self.limits, &[order.user_id()]).await?)
        } else {
            None
        };
        let (allocations, created_at) = if order.policy() == ShortagePolicy::Reject {
            // Nothing of a reject-policy order waits: only its count can be over a limit,
            // and that is known before the hot product row is touched.
            if let Some(exposures) = &mut exposures {
                exposures.admit(order.user_id(), 0)?;
            }
            // The order's own rows go first and the contended stock update last, so the hot
            // product row stays locked for as short a time as possible: one statement per
            // line (stock, line and ledger row together), the hooks, the commit.
            let Ok(created_at) = insert_order(conn, id, order, OrderStatus::Created).await? else {
                return Ok(Err(KeyTaken));
            };
            let allocations = take_and_record_lines(conn, id, order, fences).await?;
            (allocations, created_at)
        } else {
            let allocations = take_stock(conn, order, mode, fences).await?;
            // Its shortfall is known once its stock is taken; refused, the transaction is
            // rolled back and the stock taken goes back with it.
            if let Some(exposures) = &mut exposures {
                let shortfall = allocations.iter().map(Allocation::shortfall).sum();
                exposures.admit(order.user_id(), shortfall)?;
            }
            let status = Allocation::placement_status(&allocations);
            let Ok(created_at) = insert_order(conn, id, order, status).await? else {
                return Ok(Err(KeyTaken));
            };
            insert_lines(conn, id, &allocations).await?;
            enqueue_backorders(conn, id, &allocations).await?;
            for a in allocations.iter().filter(|a| a.allocated > 0) {
                effects.ledger(
                    a.product,
                    -a.allocated,
                    LedgerKind::Order,
                    Some(id.to_string()),
                    a.available_after,
                );
            }
            (allocations, created_at)
        };
        let status = Allocation::placement_status(&allocations);
        let lines: Vec<OrderLine> = allocations
            .iter()
            .map(|a| OrderLine {
                product: a.product,
                quantity: a.quantity,
                allocated: a.allocated,
                unit_price: a.unit_price,
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
        Ok(Ok(PlacedOrder::new_order(
            id, order, status, lines, created_at,
        )))
    }
}

impl PlacedOrder {
    /// The answer for `order`, just written as `id` with `status` and `lines` at `created_at`.
    pub(crate) fn new_order(
        id: OrderId,
        order: &ValidatedOrder,
        status: OrderStatus,
        lines: Vec<OrderLine>,
        created_at: DateTime<Utc>,
    ) -> Self {
        Self {
            order: Order {
                id,
                user_id: order.user_id().to_owned(),
                status,
                policy: order.policy(),
                idempotency_key: order.idempotency_key().map(str::to_owned),
                lines,
                created_at,
                updated_at: created_at,
            },
            replayed: false,
        }
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

/// Inserts the order row and its first history row ("placed", at the order's creation time, as
/// [`PlacedOrder::placement_history`] tells without reading it) in one statement; returns its
/// creation time (the database's clock, as every later read shows it), or [`KeyTaken`] when a
/// concurrent request holds the idempotency key.
async fn insert_order(
    conn: &mut PgConnection,
    id: OrderId,
    order: &ValidatedOrder,
    status: OrderStatus,
) -> Result<Result<DateTime<Utc>, KeyTaken>> {
    let inserted: Result<DateTime<Utc>, sqlx::Error> = sqlx::query_scalar(
        "WITH o AS ( \
           INSERT INTO commerce.orders (id, user_id, idempotency_key, status, shortage_policy) \
           VALUES ($1, $2, $3, $4, $5) RETURNING id, created_at \
         ), h AS ( \
           INSERT INTO commerce.order_status_history (order_id, from_status, to_status, reason, at) \
           SELECT id, NULL, $4, 'placed', created_at FROM o \
         ) \
         SELECT created_at FROM o",
    )
    .bind(id.0)
    .bind(order.user_id())
    .bind(order.idempotency_key())
    .bind(status.as_str())
    .bind(order.policy().as_str())
    .fetch_one(&mut *conn)
    .await;
    match inserted {
        Ok(created_at) => Ok(Ok(created_at)),
        Err(e) if violated_constraint(&e) == Some("orders_user_idempotency_key") => {
            Ok(Err(KeyTaken))
        }
        Err(e) => Err(e.into()),
    }
}
