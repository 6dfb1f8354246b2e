//! The systems put under load, by name: commerce-core with a stock strategy, or the bare
//! conditional `UPDATE` every strategy is measured against.

use std::time::Duration;

use anyhow::Context;
use commerce_core::strategy::{BatchSettings, Batching};
use commerce_core::{Commerce, DistributedLockStrategy, Error, NewOrder};
use commerce_lock::{LocalLock, LockOptions, RedisLock};
use reference_app::config::StockStrategyKind;
use sqlx::PgPool;

/// The ceiling: the bare conditional `UPDATE` of the product row, one autocommit statement,
/// no order rows, no ledger.
pub const BARE_UPDATE: &str = "bare-update";

/// Every strategy [`build`] knows, in the order a run takes them when none are named: the
/// app's stock strategies (one parser, `StockStrategyKind`), then the ceiling.
pub const STRATEGIES: &[&str] = &[
    StockStrategyKind::NAMES[0],
    StockStrategyKind::NAMES[1],
    StockStrategyKind::NAMES[2],
    StockStrategyKind::NAMES[3],
    BARE_UPDATE,
];

/// The statement of [`BARE_UPDATE`].
const BARE_UPDATE_SQL: &str =
    "UPDATE commerce.products SET available = available - 1 WHERE id = $1 AND available >= 1";

/// What the clients of one run send their requests to.
#[derive(Debug, Clone)]
pub enum Target {
    /// Orders placed through commerce-core with a stock strategy.
    Orders(Commerce),
    /// The bare conditional `UPDATE` on the pool.
    BareUpdate(PgPool),
    /// Orders over HTTP through the reference app.
    Http(super::http::HttpTarget),
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// One unit taken (an order placed, or one row updated).
    Ok,
    /// Turned away for lack of stock (`InsufficientStock`, or no row updated).
    Rejected,
    /// Anything else, with its message.
    Failed(String),
}

/// The target named `strategy` on `pool`; `batch` configures `batching`.
///
/// # Errors
/// An unknown name, or Redis unreachable for `redis-lock`.
pub async fn build(strategy: &str, pool: PgPool, batch: BatchSettings) -> anyhow::Result<Target> {
    let builder = Commerce::builder(pool.clone());
    // Every client may queue on one key for the whole run: the wait outlasts the run.
    let options = LockOptions::new(Duration::from_secs(120), Duration::from_secs(10));
    if strategy == BARE_UPDATE {
        return Ok(Target::BareUpdate(pool));
    }
    let kind: StockStrategyKind = strategy.parse()?;
    Ok(match kind {
        StockStrategyKind::ConditionalUpdate => {
            Target::Orders(builder.strategy(commerce_core::ConditionalUpdate).build())
        }
        StockStrategyKind::RedisLock => {
            let url = commerce_testkit::redis_url();
            let lock = RedisLock::builder(url)
                .namespace(format!("commerce-load-{}", std::process::id()))
                .response_timeout(Duration::from_secs(30))
                .connect()
                .await
                .context("connect to Redis (run scripts/services.sh up)")?;
            Target::Orders(
                builder
                    .strategy(DistributedLockStrategy::new(lock).options(options))
                    .build(),
            )
        }
        StockStrategyKind::LocalLock => Target::Orders(
            builder
                .strategy(DistributedLockStrategy::new(LocalLock::new()).options(options))
                .build(),
        ),
        StockStrategyKind::Batching => {
            Target::Orders(builder.strategy(Batching::with_settings(batch)).build())
        }
    })
}

impl Target {
    /// Whether requests write orders (and so ledger rows the audit can check).
    #[must_use]
    pub fn writes_orders(&self) -> bool {
        matches!(self, Self::Orders(_) | Self::Http(_))
    }

    /// Takes one unit of `product` for `user`.
    pub async fn attempt(&self, user: &str, product: i64) -> Attempt {
        match self {
            Self::Orders(commerce) => {
                match commerce
                    .place_order(NewOrder::new(user).line(product, 1))
                    .await
                {
                    Ok(_) => Attempt::Ok,
                    Err(Error::InsufficientStock { .. }) => Attempt::Rejected,
                    Err(e) => Attempt::Failed(e.to_string()),
                }
            }
            Self::Http(http) => http.attempt(user, product).await,
            Self::BareUpdate(pool) => {
                match sqlx::query(BARE_UPDATE_SQL)
                    .bind(product)
                    .execute(pool)
                    .await
                {
                    Ok(done) => match done.rows_affected() {
                        1 => Attempt::Ok,
                        0 => Attempt::Rejected,
                        n => Attempt::Failed(format!("{n} rows updated")),
                    },
                    Err(e) => Attempt::Failed(e.to_string()),
                }
            }
        }
    }
}
