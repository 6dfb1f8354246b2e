//! The systems put under load, by name: commerce-core with a stock strategy, or the bare
//! conditional `UPDATE` every strategy is measured against.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use commerce_core::strategy::{BatchSettings, Batching};
use commerce_core::{
    Commerce, CommerceBuilder, DistributedLockStrategy, Error, NewOrder, OrderId, OutboxHook,
    ProductId,
};
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
    /// What a deployment runs (`--realistic`): two instances of the strategy, each with its
    /// own pool, taking turns; the outbox hook on; an idempotency key on every order; and
    /// [`Realistic::trickle`] cancelling and restocking meanwhile.
    Realistic(Arc<Realistic>),
}

/// Cancellations per second in a `--realistic` run (of orders placed during it).
pub const CANCELS_PER_SECOND: u64 = 50;
/// Receipts (one unit each) per second in a `--realistic` run.
pub const RECEIPTS_PER_SECOND: u64 = 10;

/// The two instances of a `--realistic` run and what its trickle did.
#[derive(Debug)]
pub struct Realistic {
    instances: [Commerce; 2],
    next: AtomicUsize,
    /// Orders placed lately, for the trickle to cancel (the newest few thousand).
    placed: Mutex<VecDeque<OrderId>>,
    /// Units received per product during the run, indexed by product id.
    received: Vec<AtomicI64>,
}

impl Realistic {
    /// Units received during the run per product id (index 0 unused).
    #[must_use]
    pub fn received(&self) -> Vec<i64> {
        self.received
            .iter()
            .map(|units| units.load(Ordering::Relaxed))
            .collect()
    }

    /// Until `deadline`: cancels [`CANCELS_PER_SECOND`] orders placed during the run (the
    /// newest first) and receives one unit of a product in `1..=products`
    /// [`RECEIPTS_PER_SECOND`] times a second, alternating instances. Returns the number of
    /// cancellations and receipts that failed.
    pub async fn trickle(&self, products: i64, deadline: tokio::time::Instant) -> u64 {
        let mut cancel =
            tokio::time::interval(Duration::from_micros(1_000_000 / CANCELS_PER_SECOND));
        let mut receive =
            tokio::time::interval(Duration::from_micros(1_000_000 / RECEIPTS_PER_SECOND));
        let (mut failed, mut turn, mut product) = (0, 0_usize, 0_i64);
        loop {
            turn += 1;
            let commerce = &self.instances[turn % 2];
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return failed,
                _ = cancel.tick() => {
                    let order = self.placed.lock().unwrap_or_else(PoisonError::into_inner).pop_back();
                    if let Some(order) = order {
                        if commerce.cancel_order(order, "load: customer cancelled").await.is_err() {
                            failed += 1;
                        }
                    }
                }
                _ = receive.tick() => {
                    product = product % products + 1;
                    match commerce.receive_stock(ProductId(product), 1, Some("load: restock")).await {
                        Ok(_) => {
                            if let Some(units) = usize::try_from(product).ok().and_then(|p| self.received.get(p)) {
                                units.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => failed += 1,
                    }
                }
            }
        }
    }
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
    if strategy == BARE_UPDATE {
        return Ok(Target::BareUpdate(pool));
    }
    Ok(Target::Orders(
        with_strategy(strategy, Commerce::builder(pool), batch)
            .await?
            .build(),
    ))
}

/// The `--realistic` target of `strategy`: two instances on `pools` (each its own), the
/// outbox hook on each, for `products` products (the bare update has no such run).
///
/// # Errors
/// An unknown name, or Redis unreachable for `redis-lock`.
pub async fn build_realistic(
    strategy: &str,
    pools: [PgPool; 2],
    batch: BatchSettings,
    products: i64,
) -> anyhow::Result<Target> {
    let [first, second] = pools;
    let instance = |pool: PgPool| async move {
        let builder = Commerce::builder(pool).hook(OutboxHook::with_topics("orders", "stock"));
        Ok::<_, anyhow::Error>(with_strategy(strategy, builder, batch).await?.build())
    };
    let instances = [instance(first).await?, instance(second).await?];
    Ok(Target::Realistic(Arc::new(Realistic {
        instances,
        next: AtomicUsize::new(0),
        placed: Mutex::new(VecDeque::new()),
        received: (0..=products).map(|_| AtomicI64::new(0)).collect(),
    })))
}

/// `builder` with the stock strategy named `strategy`.
async fn with_strategy(
    strategy: &str,
    builder: CommerceBuilder,
    batch: BatchSettings,
) -> anyhow::Result<CommerceBuilder> {
    // Every client may queue on one key for the whole run: the wait outlasts the run.
    let options = LockOptions::new(Duration::from_secs(120), Duration::from_secs(10));
    let kind: StockStrategyKind = strategy.parse()?;
    Ok(match kind {
        StockStrategyKind::ConditionalUpdate => builder.strategy(commerce_core::ConditionalUpdate),
        StockStrategyKind::RedisLock => {
            let url = commerce_testkit::redis_url();
            let lock = RedisLock::builder(url)
                .namespace(format!("commerce-load-{}", std::process::id()))
                .response_timeout(Duration::from_secs(30))
                .connect()
                .await
                .context("connect to Redis (run scripts/services.sh up)")?;
            builder.strategy(DistributedLockStrategy::new(lock).options(options))
        }
        StockStrategyKind::LocalLock => {
            builder.strategy(DistributedLockStrategy::new(LocalLock::new()).options(options))
        }
        StockStrategyKind::Batching => builder.strategy(Batching::with_settings(batch)),
    })
}

impl Target {
    /// Whether requests write orders (and so ledger rows the audit can check).
    #[must_use]
    pub fn writes_orders(&self) -> bool {
        matches!(self, Self::Orders(_) | Self::Http(_) | Self::Realistic(_))
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
            Self::Realistic(realistic) => {
                let turn = realistic.next.fetch_add(1, Ordering::Relaxed);
                let order = NewOrder::new(user)
                    .line(product, 1)
                    .idempotency_key(uuid::Uuid::new_v4().to_string());
                match realistic.instances[turn % 2].place_order(order).await {
                    Ok(placed) => {
                        let mut recent = realistic
                            .placed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        if recent.len() >= 4_096 {
                            recent.pop_front();
                        }
                        recent.push_back(placed.order.id);
                        Attempt::Ok
                    }
                    Err(Error::InsufficientStock { .. }) => Attempt::Rejected,
                    Err(e) => Attempt::Failed(e.to_string()),
                }
            }
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
