//! The stock load harness behind the `stock-load` program: concurrent clients take stock
//! through a [`Target`] (commerce-core with a stock strategy, or the bare conditional
//! `UPDATE`) for a set time on a freshly created database, then the database is checked
//! for overselling and for units unaccounted for.
//!
//! Per (strategy, scenario) it yields one [`Row`]: printed as a table line ([`line()`]),
//! written as JSON ([`write_json`]) and charted ([`write_svg`]).

mod check;
mod drive;
mod http;
mod plot;
mod profile;
mod report;
mod target;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use commerce_core::strategy::BatchSettings;
use commerce_core::{Commerce, NewProduct, ProductId};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

pub use http::HttpTarget;
pub use plot::write_svg;
pub use profile::{CpuSplit, Profile};
pub use report::{header, line, saga_line, write_json, Report, Row, SagaPace};
pub use target::{
    build, build_realistic, Attempt, Realistic, Target, BARE_UPDATE, CANCELS_PER_SECOND,
    RECEIPTS_PER_SECOND, STRATEGIES,
};

use drive::Recorder;
use report::Measured;

/// Pool size when `--connections` is not given: one per client, at most this many.
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;

/// How long a request may queue for a connection. With thousands of clients on a few
/// connections the queue is part of the latency being measured, not a failure.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(600);

/// A shape of load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Every order is for one product with plenty of stock: pure contention on one row.
    Hot,
    /// Orders spread uniformly over many products.
    Spread,
    /// One product with little stock, most orders turned away (`--clients` clients).
    Sellout,
    /// A flash sale: one product, `--flash-clients` clients, once per `--flash-stock`.
    Flash,
}

/// How requests are generated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Each client sends its next request when the last one is answered.
    Closed,
    /// Arrivals at a fixed rate per second, whatever the answers.
    Open {
        /// Arrivals per second.
        rate: f64,
    },
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("closed"),
            Self::Open { rate } => write!(f, "open@{rate}"),
        }
    }
}

/// Everything a run is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Strategy names, each one of [`STRATEGIES`].
    pub strategies: Vec<String>,
    /// Scenarios, each run for every strategy.
    pub scenarios: Vec<Scenario>,
    /// Concurrent clients (closed loop) or the cap on outstanding requests (open loop).
    pub clients: usize,
    /// Pool size; `None`: min(clients, [`DEFAULT_MAX_CONNECTIONS`]).
    pub connections: Option<u32>,
    /// How long each scenario runs.
    pub duration: Duration,
    /// Products in `spread`.
    pub products: i64,
    /// Initial stock per product in `hot` and `spread`.
    pub stock: i64,
    /// Initial stock in `sellout`.
    pub sellout_stock: i64,
    /// Clients (or the open-loop cap) in `flash`.
    pub flash_clients: usize,
    /// Initial stocks of `flash`: one run per value.
    pub flash_stock: Vec<i64>,
    /// Closed or open loop.
    pub mode: Mode,
    /// Database to drop and recreate for each run.
    pub database: String,
    /// Order strategies through the reference app over HTTP.
    pub http: bool,
    /// How `batching` forms its batches (through the crate API; over HTTP the app's
    /// defaults apply).
    pub batch: BatchSettings,
    /// Run what a deployment runs: two instances (own pools, the connections split between
    /// them), the outbox hook, an idempotency key on every order, and a trickle of
    /// cancellations and receipts (rows labelled `<strategy>+real`; the bare update runs as
    /// usual).
    pub realistic: bool,
}

/// One scenario with its numbers filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Row name: `hot`, `spread`, `sellout`, `flash-<stock>`.
    pub name: String,
    /// Products `1..=products` are created.
    pub products: i64,
    /// Initial stock of each.
    pub stock: i64,
    /// Clients, or the open-loop cap.
    pub clients: usize,
    /// Whether rates are measured around the sell-out instant.
    pub flash: bool,
}

impl Settings {
    /// Checks every value, so that a bad one fails before anything runs.
    ///
    /// # Errors
    /// The first bad value, named as its flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        for strategy in &self.strategies {
            // Over HTTP, `<strategy>+gateway` puts the gateway in front of the app.
            let (plain, through_gateway) = http::plain_strategy(strategy);
            if !STRATEGIES.contains(&plain) {
                bail!(
                    "--strategies: unknown strategy {strategy:?} (known: {}; over HTTP each \
                     also as <strategy>{} and <strategy>{})",
                    STRATEGIES.join(", "),
                    http::THROUGH_GATEWAY,
                    http::APART
                );
            }
            if through_gateway && (!self.http || plain == BARE_UPDATE) {
                bail!(
                    "--strategies: {strategy:?}: the gateway goes in front of the app, with \
                     --http and an order strategy"
                );
            }
        }
        if self.strategies.is_empty() {
            bail!("--strategies: name at least one");
        }
        if self.scenarios.is_empty() {
            bail!("--scenarios: name at least one");
        }
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if self.flash_clients == 0 {
            bail!("--flash-clients must be at least 1");
        }
        if self.connections == Some(0) {
            bail!("--connections must be at least 1");
        }
        if self.duration.is_zero() {
            bail!("--duration must be at least 1 second");
        }
        if self.products < 1 {
            bail!("--products must be at least 1");
        }
        if self.stock < 0 || self.sellout_stock < 0 {
            bail!("--stock and --sellout-stock must not be negative");
        }
        if self.scenarios.contains(&Scenario::Flash) && self.flash_stock.is_empty() {
            bail!("--flash-stock: name at least one stock");
        }
        if let Some(bad) = self.flash_stock.iter().find(|&&stock| stock < 1) {
            bail!("--flash-stock: {bad} is not a positive stock");
        }
        if self.batch.max_batch == 0 {
            bail!("--batch-max must be at least 1");
        }
        if self.batch.in_flight == 0 {
            bail!("--batch-in-flight must be at least 1");
        }
        if self.http && self.realistic {
            bail!("--realistic runs through the crate API, not with --http");
        }
        if self.http && self.batch != BatchSettings::default() {
            bail!("--batch-max and --batch-in-flight apply through the crate API, not with --http");
        }
        if let Mode::Open { rate } = self.mode {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("--rate must be a positive number of orders per second, not {rate}");
            }
        }
        let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if self.database.is_empty()
            || self.database.len() > 63
            || !self.database.chars().all(name_ok)
        {
            bail!(
                "--database {:?}: 1 to 63 letters, digits, '_' or '-'",
                self.database
            );
        }
        Ok(())
    }

    /// The scenarios with their numbers, `flash` once per stock.
    #[must_use]
    pub fn plans(&self) -> Vec<Plan> {
        let plan = |name: String, products, stock, clients, flash| Plan {
            name,
            products,
            stock,
            clients,
            flash,
        };
        let mut plans = Vec::new();
        for scenario in &self.scenarios {
            match scenario {
                Scenario::Hot => plans.push(plan("hot".into(), 1, self.stock, self.clients, false)),
                Scenario::Spread => plans.push(plan(
                    "spread".into(),
                    self.products,
                    self.stock,
                    self.clients,
                    false,
                )),
                Scenario::Sellout => plans.push(plan(
                    "sellout".into(),
                    1,
                    self.sellout_stock,
                    self.clients,
                    false,
                )),
                Scenario::Flash => {
                    for &stock in &self.flash_stock {
                        plans.push(plan(
                            format!("flash-{stock}"),
                            1,
                            stock,
                            self.flash_clients,
                            true,
                        ));
                    }
                }
            }
        }
        plans
    }

    /// The pool size for `plan`.
    ///
    /// # Errors
    /// When the client count does not fit a pool size.
    pub fn connections_for(&self, plan: &Plan) -> anyhow::Result<u32> {
        match self.connections {
            Some(n) => Ok(n),
            None => u32::try_from(plan.clients.min(DEFAULT_MAX_CONNECTIONS)).context("--clients"),
        }
    }
}

/// A pool of `connections` to database `name` for the clients: a long acquire timeout, and
/// no warning per slow acquire or statement (thousands a second when clients outnumber
/// connections, which is the point, and writing them would load the machine measured).
async fn load_pool(name: &str, connections: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = commerce_testkit::database_url()
        .parse()
        .context("DATABASE_URL")?;
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .acquire_slow_threshold(Duration::MAX)
        .connect_with(options.database(name).disable_statement_logging())
        .await
        .with_context(|| format!("connect to database {name}"))
}

/// How long an HTTP run waits, after the load, for the saga to pay every CREATED order.
pub const SAGA_DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Right after the load of an HTTP run: the orders paid so far per second of the run, the
/// CREATED backlog, and how long the app takes to pay it (polled every 50 ms, at most
/// [`SAGA_DRAIN_LIMIT`]).
async fn saga_pace(pool: &PgPool, elapsed: Duration) -> anyhow::Result<SagaPace> {
    let count = |status: &'static str| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM commerce.orders WHERE status = $1")
            .bind(status)
            .fetch_one(pool)
            .await
            .context("count orders by status")
    };
    let stopped = std::time::Instant::now();
    let paid = count("PROCESSING").await?;
    let created_at_stop = count("CREATED").await?;
    let mut drained_after_s = None;
    while stopped.elapsed() < SAGA_DRAIN_LIMIT {
        if count("CREATED").await? == 0 {
            drained_after_s = Some(stopped.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(SagaPace {
        paid_per_s: report::per_second(u64::try_from(paid).unwrap_or(0), elapsed),
        created_at_stop: u64::try_from(created_at_stop).unwrap_or(0),
        drained_after_s,
    })
}

/// Runs `plan` against `strategy` on a freshly created database and checks the result.
///
/// # Errors
/// Database or Redis unreachable, an unknown strategy, a client task that panicked.
pub async fn run(settings: &Settings, strategy: &str, plan: &Plan) -> anyhow::Result<Row> {
    let connections = settings.connections_for(plan)?;
    crate::fresh_database(&settings.database, 1)
        .await?
        .close()
        .await;
    let pool = load_pool(&settings.database, connections).await?;
    let (target, app) = if settings.http && strategy != BARE_UPDATE {
        let (target, app) =
            http::start(strategy, &settings.database, connections, plan.clients).await?;
        (Target::Http(target), Some(app))
    } else if settings.realistic && strategy != BARE_UPDATE {
        let half = (connections / 2).max(1);
        let pools = [
            load_pool(&settings.database, half).await?,
            load_pool(&settings.database, half).await?,
        ];
        let target = build_realistic(strategy, pools, settings.batch, plan.products).await?;
        (target, None)
    } else {
        (build(strategy, pool.clone(), settings.batch).await?, None)
    };
    let setup = Commerce::builder(pool.clone()).build();
    for id in 1..=plan.products {
        setup
            .create_product(
                // A price the stand-in payment gateway approves (over HTTP every order is
                // charged).
                NewProduct::new(ProductId(id), format!("load product {id}"))
                    .price(1_000)
                    .stock(plan.stock),
            )
            .await?;
    }
    let ledger_before = check::ledger_sums(&pool).await?;

    let before = profile::Sample::take(&pool).await?;
    let recorder = Arc::new(Recorder::new(plan.products)?);
    let deadline = recorder.start() + settings.duration;
    let trickle = match &target {
        Target::Realistic(realistic) => {
            let (realistic, products) = (Arc::clone(realistic), plan.products);
            Some(tokio::spawn(async move {
                realistic.trickle(products, deadline.into()).await
            }))
        }
        _ => None,
    };
    match settings.mode {
        Mode::Closed => {
            drive::closed_loop(&target, &recorder, plan.clients, plan.products, deadline).await?;
        }
        Mode::Open { rate } => {
            drive::open_loop(
                &target,
                &recorder,
                plan.clients,
                plan.products,
                rate,
                deadline,
            )
            .await?;
        }
    }
    let trickle_failed = match trickle {
        Some(trickle) => trickle.await.context("the cancel and receipt trickle")?,
        None => 0,
    };
    let elapsed = recorder.start().elapsed();
    let after = profile::Sample::take(&pool).await?;
    let totals = recorder.totals()?;
    let profile = before.profile(&after, totals.ok);
    let mut saga = None;
    if let Some(app) = app {
        saga = Some(saga_pace(&pool, elapsed).await?);
        // Stopped before the checks: its background work (the payment saga) ends first.
        app.stop().await.context("stop the reference app")?;
    }

    let received = match &target {
        Target::Realistic(realistic) => realistic.received(),
        _ => Vec::new(),
    };
    let mut verdict = check::verify(
        &pool,
        target.writes_orders(),
        plan.stock,
        &totals,
        &ledger_before,
        &received,
    )
    .await?;
    if trickle_failed > 0 {
        verdict
            .problems
            .push(format!("{trickle_failed} cancellations or receipts failed"));
    }
    pool.close().await;
    let label = match target {
        Target::Http(_) => format!("{strategy}+http"),
        Target::Realistic(_) => format!("{strategy}+real"),
        _ => strategy.to_owned(),
    };
    Ok(Row::new(
        &label,
        plan,
        settings.mode,
        connections,
        Measured {
            elapsed,
            totals,
            verdict,
            writes_orders: target.writes_orders(),
            profile,
            saga,
        },
    ))
}
