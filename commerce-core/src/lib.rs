//! # commerce-core
//!
//! Transactional stock decrement and order creation that never oversells, for an application
//! on Postgres: products with stock, a ledger of every stock movement, a FIFO backorder queue,
//! an order state machine, idempotent order placement, and a hook that lets the outbox write
//! events in the same transaction.
//!
//! ```no_run
//! use commerce_core::{Commerce, NewOrder, NewProduct, OrderStatus, ProductId, ShortagePolicy};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
//! commerce_core::MIGRATOR.run(&pool).await?;
//! let commerce = Commerce::builder(pool).build();
//!
//! commerce.create_product(NewProduct::new(ProductId(7), "Kettle").stock(1)).await?;
//! let first = commerce.place_order(NewOrder::new("alice").line(7, 1)).await?;
//! assert_eq!(first.order.status, OrderStatus::Created);
//!
//! // Sold out: this order waits in the backorder queue...
//! let second = commerce
//!     .place_order(NewOrder::new("bob").line(7, 1).policy(ShortagePolicy::Backorder))
//!     .await?;
//! assert_eq!(second.order.status, OrderStatus::Backordered);
//! // ...until stock arrives, which serves the oldest backorder first.
//! let receipt = commerce.receive_stock(ProductId(7), 3, Some("PO-1")).await?;
//! assert_eq!(receipt.allocations[0].order, second.order.id);
//! assert_eq!(commerce.stock(ProductId(7)).await?.available, 2);
//! # Ok(()) }
//! ```
//!
//! ## Guarantees
//! - Stock never goes below zero (a `CHECK` constraint backs every strategy).
//! - `available` always equals the sum of the product's ledger deltas.
//! - A multi-line order is all or nothing; rows are locked in ascending product id, so
//!   concurrent multi-line orders cannot deadlock.
//! - With an idempotency key, repeats of a request (also racing ones, also when the first
//!   took the last units) return the first order, until the key is forgotten
//!   ([`Commerce::forget_idempotency_keys`]).
//! - No deadlocks by construction, also with the outbox hook on: rows are locked products
//!   first (ascending id), then orders (ascending id), then the outbox's sequence rows
//!   (sorted), and with a per-user limit set a placement takes its users' advisory locks
//!   before all of them; a conflict Postgres still reports is [`Error::Conflict`], retryable.
//! - Per-user limits of [`OrderLimits`] (off by default) hold under concurrent placements on
//!   every strategy: a refused order ([`Error::UserLimitExceeded`]) writes nothing.
//! - [`Commerce::cancel_order_if`] decides under the order's row lock: a sweep never cancels
//!   an order that moved on after it was listed.
//! - An error means nothing was written, except [`Error::CommitOutcomeUnknown`] (the
//!   connection broke during commit): retry those only with an idempotency key.
//! - Events reach [`TransactionHook`]s inside the transaction: none for a rolled-back one.
//!
//! ## Features
//! - `lock`: `DistributedLockStrategy`, the stock strategy on commerce-lock (Redis or
//!   in-process).
//! - `batching`: `strategy::Batching`, group commit per product for flash sales (many orders
//!   of a hot product per transaction, and a sold-out fast path); needs a Tokio runtime.
//! - `outbox`: `OutboxHook`, which writes every event to the commerce-outbox table in the
//!   same transaction.
//!
//! Tables live in the `commerce` schema; run [`MIGRATOR`] (it tolerates other crates'
//! migrations in the same database).
#![warn(missing_docs)]

mod audit;
mod commerce;
mod effects;
mod error;
mod event;
mod ids;
mod inventory;
mod order;
#[cfg(feature = "outbox")]
mod outbox_hook;
pub mod strategy;

use std::sync::LazyLock;

use sqlx::migrate::Migrator;

pub use audit::AuditReport;
pub use commerce::{Commerce, CommerceBuilder};
pub use error::{Error, Result};
pub use event::{CoreEvent, TransactionHook};
pub use ids::{OrderId, ProductId};
pub use inventory::{
    Backorder, BackorderAllocation, LedgerKind, LedgerPage, NewProduct, Product, Receipt,
    StockLedgerEntry, StockLevel,
};
pub use order::{
    BatchTransition, LineRequest, NewOrder, Order, OrderCursor, OrderLimits, OrderLine, OrderPage,
    OrderStatus, OrderTotal, PlacedOrder, ShortagePolicy, StatusChange, UnknownStatus, UserLimit,
};
#[cfg(feature = "outbox")]
pub use outbox_hook::{OutboxHook, CORE_EVENT_SCHEMA_VERSION};
#[cfg(feature = "lock")]
pub use strategy::DistributedLockStrategy;
pub use strategy::{ConditionalUpdate, StockStrategy};

/// The schema migrations of commerce-core (schema `commerce`).
///
/// Other crates' migrations may share the database's migration table, so missing versions
/// are ignored.
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!();
    migrator.set_ignore_missing(true);
    migrator
});

/// The README's example, compiled as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
