//! Assembling the services into one running system (the all-in-one mode).

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use axum::Router;
use commerce_core::{Commerce, DistributedLockStrategy, OrderLimits, OutboxHook};
use commerce_lock::{LocalLock, LockOptions, RedisLock};
use commerce_outbox::EventHandler;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::{Config, PaymentGateway, SecretUrl, Service, StockStrategyKind};
use crate::events::EventBus;
use crate::http::{self, Limits};
use crate::services::admin::Consumers;
use crate::services::contracts::Topics;
use crate::services::ops::{OpsState, ProbeState, ReadinessCheck};
use crate::services::order::saga::{
    spawn_answer_reconciliation, spawn_timeout_sweep, PaymentAnswers, SagaStart,
};
use crate::services::order::watch::NotifyStatusChanges;
use crate::services::order::{Currency, OrderState, PlacementRate, SagaPace, StatusFeed, Streams};
use crate::services::payment::gateway::GatewayClient;
use crate::services::payment::stand_in::{self, StandInConfig, StandInControl};
use crate::services::payment::{OrderEvents, PaymentWorker};
use crate::services::statistics;
use crate::services::store::catalog::Catalog;
use crate::services::store::StoreState;
use crate::services::{admin, ops, order, store};

/// The system, built and bound, not yet serving.
pub struct Application {
    listener: TcpListener,
    router: Router,
    parts: Parts,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("address", &self.listener.local_addr().ok())
            .field("transport", &self.parts.bus.kind())
            .finish_non_exhaustive()
    }
}

/// What runs besides the HTTP server, and how to stop it.
struct Parts {
    pool: PgPool,
    background: PgPool,
    /// The event streams' pool.
    streams: PgPool,
    /// `/ready`'s connection.
    probe: PgPool,
    catalog: Catalog,
    bus: EventBus,
    /// Cancelled at the shutdown signal: `/ready` answers 503.
    draining: CancellationToken,
    /// Cancelled once drained: the server stops accepting, streams and background work end.
    shutdown: CancellationToken,
    tasks: TaskTracker,
    drain: Duration,
    grace: Duration,
    stand_in: Option<(String, StandInControl)>,
    /// The background work's runtime: shut down last, once the pools are closed.
    bulkhead: Bulkhead,
}

/// The runtime of its own that the background work runs on (`SAGA_THREADS` worker threads):
/// with it, 2,000 request tasks ready at once on the server's runtime no longer stand between
/// the saga's tasks and their next turn, and a flash crowd's orders are paid while it lasts
/// instead of after it. With 0 threads the work runs on the server's runtime.
struct Bulkhead {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl Bulkhead {
    /// A runtime of `threads` worker threads, or the current one for 0.
    fn new(threads: usize) -> anyhow::Result<Self> {
        if threads == 0 {
            return Ok(Self {
                runtime: None,
                handle: tokio::runtime::Handle::current(),
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("saga")
            .enable_all()
            .build()
            .context("the saga's runtime")?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// Runs `work` on the bulkhead to its end: what it starts (connections, tasks) belongs
    /// there.
    async fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.handle
            .spawn(work)
            .await
            .context("start-up work on the saga's runtime")
    }
}

impl Drop for Bulkhead {
    /// Ends the runtime without waiting (dropping a runtime blocks until its tasks end, which
    /// an async context may not do): by `Parts::stop` its work has stopped or was abandoned
    /// at the grace period; an application built and never run ends it here too.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Application {
    /// Connections a flash crowd may open at once before the kernel starts dropping them
    /// (bounded by `net.core.somaxconn`). Tokio's default, 1,024, dropped connections of a
    /// 2,000-client crowd: their SYNs were retried after 1 + 2 + 4 + 8 s, and `stock-load --http`
    /// saw a request take 16.5 s while the p99 was 0.75 s.
    const LISTEN_BACKLOG: u32 = 8_192;

    /// A listening socket on `address` with [`Self::LISTEN_BACKLOG`].
    fn listen(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
        let socket = if address.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        socket.listen(Self::LISTEN_BACKLOG)
    }

    /// Connects to (creating if needed) and migrates the database, starts the event
    /// transport, the consumers, the relay, the payment worker, the saga timeout sweep and
    /// (without `PAYMENT_GATEWAY_URL`) the stand-in payment gateway, and binds the port.
    ///
    /// # Errors
    /// When a server cannot be reached, a migration fails or the port cannot be bound.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        // Metrics recorded from now on reach /metrics.
        crate::telemetry::prometheus();
        let pool = connect(&config).await?;
        // Background work (relay, consumers, payment worker, timeout sweep, the stand-in
        // gateway) runs on a runtime of its own, with a pool of its own created there: a surge
        // of requests can starve the saga neither of connections nor of turns, nor the saga
        // the requests.
        let bulkhead = Bulkhead::new(config.saga.threads)?;
        let background = bulkhead
            .run({
                let config = config.clone();
                async move {
                    side_pool(
                        &config,
                        config.database.background_connections,
                        Duration::from_secs(30),
                        "background pool",
                    )
                    .await
                }
            })
            .await??;
        // So do the event streams: however many poll, requests and the saga keep theirs.
        let streams = side_pool(
            &config,
            config.database.stream_connections,
            Duration::from_secs(30),
            "event streams' pool",
        )
        .await?;
        // And `/ready`: one connection, so a saturated request pool does not take the instance
        // out of rotation (and the load onto the others).
        let probe = side_pool(&config, 1, Duration::from_secs(2), "readiness pool").await?;
        let draining = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();

        let topics = Topics::new(&config.events.prefix);
        let mut bus = bulkhead
            .run({
                let (background, brokers, topics, session) = (
                    background.clone(),
                    config.events.kafka_brokers.clone(),
                    topics.clone(),
                    config.events.session_timeout,
                );
                async move { EventBus::new(background, brokers.as_deref(), &topics, session).await }
            })
            .await?
            .context("event transport")?;
        // A request waits for a product's lock as long as it may take in all; the HTTP layer's
        // timeout ends it then.
        let lock_options =
            LockOptions::new(config.http.request_timeout, LockOptions::DEFAULT_LEASE);
        let commerce = match config.stock.strategy {
            StockStrategyKind::ConditionalUpdate => Commerce::builder(pool.clone()),
            StockStrategyKind::Batching => Commerce::builder(pool.clone()).strategy(
                commerce_core::strategy::Batching::with_settings(config.stock.batch),
            ),
            StockStrategyKind::LocalLock => Commerce::builder(pool.clone())
                .strategy(DistributedLockStrategy::new(LocalLock::new()).options(lock_options)),
            StockStrategyKind::RedisLock => {
                let url = config
                    .redis_url
                    .as_ref()
                    .context("STOCK_STRATEGY=redis-lock needs REDIS_URL")?;
                let lock = RedisLock::connect(url.expose().to_owned())
                    .await
                    .with_context(|| format!("REDIS_URL {url} (lock)"))?;
                Commerce::builder(pool.clone())
                    .strategy(DistributedLockStrategy::new(lock).options(lock_options))
            }
        };
        let commerce = commerce
            .limits(OrderLimits {
                max_backordered_units_per_user: config.orders.max_backordered_units_per_user,
                max_open_orders_per_user: config.orders.max_open_orders_per_user,
                ..OrderLimits::default()
            })
            .hook(OutboxHook::with_topics(&topics.orders, &topics.stock))
            .hook(SagaStart::new(
                config.payment.currency.clone(),
                topics.orders.clone(),
            ))
            .hook(NotifyStatusChanges)
            .build();
        let redis = config
            .redis_url
            .as_ref()
            .map(|url| redis::Client::open(url.expose()))
            .transpose()
            .context("REDIS_URL")?;
        // The deployment's name keys its cache in Redis too: deployments (and tests) sharing a
        // Redis server on other databases never read each other's products.
        let catalog = Catalog::new(commerce.clone(), redis.clone(), &config.events.prefix)
            .await
            .context("product cache")?;
        let auth = Auth::new(&config.auth.jwt_secret).context("COMMERCE_JWT_SECRET")?;

        let service = config.service;
        // The payment service: the gateway client, its worker and its consumer.
        let (payment, stand_in) = if service.runs(Service::Payment) {
            let (worker, stand_in) =
                payment_worker(&config, &bulkhead, &background, &topics, &shutdown, &tasks).await?;
            (Some(worker), stand_in)
        } else {
            (None, None)
        };
        let mut handlers: Vec<(String, Arc<dyn EventHandler>)> = Vec::new();
        let feed = StatusFeed::new();
        let saga_pace = SagaPace::default();
        {
            // What these start runs on the bulkhead (no await while it is entered).
            let _entered = bulkhead.handle.enter();
            // A fresh database's tables analyzed as they grow, so the saga's lookups by id do
            // not keep plans made on empty tables until autovacuum comes by.
            statistics::spawn_first_statistics(background.clone(), shutdown.clone(), &tasks);
            if let Some(worker) = &payment {
                let order_events = OrderEvents::new(
                    worker.wake(),
                    topics.payments.clone(),
                    config.payment.currency.clone(),
                );
                let group = topics.group("payment-service");
                bus.consume(&group, &[&topics.orders], order_events.clone())?;
                handlers.push((group, Arc::new(order_events)));
                worker.clone().spawn(shutdown.clone(), &tasks);
            }
            if service.runs(Service::Order) {
                // The order service's side of the saga.
                let payment_answers = PaymentAnswers::new(commerce.clone());
                let group = topics.group("order-service");
                bus.consume(&group, &[&topics.payments], payment_answers.clone())?;
                handlers.push((group, Arc::new(payment_answers)));
                spawn_timeout_sweep(
                    commerce.clone(),
                    config.saga.timeout,
                    shutdown.clone(),
                    &tasks,
                );
                spawn_answer_reconciliation(
                    commerce.clone(),
                    background.clone(),
                    config.saga.timeout,
                    shutdown.clone(),
                    &tasks,
                );
                order::spawn_housekeeping(
                    commerce.clone(),
                    &config.orders,
                    shutdown.clone(),
                    &tasks,
                );
                feed.listen(background.clone(), shutdown.clone(), &tasks);
                saga_pace.spawn(background.clone(), shutdown.clone(), &tasks);
            }
            // Consumers first: in-process, a message reaches the groups subscribed when it is
            // published. Every service writes events (the store's receipts too), and relays
            // of several processes share the outbox.
            bus.start_relay()?;
        }
        // Their dead letters are replayed through the same handlers.
        let consumers = Consumers::new(handlers);

        let mut checks = vec![ReadinessCheck::postgres(probe.clone())];
        if let Some(client) = redis {
            checks.push(ReadinessCheck::redis(client));
        }
        checks.extend(bus.readiness());
        let mut api = Router::new();
        if service.runs(Service::Store) {
            api = api.merge(store::router(StoreState {
                commerce: commerce.clone(),
                catalog: catalog.clone(),
                auth: auth.clone(),
            }));
        }
        if service.runs(Service::Order) {
            let placement_rate = PlacementRate::new(&config.orders);
            placement_rate.spawn_forgetting(shutdown.clone(), &tasks);
            api = api.merge(order::router(OrderState {
                commerce: commerce.clone(),
                auth: auth.clone(),
                feed,
                streams: Streams::new(streams.clone(), &config.streams),
                placement_rate,
                saga_pace,
                shutdown: shutdown.clone(),
                currency: Currency(config.payment.currency.clone()),
            }));
        }
        let api = api
            .merge(admin::router(admin::AdminState {
                pool: pool.clone(),
                commerce: commerce.clone(),
                auth,
                consumers,
            }))
            .merge(ops::router(OpsState {
                pool: pool.clone(),
                catalog: catalog.clone(),
                payments: payment,
            }))
            .merge(crate::openapi::router());
        let probes = ops::probes(ProbeState {
            checks,
            draining: draining.clone(),
        });
        let router = http::layered(
            api,
            probes,
            Limits {
                request_timeout: config.http.request_timeout,
                body_limit: config.http.body_limit,
                max_in_flight: config.http.max_in_flight,
            },
        );
        let listen = config.http.listen;
        let listener = Self::listen(listen).with_context(|| format!("bind {listen}"))?;
        tracing::info!(
            address = %listener.local_addr()?,
            transport = bus.kind(),
            strategy = commerce.strategy_name(),
            cache = if config.redis_url.is_some() { "redis" } else { "in-process" },
            %service,
            "commerce-rs reference app ready"
        );
        Ok(Self {
            listener,
            router,
            parts: Parts {
                pool,
                background,
                streams,
                probe,
                catalog,
                bus,
                draining,
                shutdown,
                tasks,
                drain: config.http.shutdown_drain,
                grace: config.http.shutdown_grace,
                stand_in,
                bulkhead,
            },
        })
    }

    /// The bound port.
    ///
    /// # Panics
    /// Never in practice: a bound listener has an address.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .expect("a bound listener has an address")
    }

    /// `http://127.0.0.1:<port>` (or the bound address).
    ///
    /// # Panics
    /// Never in practice: a bound listener has an address.
    #[must_use]
    pub fn base_url(&self) -> String {
        let address = self
            .listener
            .local_addr()
            .expect("a bound listener has an address");
        format!("http://{address}")
    }

    /// The embedded stand-in payment gateway's address and control, when it runs.
    #[must_use]
    pub fn stand_in_gateway(&self) -> Option<&(String, StandInControl)> {
        self.parts.stand_in.as_ref()
    }

    /// Serves until Ctrl-C or SIGTERM, then shuts down gracefully: `/ready` answers 503 for
    /// the drain (`SHUTDOWN_DRAIN_SECS`) while the server still serves; then it stops
    /// accepting, in-flight requests finish, event streams end, consumers stop after their
    /// current event, the relay and the payment worker after their current round, and the
    /// pools close, all within the grace period (`SHUTDOWN_GRACE_SECS`): what is still running
    /// then is abandoned and logged, so shutdown never hangs.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run(shutdown_signal()).await
    }

    /// Serves in a task of its own until [`RunningApp::stop`] (for tests and embedding).
    #[must_use]
    pub fn spawn(self) -> RunningApp {
        let base_url = self.base_url();
        let stop = CancellationToken::new();
        let stand_in = self.parts.stand_in.clone();
        let signal = stop.clone();
        let task = tokio::spawn(self.run(async move { signal.cancelled().await }));
        RunningApp {
            base_url,
            stop,
            task,
            stand_in,
        }
    }

    async fn run(
        self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            parts,
        } = self;
        let (draining, shutdown, drain) =
            (parts.draining.clone(), parts.shutdown.clone(), parts.drain);
        let served = axum::serve(listener.tap_io(http::no_delay), router).with_graceful_shutdown(
            async move {
                signal.await;
                draining.cancel();
                if !drain.is_zero() {
                    tracing::info!(
                    ?drain,
                    "shutting down: /ready answers 503 while load balancers take this instance out"
                );
                    tokio::time::sleep(drain).await;
                }
                tracing::info!("shutting down: finishing in-flight requests");
                // Event streams end now; otherwise they would hold the shutdown open.
                shutdown.cancel();
            },
        );
        let mut serving = std::pin::pin!(served.into_future());
        let failed = tokio::select! {
            outcome = &mut serving => Some(outcome),
            () = parts.shutdown.cancelled() => None,
        };
        // From here on every step shares one deadline.
        parts.draining.cancel();
        parts.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + parts.grace;
        let served = match failed {
            Some(outcome) => outcome,
            None => tokio::time::timeout_at(deadline, serving)
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!("requests still in flight after the grace period are abandoned");
                    Ok(())
                }),
        };
        parts.stop(deadline).await;
        tracing::info!("stopped");
        served.context("HTTP server")
    }
}

impl Parts {
    /// Stops the background work, then closes the pools, both by `deadline`: what has not
    /// finished then is abandoned and logged rather than waited for.
    async fn stop(self, deadline: tokio::time::Instant) {
        let stopped = async {
            self.bus.shutdown().await;
            self.tasks.close();
            self.tasks.wait().await;
            self.catalog.shutdown().await;
        };
        if tokio::time::timeout_at(deadline, stopped).await.is_err() {
            tracing::warn!("background work did not stop within the grace period; abandoned");
        }
        // A pool's close waits for every connection it lent, and work abandoned above may
        // never give one back.
        let closed = async {
            futures::join!(
                self.background.close(),
                self.pool.close(),
                self.streams.close(),
                self.probe.close()
            );
        };
        if tokio::time::timeout_at(deadline, closed).await.is_err() {
            tracing::warn!(
                "database connections still held by unfinished work when the grace period \
                 ended; not waiting for them"
            );
        }
        // Last: the background pool's connections belong to it.
        drop(self.bulkhead);
    }
}

/// A system serving in the background.
#[derive(Debug)]
pub struct RunningApp {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    stand_in: Option<(String, StandInControl)>,
}

impl RunningApp {
    /// The embedded stand-in payment gateway's control, when it runs.
    #[must_use]
    pub fn stand_in_gateway(&self) -> Option<&StandInControl> {
        self.stand_in.as_ref().map(|(_, control)| control)
    }

    /// Shuts down gracefully and waits for it.
    ///
    /// # Errors
    /// When the server failed, or its task panicked.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("app task")?
    }
}

/// Connects to (creating if needed) and migrates the database: commerce-core, commerce-outbox,
/// then the app's own schemas.
///
/// # Errors
/// When the server cannot be reached or a migration fails.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    let url = &config.database.url;
    // The hint names the server without its password.
    let hint = || format!("{url} (run scripts/services.sh up)");
    if !Postgres::database_exists(url.expose())
        .await
        .with_context(hint)?
    {
        // Two instances starting together may both try; the loser finds it created.
        if let Err(error) = Postgres::create_database(url.expose()).await {
            if !Postgres::database_exists(url.expose())
                .await
                .with_context(hint)?
            {
                return Err(error).with_context(hint);
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(config.database.max_connections)
        // A request waits for a connection as long as it may take in all (the HTTP layer's
        // timeout drops it then), but start-up gets a few seconds whatever that limit is.
        .acquire_timeout(config.http.request_timeout.max(Duration::from_secs(5)))
        .connect(url.expose())
        .await
        .with_context(hint)?;
    for (owner, migrator) in crate::migrators() {
        migrator
            .run(&pool)
            .await
            .with_context(|| format!("migrate {owner}"))?;
    }
    Ok(pool)
}

/// A pool of `max` connections to the configured database beside the requests' own, for work
/// that must not compete with requests for connections (nor they with it).
async fn side_pool(
    config: &Config,
    max: u32,
    acquire_timeout: Duration,
    what: &'static str,
) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire_timeout)
        .connect(config.database.url.expose())
        .await
        .context(what)
}

/// The payment service's worker on its gateway (the stand-in started on the bulkhead when
/// `PAYMENT_GATEWAY=stand-in`, with its address and control).
async fn payment_worker(
    config: &Config,
    bulkhead: &Bulkhead,
    background: &PgPool,
    topics: &Topics,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<(PaymentWorker, Option<(String, StandInControl)>)> {
    let (gateway_url, stand_in) = match &config.payment.gateway {
        Some(PaymentGateway::Url(url)) => (url.clone(), None),
        Some(PaymentGateway::StandIn) => {
            let (url, control) = bulkhead
                .run({
                    let (settings, shutdown, tasks) = (
                        config.payment.stand_in.clone(),
                        shutdown.clone(),
                        tasks.clone(),
                    );
                    async move { start_stand_in(&settings, shutdown, &tasks).await }
                })
                .await??;
            tracing::warn!(
                gateway = %url,
                "PAYMENT_GATEWAY=stand-in: payments go to the stand-in gateway inside this \
                 process, which approves every charge up to its limit. No real money moves: \
                 never run it like this for real orders"
            );
            (SecretUrl::new(url.clone()), Some((url, control)))
        }
        None => anyhow::bail!(
            "no payment gateway: set PAYMENT_GATEWAY_URL, or PAYMENT_GATEWAY=stand-in"
        ),
    };
    let gateway = GatewayClient::http(gateway_url.expose(), config.payment.client.clone())
        .context("payment gateway client")?;
    tracing::info!(payment_gateway = %gateway_url, "payment service on its gateway");
    // A lost placement is paid well inside the saga's timeout (which would cancel its
    // order), as the order service's reconciliation of a lost approval is.
    let mut worker_settings = config.payment.worker;
    worker_settings.reconcile_grace = worker_settings.reconcile_grace.min(config.saga.timeout / 3);
    let worker = PaymentWorker::new(
        background.clone(),
        topics.payments.clone(),
        config.payment.currency.clone(),
        Arc::new(gateway),
        worker_settings,
        Arc::new(Notify::new()),
    );
    Ok((worker, stand_in))
}

/// Starts the stand-in payment gateway on a free loopback port until `shutdown`.
async fn start_stand_in(
    config: &StandInConfig,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<(String, StandInControl)> {
    let (router, control) = stand_in::router(config);
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("bind the stand-in payment gateway on a loopback port")?;
    let url = format!("http://{}", listener.local_addr()?);
    tasks.spawn(async move {
        let served = axum::serve(listener.tap_io(http::no_delay), router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "stand-in payment gateway stopped");
        }
    });
    Ok((url, control))
}

/// Ctrl-C, or SIGTERM on Unix: the one shutdown signal of the app's binaries.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
