//! The crate's one error type.

use crate::ids::{OrderId, ProductId};
use crate::order::{OrderStatus, UserLimit};

/// Everything that can go wrong in commerce-core, as something a caller can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No product with this id exists.
    #[error("product {product} not found")]
    ProductNotFound {
        /// The unknown product.
        product: ProductId,
    },
    /// A product with this id already exists.
    #[error("product {product} already exists")]
    ProductAlreadyExists {
        /// The existing product.
        product: ProductId,
    },
    /// Another product already has this stock-keeping unit.
    #[error("a product with SKU {sku:?} already exists")]
    SkuAlreadyExists {
        /// The SKU in use.
        sku: String,
    },
    /// No order with this id exists.
    #[error("order {order} not found")]
    OrderNotFound {
        /// The unknown order.
        order: OrderId,
    },
    /// The order asked for more than is in stock, under the `reject` shortage policy.
    #[error(
        "insufficient stock for product {product}: requested {requested}, available {available}"
    )]
    InsufficientStock {
        /// The first product (in product id order) that is short.
        product: ProductId,
        /// Units requested on the line.
        requested: i64,
        /// Units available when the order was tried.
        available: i64,
    },
    /// A quantity is zero, negative or above the configured maximum.
    #[error("invalid quantity {quantity}{}: {reason}", product.map(|p| format!(" for product {p}")).unwrap_or_default())]
    InvalidQuantity {
        /// The product the quantity was given for, if any.
        product: Option<ProductId>,
        /// The rejected quantity.
        quantity: i64,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An order without lines.
    #[error("an order needs at least one line")]
    EmptyOrder,
    /// An order with more lines than the configured maximum.
    #[error("an order may have at most {max} lines, got {lines}")]
    TooManyLines {
        /// Lines given.
        lines: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The same product appears on two lines of one order.
    #[error("product {product} appears on more than one line")]
    DuplicateLine {
        /// The repeated product.
        product: ProductId,
    },
    /// A text field is empty or too long.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The field at fault.
        field: &'static str,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Placing the order would take its user past a per-user limit of
    /// [`crate::OrderLimits`]; nothing was written.
    ///
    /// Not retryable as such: the same order is refused until the user has less open
    /// (orders paid, served or cancelled), or it asks for less.
    #[error(
        "user {user} may have at most {max} {limit}: has {current}, asked for {requested} more"
    )]
    UserLimitExceeded {
        /// The user.
        user: String,
        /// Which limit.
        limit: UserLimit,
        /// What the user had when the order was tried (with the earlier orders of the same
        /// batch, under batching).
        current: i64,
        /// What the order would have added: 1 for open orders, its shortfall for
        /// backordered units.
        requested: i64,
        /// The configured limit.
        max: i64,
    },
    /// The order's state machine does not allow this move.
    #[error("order {order} cannot go from {from} to {to}")]
    IllegalTransition {
        /// The order.
        order: OrderId,
        /// Its current status.
        from: OrderStatus,
        /// The refused target status.
        to: OrderStatus,
    },
    /// The idempotency key was already used by this user for a different request.
    ///
    /// A repeat of the *same* request is not an error: it returns the first order.
    #[error("idempotency key {key:?} of user {user} was already used for a different request (order {existing})")]
    DuplicateRequest {
        /// The user.
        user: String,
        /// The reused key.
        key: String,
        /// The order the key belongs to.
        existing: OrderId,
    },
    /// The database cannot be reached (connection refused, pool timed out, closed pool, or
    /// the connection broke before the transaction's commit was sent). Nothing was written;
    /// retrying later is safe.
    #[error("database unavailable")]
    DatabaseUnavailable(#[source] sqlx::Error),
    /// The connection broke while the transaction's `COMMIT` was in flight: the server may
    /// have committed or not, and the reply was lost. Not retryable as such: a retry of an
    /// order without an idempotency key could place it twice. Retry with the same
    /// idempotency key (the first order comes back if it exists), or read to find out.
    #[error("the database connection failed during commit: the outcome is unknown")]
    CommitOutcomeUnknown(#[source] sqlx::Error),
    /// Two transactions conflicted (deadlock or serialization failure, also inside a
    /// transaction hook); nothing was written and retrying is safe.
    #[error("transaction conflict, retry")]
    Conflict(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Any other database error.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// A transaction hook (e.g. the outbox) failed; the transaction was rolled back.
    #[error("transaction hook failed: {0}")]
    Hook(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The stock strategy could not run (e.g. its lock could not be taken in time, or the
    /// lock service is unreachable); nothing was written and retrying is safe.
    #[error("stock strategy unavailable: {0}")]
    Strategy(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Too many orders wait for this product (a surge beyond what the strategy queues, or
    /// orders waited longer than its bound): nothing was written; retry after `retry_after`.
    #[error("too many orders wait for product {product}: retry in {retry_after:?}")]
    Overloaded {
        /// The product whose queue is full.
        product: ProductId,
        /// A hint for when to try again.
        retry_after: std::time::Duration,
    },
    /// A stock write that relies on the figures it read was refused because they changed
    /// before the write (another writer, or a newer lock holder with a higher fencing
    /// token, got there first); nothing was written and retrying is safe.
    #[error("the stock of product {product} changed before it could be written")]
    StockChanged {
        /// The product whose stock changed.
        product: ProductId,
    },
}

impl Error {
    /// Whether the same call may succeed if simply retried (nothing was written).
    ///
    /// [`Error::CommitOutcomeUnknown`] is not: something may have been written.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::DatabaseUnavailable(_)
                | Self::Conflict(_)
                | Self::Strategy(_)
                | Self::StockChanged { .. }
                | Self::Overloaded { .. }
        )
    }

    /// Maps the error of a `COMMIT`: a broken connection leaves the outcome unknown, while a
    /// refusal by the server (e.g. a deferred constraint) means nothing was committed.
    pub(crate) fn from_commit(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(_) => Self::from(e),
            lost => Self::CommitOutcomeUnknown(lost),
        }
    }

    /// Maps a transaction hook's error: a deadlock or serialization failure anywhere in
    /// its chain is a [`Error::Conflict`] (retryable), anything else a [`Error::Hook`].
    pub(crate) fn from_hook(e: Box<dyn std::error::Error + Send + Sync>) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
        while let Some(current) = cause {
            if current
                .downcast_ref::<sqlx::Error>()
                .is_some_and(is_conflict)
            {
                return Self::Conflict(e);
            }
            cause = current.source();
        }
        Self::Hook(e)
    }
}

/// Deadlock detected or serialization failure.
fn is_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::DatabaseUnavailable(e),
            _ if is_conflict(&e) => Self::Conflict(Box::new(e)),
            sqlx::Error::Database(db)
                if matches!(
                    db.code().as_deref(),
                    Some("57P01" | "57P02" | "57P03" | "53300")
                ) =>
            {
                Self::DatabaseUnavailable(e)
            }
            _ => Self::Database(e),
        }
    }
}

/// The name of the constraint a database error violated, if any.
pub(crate) fn violated_constraint(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
