//! The commerce-rs reference order system.
//!
//! Today it assembles commerce-core on the configured database and drives it end to end:
//! a catalogue, a crowd of customers ordering at the same time (both shortage policies,
//! repeated requests), restocking that serves the backorder queue, fulfilment and
//! cancellations, then an audit of stock against the ledger. The HTTP services (gateway,
//! order, payment, store) and the saga over Kafka build on the same pieces.

pub mod catalog;
pub mod events;
pub mod fake_pg;
pub mod payment;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use commerce_core::{
    Commerce, Error, NewOrder, NewProduct, OrderId, OrderStatus, ProductId, ShortagePolicy,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use tokio::sync::Barrier;

use crate::catalog::Catalog;
use crate::events::EventPipeline;

/// Settings, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/commerce`); the database is
    /// created if missing.
    pub database_url: String,
    /// `DB_MAX_CONNECTIONS` (default 20).
    pub max_connections: u32,
    /// `DEMO_CUSTOMERS` (default 500): customers ordering at the same moment.
    pub customers: usize,
    /// `DEMO_SEED` (default 7): seed of the customers' random choices.
    pub seed: u64,
    /// `KAFKA_BROKERS`: when set, commerce-core's events go through the outbox to Kafka and
    /// an order consumer; unset, no events are written.
    pub kafka_brokers: Option<String>,
    /// `REDIS_URL`: when set, the product cache's L2 and invalidations go through Redis
    /// (several instances); unset, both stay in-process (one instance).
    pub redis_url: Option<String>,
}

impl Config {
    /// Reads the settings, with the documented defaults.
    ///
    /// # Errors
    /// When a number does not parse.
    pub fn from_env() -> anyhow::Result<Self> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
        where
            T::Err: std::error::Error + Send + Sync + 'static,
        {
            match std::env::var(name) {
                Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
                Err(_) => Ok(default),
            }
        }
        Ok(Self {
            database_url: std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/commerce".to_owned()),
            max_connections: var("DB_MAX_CONNECTIONS", 20)?,
            customers: var("DEMO_CUSTOMERS", 500)?,
            seed: var("DEMO_SEED", 7)?,
            redis_url: std::env::var("REDIS_URL")
                .ok()
                .filter(|url| !url.is_empty()),
            kafka_brokers: std::env::var("KAFKA_BROKERS")
                .ok()
                .filter(|brokers| !brokers.is_empty()),
        })
    }
}

/// Connects to (creating if needed) and migrates the database.
///
/// # Errors
/// When the server cannot be reached or a migration fails.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    if !Postgres::database_exists(&config.database_url).await? {
        Postgres::create_database(&config.database_url).await?;
    }
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .connect(&config.database_url)
        .await
        .with_context(|| {
            format!(
                "connect to {} (run scripts/services.sh up)",
                config.database_url
            )
        })?;
    commerce_core::MIGRATOR
        .run(&pool)
        .await
        .context("migrate commerce-core")?;
    Ok(pool)
}

const CATALOGUE: [(i64, &str, i64); 5] = [
    (1001, "Espresso machine", 40),
    (1002, "Burr grinder", 25),
    (1003, "Milk jug", 120),
    (1004, "Limited-edition mug", 10),
    (1005, "Descaler", 300),
];

/// Runs the end-to-end scenario and prints what happened; fails if the audit does.
///
/// # Errors
/// Database errors, or an inconsistent audit.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let pool = connect(&config).await?;
    let since = chrono::Utc::now();
    let mut builder = Commerce::builder(pool.clone());
    let pipeline = match &config.kafka_brokers {
        Some(brokers) => {
            builder = builder.hook(events::outbox_hook());
            Some(EventPipeline::start(pool, brokers, since).await?)
        }
        None => None,
    };
    let commerce = builder.build();
    for (id, name, stock) in CATALOGUE {
        match commerce
            .create_product(NewProduct {
                id: ProductId(id),
                name: name.into(),
                initial_stock: stock,
            })
            .await
        {
            Ok(_) | Err(Error::ProductAlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let ids: Vec<ProductId> = CATALOGUE.iter().map(|(id, ..)| ProductId(*id)).collect();
    let redis = config
        .redis_url
        .as_deref()
        .map(redis::Client::open)
        .transpose()?;
    let catalog = Catalog::new(commerce.clone(), redis, "reference-app").await?;
    morning_delivery(&commerce).await?;
    print_stock("stock before the rush", &catalog, &ids).await?;

    let started = Instant::now();
    let run_id = uuid_like(config.seed);
    let placed = rush(&commerce, &config, &run_id).await?;
    println!(
        "{} customers ordered at once in {:.0} ms: {} created, {} backordered, {} rejected (out of stock), {} repeats answered with the first order",
        config.customers,
        started.elapsed().as_secs_f64() * 1000.0,
        placed.created.len(),
        placed.backordered.len(),
        placed.rejected,
        placed.replayed,
    );

    for (id, ..) in CATALOGUE {
        let receipt = commerce
            .receive_stock(ProductId(id), 30, Some("restock"))
            .await?;
        let promoted = receipt
            .allocations
            .iter()
            .filter(|a| a.order_created)
            .count();
        if !receipt.allocations.is_empty() {
            println!(
                "restock of {id}: {} units to {} backorders, {promoted} orders now complete",
                receipt.allocations.iter().map(|a| a.quantity).sum::<i64>(),
                receipt.allocations.len()
            );
        }
    }

    let mut shipped = 0;
    let mut cancelled = 0;
    for (i, order) in placed.created.iter().enumerate() {
        if i % 10 == 0 {
            commerce.cancel_order(*order, "customer cancelled").await?;
            cancelled += 1;
            continue;
        }
        for (to, reason) in [
            (OrderStatus::Processing, "payment captured"),
            (OrderStatus::Shipped, "handed to carrier"),
        ] {
            commerce.transition_order(*order, to, reason).await?;
        }
        shipped += 1;
    }
    println!("fulfilment: {shipped} orders shipped, {cancelled} cancelled (stock returned)");
    print_stock("stock after restock and fulfilment", &catalog, &ids).await?;
    let metrics = catalog.metrics();
    println!(
        "product cache ({}): L1 hits {}, L2 hits {}, loads {}",
        if config.redis_url.is_some() {
            "moka + Redis"
        } else {
            "moka + in-process"
        },
        metrics.l1.hits,
        metrics.l2.hits,
        metrics.loads
    );
    catalog.shutdown().await;

    if let Some(pipeline) = pipeline {
        let (written, delivered) = pipeline.drain(Duration::from_secs(60)).await?;
        println!(
            "order events: {written} written to the outbox in their order transactions, {delivered} delivered through Kafka to the order consumer"
        );
        anyhow::ensure!(
            written == delivered,
            "{} order events did not arrive",
            written - delivered
        );
    }

    let audit = commerce.audit().await?;
    if !audit.is_consistent() {
        anyhow::bail!("audit failed:\n{}", audit.violations.join("\n"));
    }
    println!(
        "audit: {} products, {} orders: stock equals the ledger, nothing oversold, backorders consistent",
        audit.products, audit.orders
    );
    Ok(())
}

/// Tops every product up to its catalogue stock plus what earlier runs left backordered: the
/// delivery serves those backorders first (oldest first), so each run starts from the same
/// shelf whatever the database went through before.
async fn morning_delivery(commerce: &Commerce) -> anyhow::Result<()> {
    for (id, _, stock) in CATALOGUE {
        let level = commerce.stock(ProductId(id)).await?;
        let top_up = stock + level.backordered - level.available;
        if top_up > 0 {
            let receipt = commerce
                .receive_stock(ProductId(id), top_up, Some("morning delivery"))
                .await?;
            if !receipt.allocations.is_empty() {
                println!(
                    "morning delivery of {id}: {} backorders from earlier runs served first",
                    receipt.allocations.len()
                );
            }
        }
    }
    Ok(())
}

fn uuid_like(seed: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{seed}-{nanos}")
}

#[derive(Default)]
struct Rush {
    created: Vec<OrderId>,
    backordered: Vec<OrderId>,
    rejected: usize,
    replayed: usize,
}

/// Every customer orders at the same moment; every fifth one repeats its request.
async fn rush(commerce: &Commerce, config: &Config, run_id: &str) -> anyhow::Result<Rush> {
    let barrier = Arc::new(Barrier::new(config.customers));
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut tasks = Vec::with_capacity(config.customers);
    for customer in 0..config.customers {
        let mut order = NewOrder::new(format!("customer-{customer}"))
            .idempotency_key(format!("{run_id}-{customer}"));
        let lines = rng.gen_range(1..=3);
        let mut products: Vec<i64> = CATALOGUE.iter().map(|(id, ..)| *id).collect();
        for _ in 0..lines {
            let product = products.swap_remove(rng.gen_range(0..products.len()));
            order = order.line(product, rng.gen_range(1..=2));
        }
        if rng.gen_bool(0.3) {
            order = order.policy(ShortagePolicy::Backorder);
        }
        let repeat = customer % 5 == 0;
        let (commerce, barrier) = (commerce.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let first = commerce.place_order(order.clone()).await;
            let again = if repeat {
                Some(commerce.place_order(order).await)
            } else {
                None
            };
            (first, again)
        }));
    }
    let mut rush = Rush::default();
    for task in tasks {
        let (first, again) = task.await?;
        match first {
            Ok(placed) => match placed.order.status {
                OrderStatus::Backordered => rush.backordered.push(placed.order.id),
                _ => rush.created.push(placed.order.id),
            },
            Err(Error::InsufficientStock { .. }) => rush.rejected += 1,
            Err(e) => return Err(e.into()),
        }
        if let Some(Ok(placed)) = again {
            anyhow::ensure!(placed.replayed, "a repeated request created a second order");
            rush.replayed += 1;
        }
    }
    Ok(rush)
}

async fn print_stock(title: &str, catalog: &Catalog, ids: &[ProductId]) -> anyhow::Result<()> {
    println!("{title}:");
    for level in catalog.commerce().stock_of(ids).await? {
        let name = catalog
            .product(level.product)
            .await?
            .map_or_else(|| "?".to_owned(), |p| p.name);
        println!(
            "  {:>5} {:<20} available {:>4}  backordered {:>4}",
            level.product, name, level.available, level.backordered
        );
    }
    Ok(())
}
