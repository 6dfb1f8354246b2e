//! [`Commerce`]: the one entry point an application embeds.

use std::sync::Arc;

use sqlx::{PgConnection, PgPool};

use crate::effects::Hooks;
use crate::error::Result;
use crate::event::TransactionHook;
use crate::ids::{OrderId, ProductId};
use crate::inventory::{self, Backorder, LedgerPage, NewProduct, Product, Receipt, StockLevel};
use crate::order::{
    self, BatchTransition, NewOrder, Order, OrderCursor, OrderLimits, OrderPage, OrderStatus,
    OrderTotal, OrderWriter, PlacedOrder, StatusChange, UserLimits, ValidatedOrder,
};
use crate::strategy::{ConditionalUpdate, StockStrategy};

/// Inventory and orders on one Postgres database. Cheap to clone; share one per process.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> commerce_core::Result<()> {
/// use commerce_core::{Commerce, NewOrder, NewProduct, ProductId, ShortagePolicy};
///
/// let commerce = Commerce::builder(pool).build();
/// commerce.create_product(NewProduct::new(ProductId(1), "Mug").stock(5)).await?;
/// let placed = commerce
///     .place_order(NewOrder::new("user-1").line(1, 2).policy(ShortagePolicy::Backorder))
///     .await?;
/// assert_eq!(commerce.stock(ProductId(1)).await?.available, 3);
/// # let _ = placed; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Commerce {
    pool: PgPool,
    hooks: Hooks,
    writer: OrderWriter,
    strategy: Arc<dyn StockStrategy>,
    limits: OrderLimits,
}

impl std::fmt::Debug for Commerce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commerce")
            .field("strategy", &self.strategy.name())
            .field("hooks", &self.hooks)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Commerce`]. Defaults: [`ConditionalUpdate`], no hooks, [`OrderLimits::default`].
pub struct CommerceBuilder {
    pool: PgPool,
    hooks: Vec<Arc<dyn TransactionHook>>,
    strategy: Arc<dyn StockStrategy>,
    limits: OrderLimits,
}

impl std::fmt::Debug for CommerceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommerceBuilder")
            .field("strategy", &self.strategy.name())
            .field("hooks", &self.hooks.len())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl CommerceBuilder {
    /// Uses `strategy` to take stock when orders are placed.
    #[must_use]
    pub fn strategy(mut self, strategy: impl StockStrategy) -> Self {
        self.strategy = Arc::new(strategy);
        self
    }

    /// Adds a hook run inside every write transaction (e.g. the outbox). Hooks run in the
    /// order they were added.
    #[must_use]
    pub fn hook(mut self, hook: impl TransactionHook) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Sets the bounds on orders.
    #[must_use]
    pub fn limits(mut self, limits: OrderLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Builds it. The database must be migrated with [`crate::MIGRATOR`] first.
    #[must_use]
    pub fn build(self) -> Commerce {
        let hooks = Hooks::new(self.hooks);
        Commerce {
            writer: OrderWriter::new(
                self.pool.clone(),
                hooks.clone(),
                UserLimits::new(&self.limits),
            ),
            pool: self.pool,
            hooks,
            strategy: self.strategy,
            limits: self.limits,
        }
    }
}

impl Commerce {
    /// Starts building on `pool`.
    #[must_use]
    pub fn builder(pool: PgPool) -> CommerceBuilder {
        CommerceBuilder {
            pool,
            hooks: Vec::new(),
            strategy: Arc::new(ConditionalUpdate),
            limits: OrderLimits::default(),
        }
    }

    /// The pool in use.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The stock strategy's name.
    #[must_use]
    pub fn strategy_name(&self) -> &'static str {
        self.strategy.name()
    }

    /// Creates a product; initial stock is recorded as an `inbound` ledger row.
    ///
    /// # Errors
    /// [`crate::Error::ProductAlreadyExists`], [`crate::Error::InvalidQuantity`] for negative
    /// stock, [`crate::Error::InvalidInput`] for a blank name, database errors.
    pub async fn create_product(&self, product: NewProduct) -> Result<StockLevel> {
        inventory::create_product(&self.pool, &self.hooks, product).await
    }

    /// The product's catalogue facts, or `None` for an unknown id (so a cache can remember
    /// "not found" too).
    ///
    /// # Errors
    /// Database errors.
    pub async fn product(&self, product: ProductId) -> Result<Option<Product>> {
        inventory::find_product(&self.pool, product).await
    }

    /// Renames a product.
    ///
    /// # Errors
    /// [`crate::Error::ProductNotFound`], [`crate::Error::InvalidInput`], database errors.
    pub async fn rename_product(&self, product: ProductId, name: &str) -> Result<Product> {
        inventory::rename_product(&self.pool, product, name).await
    }

    /// The product's stock now.
    ///
    /// # Errors
    /// [`crate::Error::ProductNotFound`], database errors.
    pub async fn stock(&self, product: ProductId) -> Result<StockLevel> {
        Ok(inventory::read_stock(&self.pool, &[product]).await?[0])
    }

    /// The stock of several products, in ascending product order.
    ///
    /// # Errors
    /// [`crate::Error::ProductNotFound`] for the first unknown one, database errors.
    pub async fn stock_of(&self, products: &[ProductId]) -> Result<Vec<StockLevel>> {
        inventory::read_stock(&self.pool, products).await
    }

    /// Records arriving stock and hands it to the oldest backorders first, in one transaction.
    ///
    /// # Errors
    /// [`crate::Error::ProductNotFound`], [`crate::Error::InvalidQuantity`], database errors.
    pub async fn receive_stock(
        &self,
        product: ProductId,
        quantity: i64,
        reference: Option<&str>,
    ) -> Result<Receipt> {
        let receipt =
            inventory::receive_stock(&self.pool, &self.hooks, product, quantity, reference).await?;
        self.strategy.stock_raised(product);
        Ok(receipt)
    }

    /// Corrects stock by `delta` (a count, damage, shrinkage) with a reason; a positive
    /// correction serves backorders like a receipt.
    ///
    /// # Errors
    /// [`crate::Error::InsufficientStock`] when it would go below zero, bad input, database errors.
    pub async fn adjust_stock(
        &self,
        product: ProductId,
        delta: i64,
        reason: &str,
    ) -> Result<StockLevel> {
        let level =
            inventory::adjust_stock(&self.pool, &self.hooks, product, delta, reason).await?;
        if delta > 0 {
            self.strategy.stock_raised(product);
        }
        Ok(level)
    }

    /// A page of the product's ledger, newest first: pass the previous page's
    /// `next_before` as `before` to go on. `limit` is clamped to 1..=1000.
    ///
    /// # Errors
    /// Database errors.
    pub async fn ledger(
        &self,
        product: ProductId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<LedgerPage> {
        inventory::list_ledger(&self.pool, product, before, limit).await
    }

    /// The product's backorder queue, in the order it will be served.
    ///
    /// # Errors
    /// Database errors.
    pub async fn backorders(&self, product: ProductId) -> Result<Vec<Backorder>> {
        inventory::list_backorders(&self.pool, product).await
    }

    /// Validates and places an order: stock of every line, the order, its lines, its first
    /// history row, the ledger rows and the hooks' rows, in one transaction.
    ///
    /// # Errors
    /// Validation errors before anything is written; [`crate::Error::InsufficientStock`]
    /// under the reject policy; [`crate::Error::ProductNotFound`];
    /// [`crate::Error::UserLimitExceeded`] when a per-user limit of [`OrderLimits`] is set
    /// and the order would pass it; [`crate::Error::DuplicateRequest`] when the idempotency
    /// key was used for another request; database, hook and strategy errors: nothing is
    /// written on any of them.
    /// [`crate::Error::CommitOutcomeUnknown`] when the connection broke during commit: the
    /// order may exist, so retry only with the same idempotency key.
    ///
    /// With an idempotency key, a request that fails while a repeat of it placed the order
    /// (racing repeats for the last units: one takes them, the other finds none) gets that
    /// first order back, whatever the strategy.
    pub async fn place_order(&self, order: NewOrder) -> Result<PlacedOrder> {
        let order = ValidatedOrder::new(order, &self.limits)?;
        match self.strategy.place(&self.writer, &order).await {
            Err(e) if order.idempotency_key().is_some() && may_hide_a_repeat(&e) => {
                match self.writer.replay(&order).await {
                    Ok(Some(first)) => Ok(first),
                    // The key belongs to another request: that is the answer, whatever
                    // refused this one.
                    Err(duplicate @ crate::Error::DuplicateRequest { .. }) => Err(duplicate),
                    _ => Err(e),
                }
            }
            placed => placed,
        }
    }

    /// The order with its lines.
    ///
    /// # Errors
    /// [`crate::Error::OrderNotFound`], database errors.
    pub async fn order(&self, order: OrderId) -> Result<Order> {
        let mut conn = self.pool.acquire().await?;
        order::load_order(&mut conn, order).await
    }

    /// The order's status changes, oldest first.
    ///
    /// # Errors
    /// [`crate::Error::OrderNotFound`], database errors.
    pub async fn order_history(&self, order: OrderId) -> Result<Vec<StatusChange>> {
        order::status_history(&self.pool, order).await
    }

    /// Moves the order to `to`, recording `reason`. Moving to CANCELLED returns its stock.
    ///
    /// # Errors
    /// [`crate::Error::IllegalTransition`], [`crate::Error::OrderNotFound`], database errors.
    pub async fn transition_order(
        &self,
        order: OrderId,
        to: OrderStatus,
        reason: &str,
    ) -> Result<Order> {
        let updated = order::transition_order(&self.pool, &self.hooks, order, to, reason).await?;
        if to == OrderStatus::Cancelled {
            self.units_returned(&updated);
        }
        Ok(updated)
    }

    /// Checks that stock, ledger, orders and the backorder queue agree (one snapshot).
    ///
    /// # Errors
    /// Database errors.
    pub async fn audit(&self) -> Result<crate::AuditReport> {
        crate::audit::audit(&self.pool).await
    }

    /// Cancels the order and returns its stock (see [`Commerce::transition_order`]).
    ///
    /// # Errors
    /// [`crate::Error::IllegalTransition`] once shipped, [`crate::Error::OrderNotFound`],
    /// database errors.
    pub async fn cancel_order(&self, order: OrderId, reason: &str) -> Result<Order> {
        let cancelled = order::cancel_order(&self.pool, &self.hooks, order, reason).await?;
        self.units_returned(&cancelled);
        Ok(cancelled)
    }

    /// [`Commerce::transition_order`] inside the caller's transaction: `conn` is a connection
    /// with a transaction open (`&mut *tx`), which the caller commits or rolls back.
    ///
    /// For a step that must commit together with writes of its own, e.g. a saga step run by
    /// an idempotent consumer: the inbox record, the transition, its events (through the
    /// hooks, on the same connection) and the step's outgoing events all commit at once, so a
    /// redelivered event finds the step done. After an error the transaction must be rolled
    /// back.
    ///
    /// Moving to CANCELLED returns the order's units when the caller's transaction commits,
    /// which this method cannot see: after the commit, call [`Commerce::stock_raised`] for
    /// each product of the returned order's lines, so that the next order on this
    /// `Commerce` sees the units (as after [`Commerce::cancel_order`]). Without that call a
    /// strategy that remembers sold-out products (`Batching`) may turn such orders away until
    /// the database's notification reaches it (usually milliseconds, at most its
    /// `sold_out_max_age`).
    ///
    /// # Errors
    /// As [`Commerce::transition_order`].
    pub async fn transition_order_in(
        &self,
        conn: &mut PgConnection,
        order: OrderId,
        to: OrderStatus,
        reason: &str,
    ) -> Result<Order> {
        order::transition_order_in(conn, &self.hooks, order, to, reason).await
    }

    /// Moves every order of `orders` that is in `from` to `to` inside the caller's
    /// transaction (see [`Commerce::transition_order_in`]): the rows are locked in ascending
    /// id, and the status update, the history rows and the hooks (the outbox's events) are
    /// written once for all of them. An order found in another status is left alone and
    /// reported in [`BatchTransition::skipped`], an unknown one in
    /// [`BatchTransition::missing`]; neither fails the batch.
    ///
    /// For a consumer applying many answers at once (e.g. a payment saga moving the orders
    /// paid in one round from CREATED to PROCESSING): one transaction instead of one per
    /// order, with the same conditional effect.
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] when `to` is CANCELLED (a cancellation returns stock:
    /// use [`Commerce::cancel_order_in`]), when no order may move from `from` to `to`, or when
    /// the reason is blank or too long; database and hook errors (the transaction must then
    /// be rolled back).
    pub async fn transition_orders_in(
        &self,
        conn: &mut PgConnection,
        orders: &[OrderId],
        from: OrderStatus,
        to: OrderStatus,
        reason: &str,
    ) -> Result<BatchTransition> {
        order::transition_orders_in(conn, &self.hooks, orders, from, to, reason).await
    }

    /// [`Commerce::cancel_order`] inside the caller's transaction; see
    /// [`Commerce::transition_order_in`]. It cancels from any status that may be cancelled,
    /// PROCESSING included: a sweep that found the order in a status uses
    /// [`Commerce::cancel_order_if_in`] instead. After the caller's commit, pass the returned
    /// units on with [`Commerce::stock_raised`] (see [`Commerce::transition_order_in`]).
    ///
    /// # Errors
    /// As [`Commerce::cancel_order`].
    pub async fn cancel_order_in(
        &self,
        conn: &mut PgConnection,
        order: OrderId,
        reason: &str,
    ) -> Result<Order> {
        order::cancel_order_in(conn, &self.hooks, order, reason).await
    }

    /// Cancels the order (as [`Commerce::cancel_order`]) only if it is in `expected` when its
    /// row is locked; `None`, with nothing written, when it is in another status.
    ///
    /// For a sweep that lists orders waiting in a status and then cancels each, e.g. a
    /// saga's payment timeout (CREATED) or a backorder expiry (BACKORDERED): an order that
    /// moved on between the listing and the cancel (paid meanwhile, now PROCESSING; or
    /// served, now CREATED) is left alone. The status is read after the order's row lock
    /// is taken, so a racing transition either commits first (and this returns `None`) or
    /// waits for this cancel (and then finds the order cancelled): never both.
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] when `expected` is a status no order may be cancelled
    /// from (SHIPPED, DELIVERED, CANCELLED) or the reason is blank;
    /// [`crate::Error::OrderNotFound`]; database and hook errors.
    pub async fn cancel_order_if(
        &self,
        order: OrderId,
        expected: OrderStatus,
        reason: &str,
    ) -> Result<Option<Order>> {
        let cancelled =
            order::cancel_order_if(&self.pool, &self.hooks, order, expected, reason).await?;
        if let Some(cancelled) = &cancelled {
            self.units_returned(cancelled);
        }
        Ok(cancelled)
    }

    /// [`Commerce::cancel_order_if`] inside the caller's transaction; see
    /// [`Commerce::transition_order_in`]. With `None` nothing was written, but the rows of
    /// the order and its products stay locked until the caller's transaction ends. With
    /// `Some`, after the caller's commit, pass the returned units on with
    /// [`Commerce::stock_raised`] (see [`Commerce::transition_order_in`]).
    ///
    /// # Errors
    /// As [`Commerce::cancel_order_if`].
    pub async fn cancel_order_if_in(
        &self,
        conn: &mut PgConnection,
        order: OrderId,
        expected: OrderStatus,
        reason: &str,
    ) -> Result<Option<Order>> {
        order::cancel_order_if_in(conn, &self.hooks, order, expected, reason).await
    }

    /// Tells the stock strategy that `product`'s available stock went up in a transaction
    /// that has committed, so that the next order on this `Commerce` sees the units (read
    /// your own writes). The methods that raise stock in a transaction of their own do it
    /// themselves; call it after committing a transaction in which
    /// [`Commerce::cancel_order_in`], [`Commerce::cancel_order_if_in`] or
    /// [`Commerce::transition_order_in`] cancelled an order, once per product of the
    /// order's lines (or after raising stock with SQL of your own). Calling it when nothing
    /// was raised only costs the strategy a fresh read. Cheap and non-blocking.
    ///
    /// ```no_run
    /// # async fn demo(commerce: &commerce_core::Commerce, id: commerce_core::OrderId) -> commerce_core::Result<()> {
    /// let mut tx = commerce.pool().begin().await?;
    /// let cancelled = commerce.cancel_order_in(&mut tx, id, "payment declined").await?;
    /// // ... the step's other writes ...
    /// tx.commit().await?;
    /// for line in &cancelled.lines {
    ///     commerce.stock_raised(line.product);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stock_raised(&self, product: ProductId) {
        self.strategy.stock_raised(product);
    }

    /// A cancelled order's units are back: tells the strategy for each of its products.
    fn units_returned(&self, cancelled: &Order) {
        for line in &cancelled.lines {
            self.strategy.stock_raised(line.product);
        }
    }

    /// The order with its lines, read on the caller's connection (e.g. inside its
    /// transaction).
    ///
    /// # Errors
    /// [`crate::Error::OrderNotFound`], database errors.
    pub async fn order_in(&self, conn: &mut PgConnection, order: OrderId) -> Result<Order> {
        order::load_order(conn, order).await
    }

    /// What each of `orders` costs (with who placed it), read on the caller's connection, in
    /// ascending order id; ids of no order are left out, and an empty slice costs no round
    /// trip.
    ///
    /// Read inside the caller's transaction, it sees that transaction's own writes: a
    /// [`TransactionHook`] learns what to charge for the orders its transaction is placing
    /// or making CREATED (the events carry the ids), and writes the charge request with
    /// them. (A placement's [`crate::CoreEvent::OrderPlaced`] already carries its lines at
    /// their prices: [`crate::OrderLine::total_of`] them and spare the read.) An associated
    /// function, not a method, because such a hook is built before the [`Commerce`] it is
    /// added to and has none to call it on.
    ///
    /// ```no_run
    /// # async fn demo(tx: &mut sqlx::PgConnection, id: commerce_core::OrderId) -> commerce_core::Result<()> {
    /// use commerce_core::Commerce;
    /// for total in Commerce::order_totals_in(tx, &[id]).await? {
    ///     println!("charge {} {} for {}", total.user_id, total.total, total.order);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Database errors.
    pub async fn order_totals_in(
        conn: &mut PgConnection,
        orders: &[OrderId],
    ) -> Result<Vec<OrderTotal>> {
        order::order_totals(conn, orders).await
    }

    /// Orders that have been in `status` for longer than `older_than` since their last status
    /// change, oldest first, at most `limit` (clamped to 1..=1000): e.g. CREATED orders whose
    /// payment never answered, for a saga's timeout, or BACKORDERED orders waiting too long
    /// for stock (serving part of a backorder is not a status change, so it keeps its age).
    ///
    /// The list is a snapshot: cancel what it found with [`Commerce::cancel_order_if`] (or
    /// `_in`) and the status it was listed in, so an order that moved on meanwhile is left
    /// alone. A cancelled backorder's allocated units go to the next backorders at once.
    ///
    /// # Errors
    /// Database errors.
    pub async fn orders_stuck_in(
        &self,
        status: OrderStatus,
        older_than: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<OrderId>> {
        order::orders_stuck_in(&self.pool, status, older_than, limit).await
    }

    /// Forgets the idempotency keys of orders placed more than `older_than` ago, at most
    /// `limit` of them (clamped to 1..=10,000), oldest first; returns how many it forgot.
    /// Call it periodically (until it returns less than `limit`) so kept keys do not pile up
    /// for ever.
    ///
    /// The orders stay as they are, only without their key (`Order::idempotency_key` reads
    /// `None`). A request that repeats a forgotten key afterwards is **a new request**: it
    /// places a new order. So choose `older_than` well beyond the longest time a client may
    /// retry (its retry window, plus clock skew), e.g. a day or a week.
    ///
    /// # Errors
    /// Database errors.
    pub async fn forget_idempotency_keys(
        &self,
        older_than: std::time::Duration,
        limit: u32,
    ) -> Result<u64> {
        order::forget_keys(&self.pool, older_than, limit).await
    }

    /// A page of `user`'s orders, newest first: pass the previous page's `next` as `after`
    /// to go on. `limit` is clamped to 1..=100.
    ///
    /// # Errors
    /// Database errors.
    pub async fn orders_of_user(
        &self,
        user: &str,
        limit: u32,
        after: Option<&OrderCursor>,
    ) -> Result<OrderPage> {
        order::orders_of_user(&self.pool, user, limit, after).await
    }
}

/// Whether a keyed request that failed with `e` may have lost to a repeat of itself that
/// placed the order (the stock, the lock or the user's last open slot went to the repeat),
/// so the key is worth a look.
fn may_hide_a_repeat(e: &crate::Error) -> bool {
    use crate::Error;
    matches!(
        e,
        Error::InsufficientStock { .. }
            | Error::UserLimitExceeded { .. }
            | Error::StockChanged { .. }
            | Error::Overloaded { .. }
            | Error::Strategy(_)
            | Error::Conflict(_)
    )
}
