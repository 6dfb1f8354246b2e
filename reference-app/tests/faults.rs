//! The fault suite: the distributed deployment (two order instances, two payment instances,
//! two store instances, the gateway, each a process of the `reference-app` binary) on servers
//! the suite owns (a private Postgres made by `initdb`, a private `redis-server`, a private
//! broker), under steady traffic through the
//! gateway while faults are injected one at a time. Every client operation is recorded with
//! its answer (`traffic.rs`); after each fault and its recovery the history is checked
//! against the database, the payment gateway and the caches (`check.rs`), and one table is
//! printed: fault, operations, acknowledged, lost, doubled, stuck, recovery time. Last, a
//! surge at five times the measured capacity.
//!
//! `FAULTS_MODE=full` (what `scripts/faults.sh` runs) gives each round more customers and
//! longer traffic before and after the fault, and the surge 30 s; the short mode (the default,
//! part of `scripts/test.sh`) keeps the faults' own durations and shortens the rest.
//! `FAULTS_ONLY=name,name` runs only the named faults. `FAULTS_STRATEGY` sets the instances'
//! `STOCK_STRATEGY` (default `batching`; `redis-lock` puts the Redis lock and its fencing under
//! the faults: `scripts/faults.sh` runs a round of the Redis faults on it).

#[path = "faults/check.rs"]
mod check;
mod common;
#[path = "faults/traffic.rs"]
mod traffic;

use std::sync::Arc;
use std::time::Duration;

use commerce_client::{ApiClient, CreateProduct, PlaceOrder};
use commerce_testkit::{PrivateBroker, PrivatePostgres, PrivateRedis, TcpProxy};
use common::deployment::{footprint, Deployment, Process, Servers};
use common::gateway::Weather;
use reference_app::auth::Role;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::time::Instant;

use check::Findings;
use traffic::{Cast, History, Load, Op, Seen, Traffic};

/// The saga's timeout in this deployment (the app's default, `SAGA_TIMEOUT_SECS`).
const SAGA_TIMEOUT: Duration = Duration::from_secs(30);

/// How long after a fault is healed everything must have settled: every order final or
/// paid, no money held for a cancelled one, no event pending (the saga's timeout plus 30 s).
const SETTLE_BOUND: Duration = SAGA_TIMEOUT.saturating_add(Duration::from_secs(30));

/// The bound on the p99 latency of the orders the surge got accepted.
const SURGE_P99: Duration = Duration::from_secs(5);

/// How long a round's traffic runs before and after its fault, and how hard.
#[derive(Debug, Clone, Copy)]
struct Mode {
    name: &'static str,
    before: Duration,
    after: Duration,
    load: Load,
    surge: Duration,
}

impl Mode {
    fn from_env() -> Self {
        match std::env::var("FAULTS_MODE").as_deref() {
            Ok("full") => Self {
                name: "full",
                before: Duration::from_secs(8),
                after: Duration::from_secs(8),
                load: Load {
                    customers: 24,
                    think: Duration::from_millis(20),
                    watchers: 3,
                },
                surge: Duration::from_secs(30),
            },
            _ => Self {
                name: "short",
                before: Duration::from_secs(3),
                after: Duration::from_secs(3),
                load: Load {
                    customers: 8,
                    think: Duration::from_millis(40),
                    watchers: 2,
                },
                surge: Duration::from_secs(10),
            },
        }
    }
}

/// One fault, injected while the traffic runs, then healed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    BrokerStopped,
    BrokerRestarted,
    RedisStopped,
    PostgresKilled,
    PostgresConnectionsKilled,
    OrderInstanceKilled,
    PaymentInstanceKilled,
    StoreInstanceKilled,
    RelayKilledMidBatch,
    PaymentGatewayTimesOut,
    PaymentGatewayFailsHalf,
    PaymentGatewayAnswers409,
    PaymentGatewayAnswers429,
    RedisBlackHoled,
    PostgresBlackHoled,
}

impl Fault {
    const ALL: [Self; 15] = [
        Self::BrokerStopped,
        Self::BrokerRestarted,
        Self::RedisStopped,
        Self::PostgresKilled,
        Self::PostgresConnectionsKilled,
        Self::OrderInstanceKilled,
        Self::PaymentInstanceKilled,
        Self::StoreInstanceKilled,
        Self::RelayKilledMidBatch,
        Self::PaymentGatewayTimesOut,
        Self::PaymentGatewayFailsHalf,
        Self::PaymentGatewayAnswers409,
        Self::PaymentGatewayAnswers429,
        Self::RedisBlackHoled,
        Self::PostgresBlackHoled,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::BrokerStopped => "broker frozen 10 s",
            Self::BrokerRestarted => "broker down 10 s",
            Self::RedisStopped => "redis stopped 5 s",
            Self::PostgresKilled => "postgres SIGKILL",
            Self::PostgresConnectionsKilled => "pg_terminate_backend",
            Self::OrderInstanceKilled => "order-1 SIGKILL",
            Self::PaymentInstanceKilled => "payment-1 SIGKILL",
            Self::StoreInstanceKilled => "store-1 SIGKILL",
            Self::RelayKilledMidBatch => "relay killed mid-batch",
            Self::PaymentGatewayTimesOut => "PG times out 10 s",
            Self::PaymentGatewayFailsHalf => "PG fails half 10 s",
            Self::PaymentGatewayAnswers409 => "PG answers 409 10 s",
            Self::PaymentGatewayAnswers429 => "PG answers 429 10 s",
            Self::RedisBlackHoled => "redis black hole 5 s",
            Self::PostgresBlackHoled => "postgres black hole 5 s",
        }
    }

    /// The short name `FAULTS_ONLY` takes.
    fn key(self) -> String {
        format!("{self:?}")
    }
}

/// The servers, the processes and the clients of the run.
struct World {
    postgres: PrivatePostgres,
    redis: PrivateRedis,
    broker: PrivateBroker,
    /// Every client's way to the broker (it advertises this address): its restart as the
    /// clients see it.
    broker_proxy: TcpProxy,
    /// order-1's and store-1's way to Postgres and to Redis: the black holes.
    postgres_proxy: TcpProxy,
    redis_proxy: TcpProxy,
    deployment: Deployment,
    order: Vec<Process>,
    payment: Vec<Process>,
    store: Vec<Process>,
    gateway: Process,
    pool: PgPool,
    cast: Arc<Cast>,
    admin: ApiClient,
    stores: Vec<ApiClient>,
}

impl World {
    async fn start(customers: usize) -> Self {
        let postgres = PrivatePostgres::start().await;
        let redis = PrivateRedis::start().await;
        let broker_port = common::deployment::free_port();
        let broker_proxy = TcpProxy::start(format!("127.0.0.1:{broker_port}")).await;
        let broker = PrivateBroker::start_advertising(broker_port, broker_proxy.address()).await;
        let mut admin_db = PgConnection::connect(&postgres.url("postgres"))
            .await
            .unwrap();
        sqlx::query("CREATE DATABASE faults")
            .execute(&mut admin_db)
            .await
            .unwrap();
        let _ = admin_db.close().await;
        let postgres_proxy = TcpProxy::start(format!("127.0.0.1:{}", postgres.port())).await;
        let redis_proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port())).await;
        let mut deployment = Deployment::on(Servers {
            database: postgres.url("faults"),
            redis: redis.url(),
            brokers: broker.brokers(),
        })
        .await;
        if let Ok(strategy) = std::env::var("FAULTS_STRATEGY") {
            deployment.strategy = strategy;
        }
        let proxied = vec![
            (
                "DATABASE_URL",
                format!("postgres://postgres@{}/faults", postgres_proxy.address()),
            ),
            ("REDIS_URL", format!("redis://{}", redis_proxy.address())),
        ];
        // The first process migrates the database; the others start together.
        let store_1 = deployment.start("store-1", "store", &proxied).await;
        let (store_2, order_1, order_2, payment_1, payment_2) = tokio::join!(
            deployment.start("store-2", "store", &[]),
            deployment.start("order-1", "order", &proxied),
            deployment.start("order-2", "order", &[]),
            deployment.start("payment-1", "payment", &[]),
            deployment.start("payment-2", "payment", &[]),
        );
        // The gateway's default admission (adaptive, 500 ms latency target): the surge round
        // checks that it needs no sizing to the machine.
        let gateway = deployment
            .start_gateway(&[&order_1, &order_2], &[&store_1, &store_2], &[])
            .await;
        let admin = deployment.client(&gateway.url, "admin", Role::Admin);
        let mut products = Vec::new();
        for n in 0..8 {
            let product = admin
                .create_product(&CreateProduct {
                    sku: format!("FAULT-{n}"),
                    name: format!("item {n}"),
                    price: 1_000 + n,
                    initial_stock: 300,
                })
                .await
                .expect("a product created through the gateway");
            products.push(product.id);
        }
        let customers = (0..customers)
            .map(|n| {
                let user = format!("customer-{n}");
                let client = deployment.client(&gateway.url, &user, Role::Customer);
                (user, client)
            })
            .collect();
        let stores = [&store_1, &store_2]
            .iter()
            .map(|s| deployment.client(&s.url, "admin", Role::Admin))
            .collect();
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&postgres.url("faults"))
            .await
            .unwrap();
        Self {
            postgres,
            redis,
            broker,
            broker_proxy,
            postgres_proxy,
            redis_proxy,
            cast: Arc::new(Cast {
                customers,
                admin: admin.clone(),
                products,
            }),
            deployment,
            order: vec![order_1, order_2],
            payment: vec![payment_1, payment_2],
            store: vec![store_1, store_2],
            gateway,
            pool,
            admin,
            stores,
        }
    }

    /// Injects `fault` and heals it; returns when it is healed (a killed process started
    /// again, a server back).
    async fn inject(&mut self, fault: Fault) {
        // A killed instance stays down for a second, then has this long to be ready again.
        let (down, restart) = (Duration::from_secs(1), Duration::from_secs(90));
        match fault {
            Fault::BrokerStopped => {
                self.broker.pause();
                tokio::time::sleep(Duration::from_secs(10)).await;
                self.broker.resume();
            }
            Fault::BrokerRestarted => {
                // Every connection closed, new ones reset, for 10 s; the broker keeps its
                // topics, records and group offsets, as one with durable storage would.
                self.broker_proxy.down();
                tokio::time::sleep(Duration::from_secs(10)).await;
                self.broker_proxy.forward();
            }
            Fault::RedisStopped => {
                self.redis.stop();
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.redis.restart().await;
            }
            Fault::PostgresKilled => {
                tokio::task::block_in_place(|| self.postgres.kill());
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.postgres.restart().await;
            }
            Fault::PostgresConnectionsKilled => {
                self.postgres.terminate_connections().await;
            }
            Fault::OrderInstanceKilled => {
                let process = &mut self.order[0];
                assert!(
                    self.deployment
                        .crash_and_restart(process, down, restart)
                        .await
                );
            }
            Fault::PaymentInstanceKilled => {
                let process = &mut self.payment[0];
                assert!(
                    self.deployment
                        .crash_and_restart(process, down, restart)
                        .await
                );
            }
            Fault::StoreInstanceKilled => {
                let process = &mut self.store[0];
                assert!(
                    self.deployment
                        .crash_and_restart(process, down, restart)
                        .await
                );
            }
            Fault::RelayKilledMidBatch => {
                // order-2 relays what it writes: killed the moment events wait to be sent.
                let until = Instant::now() + Duration::from_secs(10);
                while Instant::now() < until {
                    let pending: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM commerce_outbox.event WHERE status = 'pending'",
                    )
                    .fetch_one(&self.pool)
                    .await
                    .unwrap_or(0);
                    if pending > 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let process = &mut self.order[1];
                assert!(
                    self.deployment
                        .crash_and_restart(process, down, restart)
                        .await
                );
            }
            Fault::PaymentGatewayTimesOut
            | Fault::PaymentGatewayFailsHalf
            | Fault::PaymentGatewayAnswers409
            | Fault::PaymentGatewayAnswers429 => {
                self.deployment.payments.set_weather(match fault {
                    Fault::PaymentGatewayTimesOut => Weather::Hang,
                    Fault::PaymentGatewayFailsHalf => Weather::FailHalf,
                    Fault::PaymentGatewayAnswers409 => Weather::Refuse(409),
                    _ => Weather::Refuse(429),
                });
                tokio::time::sleep(Duration::from_secs(10)).await;
                self.deployment.payments.set_weather(Weather::Fine);
            }
            Fault::RedisBlackHoled => {
                self.redis_proxy.black_hole();
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.redis_proxy.forward();
            }
            Fault::PostgresBlackHoled => {
                self.postgres_proxy.black_hole();
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.postgres_proxy.forward();
            }
        }
    }

    /// How long until an order placed through the gateway is acknowledged again (a keyed
    /// one, recorded in the history like any other).
    async fn back(&self, round: usize, history: &History) -> Option<Duration> {
        let started = Instant::now();
        let probe = self
            .deployment
            .client(&self.gateway.url, "probe", Role::Customer);
        let product = self.cast.products[0];
        let mut n = 0;
        while started.elapsed() < SETTLE_BOUND {
            n += 1;
            let key = format!("probe-r{round}-{n}");
            let answer = probe
                .place_order_with_key(&PlaceOrder::one(product, 1), &key)
                .await;
            let seen = Seen::of(&answer, |placed| Some(placed.order.id));
            let done = matches!(seen, Seen::Done(_))
                || matches!(&seen, Seen::Refused(409, code) if code == "insufficient_stock");
            history.record(
                round,
                Op::Place {
                    user: "probe".to_owned(),
                    key: Some(key),
                    seen,
                },
            );
            if done {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Polls the checks until they pass or `bound` (from `since`) runs out: the time it
    /// took, and what the last check found.
    async fn settle(
        &self,
        history: &History,
        since: Instant,
        bound: Duration,
    ) -> (Option<Duration>, Findings) {
        loop {
            let ops = history.ops();
            let found = check::check(
                &self.pool,
                &ops,
                &self.deployment.payments,
                &self.admin,
                &self.stores,
            )
            .await;
            if found.clean() {
                return (Some(since.elapsed()), found);
            }
            if since.elapsed() >= bound {
                return (None, found);
            }
            if std::env::var_os("FAULTS_VERBOSE").is_some() {
                eprintln!(
                    "    {:.1} s: {}",
                    since.elapsed().as_secs_f64(),
                    found.notes.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn tails(&self) -> String {
        self.order
            .iter()
            .chain(&self.payment)
            .chain(&self.store)
            .chain(std::iter::once(&self.gateway))
            .map(Process::log_tail)
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

/// One line of the table.
struct Row {
    fault: String,
    /// Orders of this round the saga cancelled for want of a payment answer.
    timed_out: usize,
    tally: traffic::Tally,
    found: Findings,
    back: Option<Duration>,
    /// Whether the caches were compared after this round (not after the surge).
    cache_checked: bool,
    cache: Option<Duration>,
    settled: Option<Duration>,
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".to_owned(), |d| format!("{:.1}", d.as_secs_f64()))
}

fn table(rows: &[Row]) -> String {
    let mut text = format!(
        "{:<26} {:>6} {:>6} {:>6} {:>6} {:>5} {:>7} {:>7} {:>5} {:>5} {:>5} {:>7} {:>6} {:>7} {:>8}\n",
        "fault", "ops", "acked", "refus", "unans", "lost", "doubled", "phantom", "stuck",
        "money", "audit", "timeout", "back s", "cache s", "settled"
    );
    for row in rows {
        text.push_str(&format!(
            "{:<26} {:>6} {:>6} {:>6} {:>6} {:>5} {:>7} {:>7} {:>5} {:>5} {:>5} {:>7} {:>6} {:>7} {:>8}\n",
            row.fault,
            row.tally.ops,
            row.tally.acknowledged,
            row.tally.refused,
            row.tally.unknown,
            row.found.lost,
            row.found.doubled,
            row.found.phantom,
            row.found.stuck,
            row.found.money,
            if row.found.audit_consistent { "ok" } else { "BAD" },
            row.timed_out,
            secs(row.back),
            if row.cache_checked {
                secs(row.cache)
            } else {
                "-".to_owned()
            },
            secs(row.settled),
        ));
    }
    text
}

/// Runs one round: traffic, the fault, its recovery, the checks.
async fn round(
    world: &mut World,
    mode: Mode,
    number: usize,
    fault: Fault,
    history: &Arc<History>,
    timed_out_before: usize,
) -> Row {
    let traffic = Traffic::start(&world.cast, mode.load, number, history);
    tokio::time::sleep(mode.before).await;
    world.inject(fault).await;
    let healed = Instant::now();
    let back = world.back(number, history).await;
    tokio::time::sleep(mode.after).await;
    traffic.stop().await;
    // The caches: every store instance reads what the database holds, at once.
    let stopped = Instant::now();
    let mut notes = Vec::new();
    let cache = loop {
        if check::stale(&world.pool, &world.stores, &mut notes).await == 0 {
            break Some(stopped.elapsed());
        }
        if stopped.elapsed() > Duration::from_secs(10) {
            break None;
        }
        notes.clear();
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (settled, found) = world.settle(history, healed, SETTLE_BOUND).await;
    let ops = history.ops();
    let row = Row {
        fault: fault.name().to_owned(),
        timed_out: found.timed_out.saturating_sub(timed_out_before),
        tally: traffic::tally(&ops, number),
        found,
        back,
        cache_checked: true,
        cache,
        settled,
    };
    eprintln!(
        "{}{}",
        table(std::slice::from_ref(&row))
            .lines()
            .nth(1)
            .unwrap_or_default(),
        if row.found.notes.is_empty() {
            String::new()
        } else {
            format!("\n    {}", row.found.notes.join("\n    "))
        }
    );
    let refusals = traffic::refusals(&ops, number);
    if !refusals.is_empty() {
        eprintln!("    refused: {refusals:?}");
    }
    let unanswered = traffic::unanswered(&ops, number);
    if !unanswered.is_empty() {
        eprintln!("    unanswered: {unanswered:?}");
    }
    row
}

/// The surge: closed-loop capacity first, then five times that offered for `mode.surge`.
struct Surge {
    capacity: f64,
    offered: usize,
    answered: std::collections::BTreeMap<u16, usize>,
    /// 429 or 503 without `Retry-After`, or an error status without the JSON body, or any
    /// other status: each a violation.
    violations: Vec<String>,
    transport_errors: usize,
    p50: Duration,
    p99: Duration,
    footprint_before: Vec<(String, u64, usize)>,
    footprint_after: Vec<(String, u64, usize)>,
    back: Option<Duration>,
}

async fn surge(world: &World, mode: Mode, round: usize, history: &Arc<History>) -> Surge {
    let gateway = world.gateway.url.clone();
    let product = world
        .admin
        .create_product(&CreateProduct {
            sku: "FAULT-SURGE".to_owned(),
            name: "surge".to_owned(),
            price: 500,
            initial_stock: 10_000_000,
        })
        .await
        .expect("the surge's product")
        .id;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4_096)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..200)
            .map(|n| {
                world
                    .deployment
                    .auth
                    .issue(
                        &format!("surge-{n}"),
                        Role::Customer,
                        Duration::from_secs(3600),
                    )
                    .unwrap()
            })
            .collect(),
    );
    let body = serde_json::to_value(PlaceOrder::one(product, 1)).unwrap();
    let send = {
        let (http, gateway, body) = (http.clone(), gateway.clone(), body.clone());
        move |n: usize, tokens: Arc<Vec<String>>| {
            let (http, gateway, body) = (http.clone(), gateway.clone(), body.clone());
            async move {
                let started = Instant::now();
                let answer = http
                    .post(format!("{gateway}/api/v1/orders"))
                    .bearer_auth(&tokens[n % tokens.len()])
                    .json(&body)
                    .send()
                    .await;
                match answer {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let retry_after = response.headers().contains_key("retry-after");
                        let text = response.text().await.unwrap_or_default();
                        Ok((status, retry_after, text, started.elapsed(), n))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    };
    // Capacity: 32 clients back to back for 3 s.
    let measured = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..32 {
        let (send, tokens) = (send.clone(), tokens.clone());
        clients.spawn(async move {
            let mut ok = 0usize;
            let mut seen = Vec::new();
            while measured.elapsed() < Duration::from_secs(3) {
                if let Ok((status, _, text, _, _)) = send(c, tokens.clone()).await {
                    if status == 201 {
                        ok += 1;
                    }
                    seen.push((status, text));
                }
            }
            (ok, seen)
        });
    }
    let mut ok = 0;
    let mut placed = Vec::new();
    while let Some(done) = clients.join_next().await {
        let (n, seen) = done.unwrap();
        ok += n;
        placed.extend(seen);
    }
    let capacity = ok as f64 / measured.elapsed().as_secs_f64();
    record_surge(history, round, &placed);

    let pids = |world: &World| -> Vec<(String, u64, usize)> {
        std::iter::once(&world.gateway)
            .chain(&world.order)
            .filter_map(|p| p.pid().map(|pid| (p.name.clone(), pid)))
            .map(|(name, pid)| {
                let (rss, fds) = footprint(pid);
                (name, rss, fds)
            })
            .collect()
    };
    let footprint_before = pids(world);
    let rate = (capacity * 5.0).max(50.0);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    let mut offered = 0usize;
    let mut next = started;
    while started.elapsed() < mode.surge {
        tokio::time::sleep_until(next).await;
        next += interval;
        let (send, tokens) = (send.clone(), tokens.clone());
        requests.spawn(send(offered, tokens));
        offered += 1;
    }
    let mut answered = std::collections::BTreeMap::new();
    let mut violations = Vec::new();
    let mut transport_errors = 0;
    let mut latencies = Vec::new();
    let mut seen = Vec::new();
    while let Some(done) = requests.join_next().await {
        match done.unwrap() {
            Ok((status, retry_after, text, took, _)) => {
                *answered.entry(status).or_insert(0) += 1;
                let body_ok = status < 400
                    || serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v.pointer("/error/code").map(serde_json::Value::is_string))
                        .unwrap_or(false);
                let allowed = matches!(status, 200..=299 | 409 | 429 | 503);
                if (!allowed || !body_ok || (matches!(status, 429 | 503) && !retry_after))
                    && violations.len() < 10
                {
                    violations.push(format!("{status} retry-after={retry_after}: {text}"));
                }
                if status == 201 {
                    latencies.push(took);
                }
                seen.push((status, text));
            }
            Err(e) => {
                transport_errors += 1;
                if violations.len() < 10 {
                    violations.push(format!("no answer: {e}"));
                }
            }
        }
    }
    record_surge(history, round, &seen);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back_since = Instant::now();
    let mut back = None;
    while back_since.elapsed() < Duration::from_secs(10) {
        if let Ok((201, ..)) = send(0, tokens.clone()).await {
            back = Some(back_since.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The surge's own keep-alive connections closed first: what stays open then is the
    // deployment's.
    drop(send);
    drop(http);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let footprint_after = pids(world);
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Surge {
        capacity,
        offered,
        answered,
        violations,
        transport_errors,
        p50: at(0.5),
        p99: at(0.99),
        footprint_before,
        footprint_after,
        back,
    }
}

/// The surge's placements in the history: a 201 is an order (its id from the body), a 4xx
/// refused, anything else unanswered. One user per placement is not what the surge sends,
/// so they go under one user, `surge`, whose books the checks keep like any other's.
fn record_surge(history: &History, round: usize, seen: &[(u16, String)]) {
    for (status, text) in seen {
        let seen = match *status {
            201 | 202 => Seen::Done(
                serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned))
                    .and_then(|id| id.parse().ok()),
            ),
            400..=499 => Seen::Refused(*status, String::new()),
            _ => Seen::Unknown(format!("{status}")),
        };
        history.record(
            round,
            Op::Place {
                user: "surge".to_owned(),
                key: None,
                seen,
            },
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_lose_double_and_strand_nothing() {
    let mode = Mode::from_env();
    let only: Option<Vec<String>> = std::env::var("FAULTS_ONLY")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.split(',').map(str::to_owned).collect());
    let faults: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|f| only.as_ref().is_none_or(|o| o.contains(&f.key())))
        .collect();
    let started = Instant::now();
    let mut world = World::start(mode.load.customers).await;
    eprintln!(
        "fault suite ({} mode, stock by {}): deployment up in {:.1} s; {} faults",
        mode.name,
        world.deployment.strategy,
        started.elapsed().as_secs_f64(),
        faults.len()
    );
    let history = Arc::new(History::default());
    let mut rows = Vec::new();
    let mut timed_out = 0;
    for (number, fault) in faults.iter().enumerate() {
        let row = round(&mut world, mode, number, *fault, &history, timed_out).await;
        timed_out = row.found.timed_out;
        rows.push(row);
    }
    let surge_round = faults.len();
    let surged = if only.as_ref().is_none_or(|o| o.iter().any(|f| f == "Surge")) {
        let surged = surge(&world, mode, surge_round, &history).await;
        let healed = Instant::now();
        let (settled, found) = world.settle(&history, healed, SETTLE_BOUND).await;
        rows.push(Row {
            fault: format!("surge 5x for {} s", mode.surge.as_secs()),
            timed_out: found.timed_out.saturating_sub(timed_out),
            tally: traffic::tally(&history.ops(), surge_round),
            found,
            back: surged.back,
            cache_checked: false,
            cache: None,
            settled,
        });
        Some(surged)
    } else {
        None
    };

    let report = table(&rows);
    eprintln!(
        "\n{report}\nstatus streams: {} opened, {} events, {} failed",
        history.streams.load(std::sync::atomic::Ordering::Relaxed),
        history
            .stream_events
            .load(std::sync::atomic::Ordering::Relaxed),
        history
            .stream_errors
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    if let Some(s) = &surged {
        eprintln!(
            "surge: capacity {:.0} orders/s (32 clients, 3 s), offered {} in {} s ({:.0}/s); \
             answers {:?}, {} without an answer; accepted p50 {:.0} ms, p99 {:.0} ms; back \
             {}; footprint (RSS KiB, descriptors) before {:?}, after {:?}",
            s.capacity,
            s.offered,
            mode.surge.as_secs(),
            s.offered as f64 / mode.surge.as_secs_f64(),
            s.answered,
            s.transport_errors,
            s.p50.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3,
            secs(s.back),
            s.footprint_before,
            s.footprint_after,
        );
    }
    eprintln!("total {:.0} s", started.elapsed().as_secs_f64());

    let failed: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.found.clean() || r.settled.is_none() || r.back.is_none())
        .collect();
    let mut problems: Vec<String> = failed
        .iter()
        .map(|r| format!("{}: {}", r.fault, r.found.notes.join("; ")))
        .collect();
    for row in &rows {
        if row.cache_checked && row.cache.is_none_or(|c| c > Duration::from_secs(1)) {
            problems.push(format!(
                "{}: the caches agreed only after {}",
                row.fault,
                secs(row.cache)
            ));
        }
    }
    if let Some(s) = &surged {
        if !s.violations.is_empty() {
            problems.push(format!("surge answers: {:?}", s.violations));
        }
        if s.back.is_none_or(|b| b > Duration::from_secs(2)) {
            problems.push(format!(
                "surge: placements back only after {}",
                secs(s.back)
            ));
        }
        if s.p99 > SURGE_P99 {
            problems.push(format!(
                "surge: accepted p99 {:.1} s, above {SURGE_P99:?}",
                s.p99.as_secs_f64()
            ));
        }
        for ((name, rss_before, fds_before), (_, rss_after, fds_after)) in
            s.footprint_before.iter().zip(&s.footprint_after)
        {
            if *rss_after > rss_before * 2 + 20_000 || *fds_after > fds_before + 200 {
                problems.push(format!(
                    "surge: {name} grew from {rss_before} KiB and {fds_before} descriptors to \
                     {rss_after} KiB and {fds_after}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{report}\n{}\n\n{}",
        problems.join("\n"),
        world.tails()
    );
}
