//! Load harness for stock strategies: concurrent clients take stock against the real database
//! for a set time, then the harness checks that nothing was oversold and every unit is
//! accounted for. Every strategy runs every scenario in the same run, so their figures are
//! comparable; `bare-update` (the bare conditional `UPDATE`, no order rows) is the ceiling.
//!
//! ```text
//! cargo run --release -p commerce-examples --bin stock-load -- --clients 32 --duration 10
//! cargo run --release -p commerce-examples --bin stock-load -- --strategies conditional-update,bare-update --scenarios hot,flash
//! cargo run --release -p commerce-examples --bin stock-load -- --clients 10000 --connections 32 --scenarios hot
//! cargo run --release -p commerce-examples --bin stock-load -- --scenarios flash --flash-clients 10000 --flash-stock 1000,1000000
//! cargo run --release -p commerce-examples --bin stock-load -- --rate 500 --clients 1000 --scenarios hot
//! cargo run --release -p commerce-examples --bin stock-load -- --json load.json --plot load.svg
//! cargo run --release -p commerce-examples --bin stock-load -- --strategies batching --scenarios hot --clients 5000 --batch-in-flight 3
//! cargo run --release -p commerce-examples --bin stock-load -- --realistic --strategies redis-lock,batching --scenarios hot,spread
//! cargo run --release -p commerce-examples --bin stock-load -- --http --with-crate --strategies batching --scenarios hot --duration 5
//! ```
//!
//! Over HTTP each row gets a saga line: orders paid per second, the orders still CREATED when
//! the load stopped and how long the app took to pay them; with `--with-crate`, the ratio to
//! the crate API's row of the same strategy, run just before.
//! The app's background work runs on a runtime of its own (`SAGA_THREADS`, default the number of cores);
//! `SAGA_THREADS=0` in the environment runs it among the requests, for comparison.
//!
//! Scenarios (each on a freshly created database, `--database`, default `commerce_load`):
//! - `hot`: every order is for one product with plenty of stock (pure contention on one row);
//! - `spread`: orders spread uniformly over `--products` products;
//! - `sellout`: one product with little stock, most orders are turned away;
//! - `flash`: a flash sale, one product, `--flash-clients` clients, once per `--flash-stock`
//!   (rows `flash-<stock>`): ok/s counts while stock remained, rejected/s after the sell-out.
//!
//! Closed loop by default (`--clients` clients, each sending its next request when the last
//! is answered); `--rate R` makes it open loop: arrivals at R per second on a fixed schedule,
//! latency from the intended arrival time, at most `--clients` outstanding, the rest shed
//! (counted as errors). The pool has `--connections` connections (default min(clients, 32)).
//!
//! Besides latency and rates, each row shows what bounded it: write transactions per second
//! and orders per write transaction on the server, and the cores in use by Postgres, Redis,
//! this process and everything else over the run (from `/proc`, on Linux).

/// The allocator the reference app's binary uses (`--http` runs the app in this process).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use commerce_core::strategy::BatchSettings;
use commerce_examples::load::{self, Mode, Scenario, Settings, STRATEGIES};

#[derive(Debug, Parser)]
#[command(about = "Measures stock strategies under concurrent order load")]
struct Args {
    /// Strategies to compare, comma-separated, e.g. conditional-update,bare-update
    /// (default: every known strategy, the bare-update ceiling included).
    #[arg(long, value_delimiter = ',')]
    strategies: Vec<String>,
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "hot,spread,sellout"
    )]
    scenarios: Vec<Scenario>,
    /// Concurrent clients (tokio tasks); in open loop, the cap on outstanding requests.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Database pool size [default: min(clients, 32)].
    #[arg(long)]
    connections: Option<u32>,
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
    /// Clients in `flash` (in open loop, the cap on outstanding requests).
    #[arg(long, default_value_t = 10_000)]
    flash_clients: usize,
    /// Initial stocks of `flash`, comma-separated: one row each.
    #[arg(long, value_delimiter = ',', default_value = "1000,1000000")]
    flash_stock: Vec<i64>,
    /// Open loop at this many orders per second (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Database dropped and recreated for each run.
    #[arg(long, default_value = "commerce_load")]
    database: String,
    /// Runs the order strategies through the reference app over HTTP (started in this process
    /// on each run's database); `bare-update` still runs directly, as the ceiling.
    #[arg(long)]
    http: bool,
    /// Runs what a deployment runs (crate API): two instances of each strategy with their
    /// own pools, the outbox hook on, an idempotency key on every order, and a trickle of
    /// cancellations (50/s) and receipts (10/s); rows are labelled `<strategy>+real`.
    #[arg(long)]
    realistic: bool,
    /// With `--http`: each order strategy also runs through the crate API, just before its
    /// HTTP rows, and the HTTP rows' saga line gives the ratio of the two.
    #[arg(long, requires = "http")]
    with_crate: bool,
    /// The `batching` strategy's largest batch, in orders (crate API only).
    #[arg(long, default_value_t = BatchSettings::default().max_batch)]
    batch_max: usize,
    /// The `batching` strategy's batches of one product in flight at once under a surge
    /// (crate API only).
    #[arg(long, default_value_t = BatchSettings::default().in_flight)]
    batch_in_flight: usize,
    /// Writes every row as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Writes bar charts (ok/s and p99 per strategy, per scenario) to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

impl Args {
    fn settings(self) -> Settings {
        Settings {
            strategies: if self.strategies.is_empty() {
                STRATEGIES.iter().map(|&s| s.to_owned()).collect()
            } else {
                self.strategies
            },
            scenarios: self.scenarios,
            clients: self.clients,
            connections: self.connections,
            duration: Duration::from_secs(self.duration),
            products: self.products,
            stock: self.stock,
            sellout_stock: self.sellout_stock,
            flash_clients: self.flash_clients,
            flash_stock: self.flash_stock,
            mode: self.rate.map_or(Mode::Closed, |rate| Mode::Open { rate }),
            database: self.database,
            http: self.http,
            realistic: self.realistic,
            batch: BatchSettings {
                max_batch: self.batch_max,
                in_flight: self.batch_in_flight,
                ..BatchSettings::default()
            },
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_examples::init_tracing();
    let args = Args::parse();
    let (json, plot, with_crate) = (args.json.clone(), args.plot.clone(), args.with_crate);
    let settings = args.settings();
    let through_crate = Settings {
        http: false,
        ..settings.clone()
    };
    settings.validate()?;
    let plans = settings.plans();

    println!("{}", load::header());
    let mut rows = Vec::new();
    for strategy in &settings.strategies {
        for plan in &plans {
            let crate_row = if with_crate && strategy != load::BARE_UPDATE {
                let row = load::run(&through_crate, strategy, plan).await?;
                println!("{}", load::line(&row));
                rows.push(row.clone());
                Some(row)
            } else {
                None
            };
            let row = load::run(&settings, strategy, plan).await?;
            println!("{}", load::line(&row));
            if let Some(saga) = load::saga_line(&row, crate_row.as_ref()) {
                println!("{saga}");
            }
            rows.push(row);
        }
    }
    if let Some(path) = &json {
        load::write_json(path, &rows)?;
    }
    if let Some(path) = &plot {
        load::write_svg(path, &rows)?;
    }
    if rows.iter().any(|row| !row.check_ok) {
        bail!("consistency check failed");
    }
    Ok(())
}
