//! Load harness for stock strategies: N concurrent clients place orders against the real
//! database for a set time, then the harness checks that nothing was oversold.
//!
//! ```text
//! cargo run --release -p commerce-examples --bin stock-load -- --clients 32 --duration 10
//! cargo run --release -p commerce-examples --bin stock-load -- --strategies conditional-update,redis-lock
//! ```
//!
//! Scenarios (each on a freshly created database `commerce_load`):
//! - `hot`: every order is for one product with plenty of stock (pure contention on one row);
//! - `spread`: orders spread uniformly over 1,000 products;
//! - `sellout`: a flash sale: one product with little stock, most orders are turned away.
//!
//! Every strategy named with `--strategies` runs every scenario in the same run, so their
//! figures are comparable.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use commerce_core::{Commerce, DistributedLockStrategy, Error, NewOrder, NewProduct, ProductId};
use commerce_lock::{LocalLock, LockOptions, RedisLock};
use hdrhistogram::Histogram;
use rand::Rng;

const STRATEGIES: &str = "conditional-update,redis-lock,local-lock";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Hot,
    Spread,
    Sellout,
}

#[derive(Debug, Parser)]
#[command(about = "Measures stock strategies under concurrent order load")]
struct Args {
    /// Strategies to compare, comma-separated: conditional-update, redis-lock, local-lock.
    #[arg(long, value_delimiter = ',', default_value = STRATEGIES)]
    strategies: Vec<String>,
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "hot,spread,sellout"
    )]
    scenarios: Vec<Scenario>,
    /// Concurrent clients (also the connection pool size).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds each scenario runs.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Products in the `spread` scenario.
    #[arg(long, default_value_t = 1000)]
    products: i64,
    /// Initial stock per product in `hot` and `spread`.
    #[arg(long, default_value_t = 10_000_000)]
    stock: i64,
    /// Initial stock of the product in `sellout`.
    #[arg(long, default_value_t = 1000)]
    sellout_stock: i64,
}

/// What one scenario run measured.
struct Outcome {
    ok: u64,
    rejected: u64,
    errors: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    checks: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_examples::init_tracing();
    let args = Args::parse();
    println!(
        "{:<20} {:<8} {:>7} {:>10} {:>11} {:>7} {:>8} {:>8} {:>8}  check",
        "strategy",
        "scenario",
        "clients",
        "ok/s",
        "rejected/s",
        "errors",
        "p50 ms",
        "p99 ms",
        "max ms"
    );
    let mut failed = false;
    for strategy in &args.strategies {
        for scenario in &args.scenarios {
            let outcome = run(&args, strategy, *scenario).await?;
            let secs = outcome.elapsed.as_secs_f64();
            let ms = |q: f64| outcome.latency.value_at_quantile(q) as f64 / 1000.0;
            let check = if outcome.checks.is_empty() {
                "ok: not oversold, ledger consistent".to_owned()
            } else {
                failed = true;
                format!("FAILED: {}", outcome.checks.join("; "))
            };
            println!(
                "{:<20} {:<8} {:>7} {:>10.1} {:>11.1} {:>7} {:>8.2} {:>8.2} {:>8.2}  {check}",
                strategy,
                format!("{scenario:?}").to_lowercase(),
                args.clients,
                outcome.ok as f64 / secs,
                outcome.rejected as f64 / secs,
                outcome.errors,
                ms(0.5),
                ms(0.99),
                outcome.latency.max() as f64 / 1000.0,
            );
        }
    }
    if failed {
        bail!("consistency check failed");
    }
    Ok(())
}

async fn build(strategy: &str, pool: sqlx::PgPool) -> anyhow::Result<Commerce> {
    let builder = Commerce::builder(pool);
    // Every client may queue on one key for the whole run: the wait outlasts the run.
    let options = LockOptions::new(Duration::from_secs(120), Duration::from_secs(10));
    Ok(match strategy {
        "conditional-update" => builder.strategy(commerce_core::ConditionalUpdate).build(),
        "redis-lock" => {
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            let lock = RedisLock::builder(url)
                .namespace(format!("commerce-load-{}", std::process::id()))
                .response_timeout(Duration::from_secs(30))
                .connect()
                .await
                .context("connect to Redis (run scripts/services.sh up)")?;
            builder
                .strategy(DistributedLockStrategy::new(lock).options(options))
                .build()
        }
        "local-lock" => builder
            .strategy(DistributedLockStrategy::new(LocalLock::new()).options(options))
            .build(),
        other => bail!("unknown strategy {other:?} (known: {STRATEGIES})"),
    })
}

async fn run(args: &Args, strategy: &str, scenario: Scenario) -> anyhow::Result<Outcome> {
    let connections = u32::try_from(args.clients).context("--clients")?.max(2);
    let pool = commerce_examples::fresh_database("commerce_load", connections).await?;
    let commerce = build(strategy, pool).await?;
    let (products, stock) = match scenario {
        Scenario::Hot => (1, args.stock),
        Scenario::Spread => (args.products, args.stock),
        Scenario::Sellout => (1, args.sellout_stock),
    };
    for id in 1..=products {
        commerce
            .create_product(
                NewProduct::new(ProductId(id), format!("load product {id}")).stock(stock),
            )
            .await?;
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let clients: Vec<_> = (0..args.clients)
        .map(|client| {
            let commerce = commerce.clone();
            tokio::spawn(async move { client_loop(commerce, client, products, deadline).await })
        })
        .collect();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut sold = vec![0_i64; usize::try_from(products)? + 1];
    let (mut ok, mut rejected, mut errors) = (0, 0, 0);
    for client in clients {
        let report = client.await?;
        ok += report.ok;
        rejected += report.rejected;
        errors += report.errors;
        latency.add(&report.latency)?;
        for (total, n) in sold.iter_mut().zip(report.sold) {
            *total += n;
        }
    }
    let elapsed = start.elapsed();

    let mut checks = Vec::new();
    let ids: Vec<ProductId> = (1..=products).map(ProductId).collect();
    for level in commerce.stock_of(&ids).await? {
        let expected = stock - sold[usize::try_from(level.product.0)?];
        if level.available != expected || level.available < 0 {
            checks.push(format!(
                "product {}: available {} but start - sold = {expected}",
                level.product, level.available
            ));
        }
    }
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM commerce.orders")
        .fetch_one(commerce.pool())
        .await?;
    if orders != i64::try_from(ok)? {
        checks.push(format!("{orders} orders stored but {ok} confirmed"));
    }
    let audit = commerce.audit().await?;
    checks.extend(audit.violations.into_iter().take(5));
    commerce.pool().close().await;
    Ok(Outcome {
        ok,
        rejected,
        errors,
        elapsed,
        latency,
        checks,
    })
}

struct ClientReport {
    ok: u64,
    rejected: u64,
    errors: u64,
    latency: Histogram<u64>,
    sold: Vec<i64>,
}

async fn client_loop(
    commerce: Commerce,
    client: usize,
    products: i64,
    deadline: Instant,
) -> ClientReport {
    let mut report = ClientReport {
        ok: 0,
        rejected: 0,
        errors: 0,
        latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
        sold: vec![0; usize::try_from(products).unwrap_or(0) + 1],
    };
    let user = format!("load-client-{client}");
    while Instant::now() < deadline {
        let product = if products == 1 {
            1
        } else {
            rand::thread_rng().gen_range(1..=products)
        };
        let started = Instant::now();
        let outcome = commerce
            .place_order(NewOrder::new(user.as_str()).line(product, 1))
            .await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        report.latency.saturating_record(micros);
        match outcome {
            Ok(_) => {
                report.ok += 1;
                if let Some(n) = usize::try_from(product)
                    .ok()
                    .and_then(|p| report.sold.get_mut(p))
                {
                    *n += 1;
                }
            }
            Err(Error::InsufficientStock { .. }) => report.rejected += 1,
            Err(e) => {
                if report.errors == 0 {
                    tracing::warn!(client, error = %e, "order failed");
                }
                report.errors += 1;
            }
        }
    }
    report
}
