//! Settings: one typed tree with one [`Default`], overlaid by the environment once at
//! start-up ([`Config::from_env`]) and checked as a whole ([`Config::validate`]) before anything
//! starts. Each environment variable has one meaning, documented on the field it sets.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use commerce_core::strategy::BatchSettings;

use crate::services::payment::gateway::GatewayClientConfig;
use crate::services::payment::stand_in::StandInConfig;
use crate::services::payment::WorkerSettings;

/// The most gateway calls `PAYMENT_CONCURRENCY` may allow in flight at once.
pub const MAX_PAYMENT_CONCURRENCY: usize = 1024;

/// A value that must never reach a log line or a response (the JWT secret).
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A server address that may carry credentials (`postgres://user:password@host/db`, an API
/// key in a gateway URL's user part): shown, logged and debugged without them.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps `url`.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its credentials, for the client that connects.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its password or user-part key (`***` in their place).
    #[must_use]
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                } else if !url.username().is_empty() && url.scheme().starts_with("http") {
                    // An HTTP URL's user part is an API key more often than a name.
                    let _ = url.set_username("***");
                }
                url.to_string()
            }
            // Not a URL (a broker list, a typo): say nothing of it beyond its length.
            Err(_) => format!("<{} characters, not a URL>", self.0.len()),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Which services one process runs: `SERVICE` (or `reference-app serve --service`). `all`,
/// the default, is the whole system in one process; `order`, `payment` and `store` are one
/// service each, for running them apart (each instance of a service its own process, the
/// events between them through Kafka, the product cache through Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Service {
    /// Every service in this process (the default).
    #[default]
    All,
    /// Orders: placing, reading, cancelling and streaming them, and the order side of the
    /// saga (payment answers, the timeout sweep, housekeeping).
    Order,
    /// Payments: the consumer of new orders, the worker that charges and refunds at the
    /// payment gateway.
    Payment,
    /// The store: products, prices and stock (the catalog and its cache).
    Store,
}

impl Service {
    /// Every service selection, in the order of [`Service::NAMES`].
    pub const ALL: [Self; 4] = [Self::All, Self::Order, Self::Payment, Self::Store];

    /// The names [`FromStr`] accepts.
    pub const NAMES: [&'static str; 4] = ["all", "order", "payment", "store"];

    /// The selection's name (what `SERVICE` takes).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::All => Self::NAMES[0],
            Self::Order => Self::NAMES[1],
            Self::Payment => Self::NAMES[2],
            Self::Store => Self::NAMES[3],
        }
    }

    /// Whether this process runs `service` (every one for [`Service::All`]).
    #[must_use]
    pub fn runs(self, service: Self) -> bool {
        self == Self::All || self == service
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A service name that is none of [`Service::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown service {0:?} (known: all, order, payment, store)")]
pub struct UnknownService(pub String);

impl FromStr for Service {
    type Err = UnknownService;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|service| service.name() == name.trim())
            .ok_or_else(|| UnknownService(name.to_owned()))
    }
}

/// How orders take stock: the app's `STOCK_STRATEGY` and the load harness's strategy names
/// share this one parser ([`FromStr`], [`StockStrategyKind::NAMES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StockStrategyKind {
    /// One transaction per order, the row lock of a conditional `UPDATE` (the default).
    #[default]
    ConditionalUpdate,
    /// A distributed lock per product around the transaction, on Redis (`REDIS_URL` must be
    /// set).
    RedisLock,
    /// The same lock strategy with commerce-lock's in-process backend (one instance only).
    LocalLock,
    /// Group commit per product (commerce-core's `Batching`): the concurrent orders of a
    /// product share a transaction; the flash-sale setting.
    Batching,
}

impl StockStrategyKind {
    /// Every kind, in the order the load harness runs them.
    pub const ALL: [Self; 4] = [
        Self::ConditionalUpdate,
        Self::RedisLock,
        Self::LocalLock,
        Self::Batching,
    ];

    /// The names [`FromStr`] accepts, as [`StockStrategyKind::ALL`].
    pub const NAMES: [&'static str; 4] =
        ["conditional-update", "redis-lock", "local-lock", "batching"];

    /// The kind's name (what `STOCK_STRATEGY` takes).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::ConditionalUpdate => Self::NAMES[0],
            Self::RedisLock => Self::NAMES[1],
            Self::LocalLock => Self::NAMES[2],
            Self::Batching => Self::NAMES[3],
        }
    }
}

impl fmt::Display for StockStrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A stock strategy name that is none of [`StockStrategyKind::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown stock strategy {0:?} (known: conditional-update, redis-lock, local-lock, batching)"
)]
pub struct UnknownStrategy(pub String);

impl FromStr for StockStrategyKind {
    type Err = UnknownStrategy;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == name.trim())
            .ok_or_else(|| UnknownStrategy(name.to_owned()))
    }
}

/// Everything the system is configured with. [`Default`] is the documented defaults, with the
/// two settings that have none (the JWT secret, the payment gateway) left empty: the
/// environment or the embedding must give them, or [`Config::validate`] refuses.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// `SERVICE` (default `all`): which services this process runs.
    pub service: Service,
    /// The HTTP server.
    pub http: HttpSettings,
    /// Postgres.
    pub database: DatabaseSettings,
    /// `REDIS_URL`: when set, the product cache's L2 and invalidations go through Redis (and
    /// the `redis-lock` strategy locks there); unset or empty, the cache stays in-process.
    pub redis_url: Option<SecretUrl>,
    /// The event transport.
    pub events: EventSettings,
    /// Bearer tokens.
    pub auth: AuthSettings,
    /// The payment service and its gateway.
    pub payment: PaymentSettings,
    /// The order side of the payment saga.
    pub saga: SagaSettings,
    /// How orders take stock.
    pub stock: StockSettings,
    /// What one customer may hold and how fast they may order, and how long things are
    /// kept.
    pub orders: OrderSettings,
    /// Order status event streams (SSE).
    pub streams: StreamSettings,
}

/// The HTTP server's settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `BIND` (default `127.0.0.1`) and `PORT` (default `8080`; `0` picks a free port).
    pub listen: SocketAddr,
    /// `REQUEST_TIMEOUT_SECS` (default 10, above 0): a request taking longer gets 503.
    pub request_timeout: Duration,
    /// `BODY_LIMIT_BYTES` (default 65536, above 0): larger request bodies get 413.
    pub body_limit: usize,
    /// `MAX_IN_FLIGHT` (default 10000, above 0): requests in flight beyond this get 429 at
    /// once.
    pub max_in_flight: usize,
    /// `SHUTDOWN_DRAIN_SECS` (default 5; 0 for none): on Ctrl-C / SIGTERM, how long the
    /// server goes on serving with `/ready` answering 503, so load balancers take the instance
    /// out of rotation before it stops accepting connections.
    pub shutdown_drain: Duration,
    /// `SHUTDOWN_GRACE_SECS` (default 20, above 0): after the drain, how long in-flight
    /// requests, background work and the database pools together may take to finish; what
    /// is still running then is abandoned (and logged).
    pub shutdown_grace: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            request_timeout: Duration::from_secs(10),
            body_limit: 64 * 1024,
            max_in_flight: 10_000,
            shutdown_drain: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// Postgres settings.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/commerce`); the database is
    /// created and migrated at start-up.
    pub url: SecretUrl,
    /// `DB_MAX_CONNECTIONS` (default 20, above 0): the requests' pool.
    pub max_connections: u32,
    /// `DB_BACKGROUND_CONNECTIONS` (default 10, at least 4): the pool of the relay, the
    /// consumers and the payment worker.
    pub background_connections: u32,
    /// `DB_STREAM_CONNECTIONS` (default 4, above 0): the pool the open event streams read
    /// their orders' history on, so streams cannot starve requests nor the saga.
    pub stream_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretUrl::new("postgres://postgres@127.0.0.1:5432/commerce"),
            max_connections: 20,
            background_connections: 10,
            stream_connections: 4,
        }
    }
}

/// The event transport's settings.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// `KAFKA_BROKERS`: when set, events go through Kafka; unset or empty, through the
    /// in-process transport (Postgres alone).
    pub kafka_brokers: Option<String>,
    /// `EVENT_PREFIX` (default `commerce`; letters, digits, `.`, `_`, `-`): the prefix of the
    /// topics and consumer groups, so several systems can share one broker.
    pub prefix: String,
    /// `KAFKA_SESSION_TIMEOUT_MS` (default 10000, 6000 to 300000): how long the broker waits
    /// for a silent consumer (a process killed, a network cut) before it hands that
    /// consumer's partitions to the others of its group. librdkafka's own default, 45 s, is
    /// longer than the saga's timeout: orders on a dead payment instance's partitions would
    /// be cancelled for want of a payment that another instance could have taken.
    pub session_timeout: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            kafka_brokers: None,
            prefix: "commerce".into(),
            session_timeout: Duration::from_secs(10),
        }
    }
}

/// Bearer-token settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `COMMERCE_JWT_SECRET` (required, at least 32 bytes as RFC 7518 asks of an HS256 key).
    pub jwt_secret: Secret,
    /// `TOKEN_MAX_LIFETIME_HOURS` (default 24, above 0): the longest lifetime a token may
    /// have, for the `token` command and for tokens the server accepts.
    pub max_token_lifetime: Duration,
}

impl AuthSettings {
    /// Reads `COMMERCE_JWT_SECRET` and `TOKEN_MAX_LIFETIME_HOURS` from the environment and
    /// checks them (for the `token` command, which needs nothing else).
    ///
    /// # Errors
    /// A missing or too short secret, a lifetime that does not parse or is 0.
    pub fn from_env() -> Result<Self, ConfigError> {
        let settings = Self::read(&Env(|name: &str| std::env::var(name).ok()))?;
        settings.validate()?;
        Ok(settings)
    }

    fn read<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let mut settings = Self {
            jwt_secret: Secret::new(env.text("COMMERCE_JWT_SECRET").unwrap_or_default()),
            ..Self::default()
        };
        env.duration(
            "TOKEN_MAX_LIFETIME_HOURS",
            Duration::from_secs(3600),
            &mut settings.max_token_lifetime,
        )?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_token_lifetime.is_zero() {
            return Err(ConfigError::new(
                "TOKEN_MAX_LIFETIME_HOURS",
                "0",
                "must be above 0",
            ));
        }
        if self.jwt_secret.expose().is_empty() {
            return Err(ConfigError::new(
                "COMMERCE_JWT_SECRET",
                "",
                "required: the HS256 key for bearer tokens (scripts/run.sh sets one)",
            ));
        }
        if self.jwt_secret.expose().len() < 32 {
            return Err(ConfigError::new(
                "COMMERCE_JWT_SECRET",
                "(hidden)",
                "must be at least 32 bytes (RFC 7518 §3.2 for HS256)",
            ));
        }
        Ok(())
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: Secret::default(),
            max_token_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// Which payment gateway charges the orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentGateway {
    /// `PAYMENT_GATEWAY_URL`: the external gateway's HTTP API.
    Url(SecretUrl),
    /// `PAYMENT_GATEWAY=stand-in`: the stand-in gateway, started inside the process on a free
    /// loopback port. It approves every charge up to its limit: for local runs and tests,
    /// never for real money (a warning says so at start-up).
    StandIn,
}

/// The payment service's settings.
#[derive(Debug, Clone)]
pub struct PaymentSettings {
    /// `PAYMENT_GATEWAY_URL` or `PAYMENT_GATEWAY=stand-in`, exactly one of them: without
    /// either the app refuses to start (it would otherwise ship goods nobody paid for).
    pub gateway: Option<PaymentGateway>,
    /// `CURRENCY` (default `EUR`; three capital letters, ISO 4217): the currency of all prices.
    pub currency: String,
    /// The gateway client's timeouts, retries and breaker: `PAYMENT_ATTEMPT_TIMEOUT_MS`
    /// (default 2000), `PAYMENT_OVERALL_TIMEOUT_MS` (default 10000), `PAYMENT_MAX_ATTEMPTS`
    /// (default 3); the rest at [`GatewayClientConfig::default`].
    pub client: GatewayClientConfig,
    /// The payment worker: `PAYMENT_LEASE_SECS` (default 15; above the client's overall
    /// timeout, below the saga timeout), `PAYMENT_CONCURRENCY` (default 64, 1 to 1024: gateway
    /// calls in flight at once, and payments claimed per round); the rest at
    /// [`WorkerSettings::default`].
    pub worker: WorkerSettings,
    /// The stand-in gateway's behaviour when it is chosen (`STAND_IN_GATEWAY_LATENCY_MS`,
    /// `STAND_IN_GATEWAY_FAILURE_RATE`, `STAND_IN_GATEWAY_DECLINE_ABOVE`, `STAND_IN_GATEWAY_SEED`).
    pub stand_in: StandInConfig,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            gateway: None,
            currency: "EUR".into(),
            client: GatewayClientConfig::default(),
            worker: WorkerSettings::default(),
            stand_in: StandInConfig::default(),
        }
    }
}

/// The order side of the payment saga.
#[derive(Debug, Clone)]
pub struct SagaSettings {
    /// `SAGA_TIMEOUT_SECS` (default 30): an order still CREATED this long after it became
    /// CREATED, without a payment answer, is cancelled (the saga's compensation). Must leave
    /// room for a whole gateway call and a parked retry, and exceed the worker's lease.
    pub timeout: Duration,
    /// `SAGA_THREADS` (default: the number of cores, as many as the server's runtime has; 0
    /// to 64): worker threads of the runtime of its own that the background work runs on
    /// (relay, consumers, payment worker, timeout sweep, the stand-in gateway), so a surge of
    /// requests cannot starve the saga of turns (a bulkhead); 0 runs it on the server's
    /// runtime, among the requests.
    pub threads: usize,
}

/// The most worker threads `SAGA_THREADS` may ask for.
pub const MAX_SAGA_THREADS: usize = 64;

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            // Under a surge the two runtimes' threads share the cores alike.
            threads: std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(MAX_SAGA_THREADS),
        }
    }
}

/// What one customer may hold, and how long things are kept.
#[derive(Debug, Clone)]
pub struct OrderSettings {
    /// `MAX_BACKORDERED_UNITS_PER_USER` (default 1000; 0 turns the limit off): units one
    /// customer may have waiting for stock across their BACKORDERED orders; an order that
    /// would go beyond it is refused (409 `user_limit_exceeded`).
    pub max_backordered_units_per_user: Option<i64>,
    /// `MAX_OPEN_ORDERS_PER_USER` (default 20; 0 turns the limit off): orders one customer may
    /// have BACKORDERED or CREATED (not yet paid) at once.
    pub max_open_orders_per_user: Option<i64>,
    /// `BACKORDER_TIMEOUT_SECS` (default 3600, above 0): a BACKORDERED order still waiting this
    /// long is cancelled and the units it held go back to stock (and the next backorders).
    pub backorder_timeout: Duration,
    /// `IDEMPOTENCY_KEY_RETENTION_HOURS` (default 24, above 0): how long an `Idempotency-Key`
    /// answers a repeat with its first order; after that it is forgotten and a repeat places a
    /// new order.
    pub idempotency_key_retention: Duration,
    /// `ORDER_RATE_PER_MINUTE` (default 60; 0 turns the limit off): orders one customer may
    /// place per minute in the long run; beyond it `POST /api/v1/orders` gets 429
    /// `rate_limited`.
    pub rate_per_minute: Option<u32>,
    /// `ORDER_BURST` (default 10, above 0): orders one customer may place at once before the
    /// rate applies.
    pub burst: u32,
}

impl Default for OrderSettings {
    fn default() -> Self {
        Self {
            max_backordered_units_per_user: Some(1_000),
            max_open_orders_per_user: Some(20),
            backorder_timeout: Duration::from_secs(3_600),
            idempotency_key_retention: Duration::from_secs(24 * 3_600),
            rate_per_minute: Some(60),
            burst: 10,
        }
    }
}

/// Order status event streams (`GET /api/v1/orders/{id}/events`).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// `SSE_MAX_STREAMS_PER_USER` (default 5, above 0): open streams one user may hold; beyond
    /// it a new one gets 429 `too_many_streams`.
    pub max_per_user: usize,
    /// `SSE_MAX_STREAMS` (default 1000, at least `SSE_MAX_STREAMS_PER_USER`): open streams in
    /// this process; beyond it a new one gets 429 `too_many_streams`.
    pub max_total: usize,
    /// `SSE_MAX_LIFETIME_SECS` (default 300, above 0): a stream ends cleanly after this (or
    /// when the token that opened it expires, if sooner); the client reconnects with
    /// `Last-Event-ID` and misses nothing.
    pub max_lifetime: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            max_per_user: 5,
            max_total: 1_000,
            max_lifetime: Duration::from_secs(300),
        }
    }
}

/// How orders take stock.
#[derive(Debug, Clone, Default)]
pub struct StockSettings {
    /// `STOCK_STRATEGY`: `conditional-update` (the default), `redis-lock`, `local-lock` or
    /// `batching`.
    pub strategy: StockStrategyKind,
    /// The batching strategy's settings: its defaults, with `BATCH_MAX_QUEUE` (orders waiting
    /// per product, default 10,000) and `BATCH_MAX_WAIT_MS` (longest wait for a batch,
    /// default 5,000); an order beyond either is answered 503 `overloaded` with
    /// `Retry-After`.
    pub batch: BatchSettings,
}

/// The gateway's settings (`serve --service gateway`): the only public entry of the
/// distributed mode. It needs no database, Redis or broker; only the services' addresses and
/// the token key.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `BIND` and `PORT` (default 127.0.0.1:8080).
    pub listen: SocketAddr,
    /// `GATEWAY_ORDER_URLS` (required): the order instances' base URLs, comma-separated
    /// (`http://127.0.0.1:8081,http://127.0.0.1:8082`); orders, the admin routes and the API
    /// document go there.
    pub order: Vec<String>,
    /// `GATEWAY_STORE_URLS` (required): the store instances' base URLs; products go there.
    pub store: Vec<String>,
    /// `COMMERCE_JWT_SECRET` and `TOKEN_MAX_LIFETIME_HOURS`, as the services have them: a token
    /// is checked here and again by the service.
    pub auth: AuthSettings,
    /// `GATEWAY_HEALTH_INTERVAL_MS` (default 500, above 0): how often each instance's `/ready`
    /// is asked; one failed answer (or one refused connection of a request) takes it out, the
    /// next good answer brings it back.
    pub health_interval: Duration,
    /// `GATEWAY_READ_TIMEOUT_MS` (default 5000): a GET whose answer has not begun by then
    /// gets 503 `timeout` (a stream's body is not bounded, only its start).
    pub read_timeout: Duration,
    /// `GATEWAY_WRITE_TIMEOUT_MS` (default 15000): the same for every other method; above
    /// the services' own request timeout, so theirs answers first.
    pub write_timeout: Duration,
    /// `GATEWAY_MAX_IN_FLIGHT` (default 4096, above 0): requests in flight at the gateway
    /// beyond this get 429 `too_many_requests` with `Retry-After` at once; also the most the
    /// adaptive admission lets one service have.
    pub max_in_flight: usize,
    /// `GATEWAY_LATENCY_TARGET_MS` (default 500; 0 turns the adaptive admission off): the
    /// gateway's bound on requests in flight to each service adapts so that their answers
    /// begin within about this; beyond the bound, 429 `too_many_requests` at once.
    pub latency_target: Option<Duration>,
    /// `GATEWAY_USER_RATE_PER_MINUTE` (default 6000; 0 turns it off): requests a minute per
    /// user (the token's subject; per client address for requests without a token).
    pub user_rate_per_minute: Option<u32>,
    /// `GATEWAY_USER_BURST` (default 200, above 0): requests a user may send at once.
    pub user_burst: u32,
    /// `GATEWAY_BODY_LIMIT_BYTES` (default 1 MiB, above 0): a request that may be retried
    /// (a GET, a POST with an `Idempotency-Key`) is held in memory up to this size so it can
    /// be sent again; a larger one gets 413. Other bodies stream through to the service.
    pub body_limit: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            order: Vec::new(),
            store: Vec::new(),
            auth: AuthSettings::default(),
            health_interval: Duration::from_millis(500),
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(15),
            max_in_flight: 4096,
            latency_target: Some(Duration::from_millis(500)),
            user_rate_per_minute: Some(6000),
            user_burst: 200,
            body_limit: 1024 * 1024,
        }
    }
}

impl GatewayConfig {
    /// Reads the gateway's settings from the environment over the defaults, and checks them.
    ///
    /// # Errors
    /// A setting that does not parse, a missing list of instances or token key, an instance
    /// address that is not an `http://` URL.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`GatewayConfig::from_env`], with `lookup` standing in for the environment.
    ///
    /// # Errors
    /// As [`GatewayConfig::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(lookup);
        let mut c = Self::default();
        env.listen(&mut c.listen)?;
        c.order = instances(&env, "GATEWAY_ORDER_URLS")?;
        c.store = instances(&env, "GATEWAY_STORE_URLS")?;
        c.auth = AuthSettings::read(&env)?;
        c.auth.validate()?;
        let millis = Duration::from_millis(1);
        env.duration("GATEWAY_HEALTH_INTERVAL_MS", millis, &mut c.health_interval)?;
        env.duration("GATEWAY_READ_TIMEOUT_MS", millis, &mut c.read_timeout)?;
        env.duration("GATEWAY_WRITE_TIMEOUT_MS", millis, &mut c.write_timeout)?;
        env.read("GATEWAY_MAX_IN_FLIGHT", &mut c.max_in_flight)?;
        let mut target = c.latency_target.unwrap_or_default();
        env.duration("GATEWAY_LATENCY_TARGET_MS", millis, &mut target)?;
        c.latency_target = (!target.is_zero()).then_some(target);
        let mut rate = c.user_rate_per_minute.unwrap_or(0);
        env.read("GATEWAY_USER_RATE_PER_MINUTE", &mut rate)?;
        c.user_rate_per_minute = (rate > 0).then_some(rate);
        env.read("GATEWAY_USER_BURST", &mut c.user_burst)?;
        env.read("GATEWAY_BODY_LIMIT_BYTES", &mut c.body_limit)?;
        for (name, zero) in [
            ("GATEWAY_HEALTH_INTERVAL_MS", c.health_interval.is_zero()),
            ("GATEWAY_READ_TIMEOUT_MS", c.read_timeout.is_zero()),
            ("GATEWAY_WRITE_TIMEOUT_MS", c.write_timeout.is_zero()),
            ("GATEWAY_MAX_IN_FLIGHT", c.max_in_flight == 0),
            ("GATEWAY_USER_BURST", c.user_burst == 0),
            ("GATEWAY_BODY_LIMIT_BYTES", c.body_limit == 0),
        ] {
            if zero {
                return Err(ConfigError::new(name, "0", "must be above 0"));
            }
        }
        Ok(c)
    }
}

/// A required, comma-separated list of `http://host:port` base URLs (no path, no trailing
/// slash kept).
fn instances<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    name: &'static str,
) -> Result<Vec<String>, ConfigError> {
    let Some(list) = env.text(name) else {
        return Err(ConfigError::new(
            name,
            "",
            "required by the gateway: the instances' base URLs, comma-separated \
             (http://127.0.0.1:8081,http://127.0.0.1:8082)",
        ));
    };
    let mut urls = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let parsed = url::Url::parse(item)
            .map_err(|e| ConfigError::new(name, item, format!("not a URL: {e}")))?;
        if parsed.scheme() != "http" || parsed.host_str().is_none() || parsed.path().len() > 1 {
            return Err(ConfigError::new(
                name,
                item,
                "an instance is an http://host:port base URL without a path",
            ));
        }
        let base = item.trim_end_matches('/').to_owned();
        if !urls.contains(&base) {
            urls.push(base);
        }
    }
    if urls.is_empty() {
        return Err(ConfigError::new(name, list, "names no instance"));
    }
    Ok(urls)
}

/// A setting that does not parse or makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct ConfigError {
    name: &'static str,
    value: String,
    reason: String,
}

impl ConfigError {
    fn new(name: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            name,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// The environment variable concerned.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The environment, as `lookup` sees it: empty values count as unset.
struct Env<F>(F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    fn text(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    /// Overwrites `slot` with the variable's value when it is set and parses.
    fn read<T>(&self, name: &'static str, slot: &mut T) -> Result<(), ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        if let Some(value) = self.text(name) {
            *slot = value
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::new(name, &value, e.to_string()))?;
        }
        Ok(())
    }

    /// The listening address: `BIND` and `PORT` over `slot`'s (the app's and the gateway's).
    fn listen(&self, slot: &mut SocketAddr) -> Result<(), ConfigError> {
        let (mut bind, mut port) = (slot.ip(), slot.port());
        self.read("BIND", &mut bind)?;
        self.read("PORT", &mut port)?;
        *slot = SocketAddr::new(bind, port);
        Ok(())
    }

    /// As [`Env::read`], for a limit where 0 means none.
    fn limit(&self, name: &'static str, slot: &mut Option<i64>) -> Result<(), ConfigError> {
        let mut value = slot.unwrap_or(0);
        self.read(name, &mut value)?;
        if value < 0 {
            return Err(ConfigError::new(
                name,
                value.to_string(),
                "must be 0 (no limit) or more",
            ));
        }
        *slot = (value > 0).then_some(value);
        Ok(())
    }

    /// As [`Env::read`], for a duration given in `unit`s (seconds or milliseconds).
    fn duration(
        &self,
        name: &'static str,
        unit: Duration,
        slot: &mut Duration,
    ) -> Result<(), ConfigError> {
        let mut count: Option<u32> = None;
        if let Some(value) = self.text(name) {
            count = Some(value.trim().parse().map_err(|e: std::num::ParseIntError| {
                ConfigError::new(name, &value, e.to_string())
            })?);
        }
        if let Some(count) = count {
            *slot = unit * count;
        }
        Ok(())
    }
}

impl Config {
    /// Reads the settings from the environment over the defaults, and checks them.
    ///
    /// # Errors
    /// A setting that does not parse, a missing or too short `COMMERCE_JWT_SECRET`, no payment
    /// gateway chosen, or settings that make no sense together ([`Config::validate`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`Config::from_env`], with `lookup` standing in for the environment.
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(lookup);
        let mut c = Self::default();

        env.listen(&mut c.http.listen)?;
        let seconds = Duration::from_secs(1);
        let millis = Duration::from_millis(1);
        env.duration("REQUEST_TIMEOUT_SECS", seconds, &mut c.http.request_timeout)?;
        env.read("BODY_LIMIT_BYTES", &mut c.http.body_limit)?;
        env.read("MAX_IN_FLIGHT", &mut c.http.max_in_flight)?;
        env.duration("SHUTDOWN_DRAIN_SECS", seconds, &mut c.http.shutdown_drain)?;
        env.duration("SHUTDOWN_GRACE_SECS", seconds, &mut c.http.shutdown_grace)?;

        if let Some(url) = env.text("DATABASE_URL") {
            c.database.url = SecretUrl::new(url);
        }
        env.read("DB_MAX_CONNECTIONS", &mut c.database.max_connections)?;
        env.read(
            "DB_BACKGROUND_CONNECTIONS",
            &mut c.database.background_connections,
        )?;
        env.read("DB_STREAM_CONNECTIONS", &mut c.database.stream_connections)?;
        c.redis_url = env.text("REDIS_URL").map(SecretUrl::new);
        c.events.kafka_brokers = env.text("KAFKA_BROKERS");
        env.read("EVENT_PREFIX", &mut c.events.prefix)?;
        env.duration(
            "KAFKA_SESSION_TIMEOUT_MS",
            millis,
            &mut c.events.session_timeout,
        )?;

        c.auth = AuthSettings::read(&env)?;

        c.payment.gateway = match (env.text("PAYMENT_GATEWAY_URL"), env.text("PAYMENT_GATEWAY")) {
            (Some(url), None) => Some(PaymentGateway::Url(SecretUrl::new(url))),
            (None, Some(choice)) if choice.trim() == "stand-in" => Some(PaymentGateway::StandIn),
            (None, Some(other)) => {
                return Err(ConfigError::new(
                    "PAYMENT_GATEWAY",
                    other,
                    "the only value is `stand-in` (the test gateway); a real gateway is given \
                     by PAYMENT_GATEWAY_URL",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "PAYMENT_GATEWAY",
                    "(set with PAYMENT_GATEWAY_URL)",
                    "set PAYMENT_GATEWAY_URL or PAYMENT_GATEWAY=stand-in, not both",
                ))
            }
            (None, None) => None,
        };
        env.read("CURRENCY", &mut c.payment.currency)?;
        env.duration(
            "PAYMENT_ATTEMPT_TIMEOUT_MS",
            millis,
            &mut c.payment.client.attempt_timeout,
        )?;
        env.duration(
            "PAYMENT_OVERALL_TIMEOUT_MS",
            millis,
            &mut c.payment.client.overall_timeout,
        )?;
        env.read("PAYMENT_MAX_ATTEMPTS", &mut c.payment.client.max_attempts)?;
        env.duration("PAYMENT_LEASE_SECS", seconds, &mut c.payment.worker.lease)?;
        env.read("PAYMENT_CONCURRENCY", &mut c.payment.worker.concurrency)?;
        c.payment.stand_in = StandInConfig::from_lookup(|name| env.text(name))
            .map_err(|e| ConfigError::new(e.setting, e.value, e.reason))?;

        env.duration("SAGA_TIMEOUT_SECS", seconds, &mut c.saga.timeout)?;
        env.read("SAGA_THREADS", &mut c.saga.threads)?;
        env.read("SERVICE", &mut c.service)?;
        env.read("STOCK_STRATEGY", &mut c.stock.strategy)?;
        env.read("BATCH_MAX_QUEUE", &mut c.stock.batch.max_queue)?;
        env.duration("BATCH_MAX_WAIT_MS", millis, &mut c.stock.batch.max_wait)?;
        env.limit(
            "MAX_BACKORDERED_UNITS_PER_USER",
            &mut c.orders.max_backordered_units_per_user,
        )?;
        env.limit(
            "MAX_OPEN_ORDERS_PER_USER",
            &mut c.orders.max_open_orders_per_user,
        )?;
        env.duration(
            "BACKORDER_TIMEOUT_SECS",
            seconds,
            &mut c.orders.backorder_timeout,
        )?;
        env.duration(
            "IDEMPOTENCY_KEY_RETENTION_HOURS",
            Duration::from_secs(3_600),
            &mut c.orders.idempotency_key_retention,
        )?;
        let mut rate = c.orders.rate_per_minute.unwrap_or(0);
        env.read("ORDER_RATE_PER_MINUTE", &mut rate)?;
        c.orders.rate_per_minute = (rate > 0).then_some(rate);
        env.read("ORDER_BURST", &mut c.orders.burst)?;

        env.read("SSE_MAX_STREAMS_PER_USER", &mut c.streams.max_per_user)?;
        env.read("SSE_MAX_STREAMS", &mut c.streams.max_total)?;
        env.duration(
            "SSE_MAX_LIFETIME_SECS",
            seconds,
            &mut c.streams.max_lifetime,
        )?;
        c.validate()?;
        Ok(c)
    }

    /// Settings for a test or an embedding: `database_url`, a free port on localhost, the
    /// given secret, the stand-in payment gateway chosen explicitly, no drain at shutdown (no
    /// load balancer to leave), everything else at its default (in-process transport and
    /// cache).
    #[must_use]
    pub fn local(database_url: impl Into<String>, jwt_secret: impl Into<String>) -> Self {
        let mut config = Self::default();
        config.http.listen.set_port(0);
        config.http.shutdown_drain = Duration::ZERO;
        config.database.url = SecretUrl::new(database_url);
        config.auth.jwt_secret = Secret::new(jwt_secret);
        config.payment.gateway = Some(PaymentGateway::StandIn);
        config
    }

    /// Checks the settings as a whole: what would start but not work is refused here, with
    /// the variable to change.
    ///
    /// # Errors
    /// The first setting that makes no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |name: &'static str, zero: bool| {
            if zero {
                Err(ConfigError::new(name, "0", "must be above 0"))
            } else {
                Ok(())
            }
        };
        positive("REQUEST_TIMEOUT_SECS", self.http.request_timeout.is_zero())?;
        let session = self.events.session_timeout;
        if !(Duration::from_secs(6)..=Duration::from_secs(300)).contains(&session) {
            return Err(ConfigError::new(
                "KAFKA_SESSION_TIMEOUT_MS",
                session.as_millis().to_string(),
                "must be 6000 to 300000 (the range brokers accept by default)",
            ));
        }
        positive("SHUTDOWN_GRACE_SECS", self.http.shutdown_grace.is_zero())?;
        positive("BODY_LIMIT_BYTES", self.http.body_limit == 0)?;
        positive("MAX_IN_FLIGHT", self.http.max_in_flight == 0)?;
        positive("DB_MAX_CONNECTIONS", self.database.max_connections == 0)?;
        positive("SAGA_TIMEOUT_SECS", self.saga.timeout.is_zero())?;
        if self.saga.threads > MAX_SAGA_THREADS {
            return Err(ConfigError::new(
                "SAGA_THREADS",
                self.saga.threads.to_string(),
                format!("must be 0 (the server's runtime) to {MAX_SAGA_THREADS}"),
            ));
        }
        positive(
            "BACKORDER_TIMEOUT_SECS",
            self.orders.backorder_timeout.is_zero(),
        )?;
        positive(
            "IDEMPOTENCY_KEY_RETENTION_HOURS",
            self.orders.idempotency_key_retention.is_zero(),
        )?;
        positive("ORDER_BURST", self.orders.burst == 0)?;
        positive("BATCH_MAX_QUEUE", self.stock.batch.max_queue == 0)?;
        positive("BATCH_MAX_WAIT_MS", self.stock.batch.max_wait.is_zero())?;
        positive(
            "DB_STREAM_CONNECTIONS",
            self.database.stream_connections == 0,
        )?;
        positive("SSE_MAX_STREAMS_PER_USER", self.streams.max_per_user == 0)?;
        positive("SSE_MAX_LIFETIME_SECS", self.streams.max_lifetime.is_zero())?;
        if self.streams.max_total < self.streams.max_per_user {
            return Err(ConfigError::new(
                "SSE_MAX_STREAMS",
                self.streams.max_total.to_string(),
                format!(
                    "must be at least SSE_MAX_STREAMS_PER_USER ({}): one user could never \
                     open their share",
                    self.streams.max_per_user
                ),
            ));
        }
        if self.database.background_connections < 4 {
            return Err(ConfigError::new(
                "DB_BACKGROUND_CONNECTIONS",
                self.database.background_connections.to_string(),
                "must be at least 4 (the relay, two consumers and the payment worker)",
            ));
        }
        self.auth.validate()?;
        self.validate_service()?;
        if self.payment.gateway.is_none() && self.service.runs(Service::Payment) {
            return Err(ConfigError::new(
                "PAYMENT_GATEWAY_URL",
                "",
                "required: the payment gateway's URL, or PAYMENT_GATEWAY=stand-in for the \
                 test gateway that approves every charge (never for real money)",
            ));
        }
        let currency = &self.payment.currency;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ConfigError::new(
                "CURRENCY",
                currency,
                "must be an ISO 4217 code: three capital letters, e.g. EUR",
            ));
        }
        let prefix = &self.events.prefix;
        if prefix.is_empty()
            || prefix.len() > 100
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(ConfigError::new(
                "EVENT_PREFIX",
                prefix,
                "must be 1 to 100 letters, digits, `.`, `_` or `-` (a topic name prefix)",
            ));
        }
        if self.stock.strategy == StockStrategyKind::RedisLock && self.redis_url.is_none() {
            return Err(ConfigError::new(
                "STOCK_STRATEGY",
                "redis-lock",
                "needs REDIS_URL (or choose local-lock for one instance)",
            ));
        }
        self.validate_payment_timing()
    }

    /// A service run apart needs what connects it to the others and to its own other
    /// instances: the broker for events, Redis for the product cache, and a stock strategy
    /// that holds across processes.
    fn validate_service(&self) -> Result<(), ConfigError> {
        let service = self.service;
        if service == Service::All {
            return Ok(());
        }
        if self.events.kafka_brokers.is_none() {
            return Err(ConfigError::new(
                "KAFKA_BROKERS",
                "",
                format!(
                    "required with SERVICE={service}: the services run apart exchange their \
                     events through the broker (the in-process transport reaches only this \
                     process)"
                ),
            ));
        }
        if self.redis_url.is_none() {
            return Err(ConfigError::new(
                "REDIS_URL",
                "",
                format!(
                    "required with SERVICE={service}: the product cache and its invalidations \
                     are shared by every instance through Redis"
                ),
            ));
        }
        if self.stock.strategy == StockStrategyKind::LocalLock {
            return Err(ConfigError::new(
                "STOCK_STRATEGY",
                "local-lock",
                format!(
                    "not with SERVICE={service}: the in-process lock excludes within one \
                     process only; use batching, conditional-update or redis-lock"
                ),
            ));
        }
        Ok(())
    }

    /// The payment timeouts against each other: a worker's claim must outlast its gateway
    /// call (or a second worker repeats it) and end before the saga gives up on the order
    /// (or a worker that died mid-call holds the money of an order already cancelled); the
    /// saga timeout must leave room for a whole call and a parked retry.
    fn validate_payment_timing(&self) -> Result<(), ConfigError> {
        let client = &self.payment.client;
        let secs = |d: Duration| format!("{}", d.as_secs_f64());
        if client.attempt_timeout.is_zero() || client.overall_timeout.is_zero() {
            return Err(ConfigError::new(
                "PAYMENT_ATTEMPT_TIMEOUT_MS",
                format!(
                    "{:?} / {:?}",
                    client.attempt_timeout, client.overall_timeout
                ),
                "the attempt and overall timeouts must be above 0",
            ));
        }
        let concurrency = self.payment.worker.concurrency;
        if !(1..=MAX_PAYMENT_CONCURRENCY).contains(&concurrency) {
            return Err(ConfigError::new(
                "PAYMENT_CONCURRENCY",
                concurrency.to_string(),
                format!(
                    "must be 1 to {MAX_PAYMENT_CONCURRENCY}: gateway calls in flight at once \
                     (each holds a connection to the gateway)"
                ),
            ));
        }
        if client.max_attempts == 0 {
            return Err(ConfigError::new(
                "PAYMENT_MAX_ATTEMPTS",
                "0",
                "must be at least 1",
            ));
        }
        let lease = self.payment.worker.lease;
        if lease <= client.overall_timeout {
            return Err(ConfigError::new(
                "PAYMENT_LEASE_SECS",
                secs(lease),
                format!(
                    "must exceed the gateway call's overall timeout ({} s), or a second worker \
                     repeats a call still under way",
                    secs(client.overall_timeout)
                ),
            ));
        }
        if lease >= self.saga.timeout {
            return Err(ConfigError::new(
                "PAYMENT_LEASE_SECS",
                secs(lease),
                format!(
                    "must be shorter than SAGA_TIMEOUT_SECS ({} s): a charge claimed by a worker \
                     that died is taken up again before its order times out",
                    secs(self.saga.timeout)
                ),
            ));
        }
        let needed = client.overall_timeout + self.payment.worker.backoff.max;
        if self.saga.timeout <= needed {
            return Err(ConfigError::new(
                "SAGA_TIMEOUT_SECS",
                secs(self.saga.timeout),
                format!(
                    "must exceed the gateway call's overall timeout plus the worker's longest \
                     backoff ({} s), or an order is cancelled before its payment could answer",
                    secs(needed)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    fn with_secret_and_gateway(
        pairs: &[(&'static str, &'static str)],
    ) -> Vec<(&'static str, &'static str)> {
        let mut all = vec![
            ("COMMERCE_JWT_SECRET", SECRET),
            ("PAYMENT_GATEWAY", "stand-in"),
        ];
        all.extend_from_slice(pairs);
        all
    }

    #[test]
    fn defaults_apply_and_empty_values_count_as_unset() {
        let c = config(&with_secret_and_gateway(&[
            ("KAFKA_BROKERS", ""),
            ("REDIS_URL", "  "),
        ]))
        .unwrap();
        assert_eq!(c.http.listen.port(), 8080);
        assert!(c.events.kafka_brokers.is_none() && c.redis_url.is_none());
        assert_eq!(c.saga.timeout, Duration::from_secs(30));
        assert_eq!(
            c.saga.threads,
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        );
        assert_eq!(c.payment.gateway, Some(PaymentGateway::StandIn));
        assert_eq!((c.streams.max_per_user, c.streams.max_total), (5, 1_000));
        assert_eq!(c.streams.max_lifetime, Duration::from_secs(300));
        assert_eq!((c.orders.rate_per_minute, c.orders.burst), (Some(60), 10));
        assert_eq!(c.http.shutdown_drain, Duration::from_secs(5));
        let off = config(&with_secret_and_gateway(&[("ORDER_RATE_PER_MINUTE", "0")])).unwrap();
        assert_eq!(off.orders.rate_per_minute, None);
        assert!(!format!("{c:?}").contains(SECRET), "secret in Debug");
    }

    #[test]
    fn local_settings_pass_their_own_checks() {
        Config::local("postgres://postgres@127.0.0.1/x", SECRET)
            .validate()
            .unwrap();
    }

    #[test]
    fn credentials_in_urls_never_reach_debug_or_display() {
        let c = config(&with_secret_and_gateway(&[
            (
                "DATABASE_URL",
                "postgres://app:hunter2@db.internal:5432/commerce",
            ),
            ("REDIS_URL", "redis://:redispass@cache:6379"),
        ]))
        .unwrap();
        let text = format!("{c:?}");
        for secret in ["hunter2", "redispass"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("db.internal"), "{text}");
        let gateway = SecretUrl::new("https://sk_live_123@pg.example/v1");
        assert!(!gateway.to_string().contains("sk_live_123"), "{gateway}");
        assert_eq!(
            SecretUrl::new("not a url at all").to_string(),
            "<16 characters, not a URL>"
        );
    }

    /// A row of the table below: its name, the variables set over a valid base, and the
    /// variable the error must name.
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );

    fn gateway(pairs: &[(&str, &str)]) -> Result<GatewayConfig, ConfigError> {
        let mut map: HashMap<String, String> = [
            ("COMMERCE_JWT_SECRET", SECRET),
            (
                "GATEWAY_ORDER_URLS",
                "http://127.0.0.1:8081, http://127.0.0.1:8082/",
            ),
            ("GATEWAY_STORE_URLS", "http://127.0.0.1:8083"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        for (k, v) in pairs {
            map.insert((*k).to_owned(), (*v).to_owned());
        }
        GatewayConfig::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn the_gateway_needs_its_instances_and_the_token_key_and_names_what_is_wrong() {
        let c = gateway(&[]).unwrap();
        assert_eq!(c.order, ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]);
        assert_eq!(c.store, ["http://127.0.0.1:8083"]);
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.user_rate_per_minute, Some(6000));
        assert_eq!(
            gateway(&[("GATEWAY_USER_RATE_PER_MINUTE", "0")])
                .unwrap()
                .user_rate_per_minute,
            None
        );
        for (pairs, variable) in [
            (&[("GATEWAY_ORDER_URLS", "")][..], "GATEWAY_ORDER_URLS"),
            (&[("GATEWAY_STORE_URLS", " , ")][..], "GATEWAY_STORE_URLS"),
            (
                &[("GATEWAY_STORE_URLS", "https://a:1")][..],
                "GATEWAY_STORE_URLS",
            ),
            (
                &[("GATEWAY_ORDER_URLS", "http://a:1/api")][..],
                "GATEWAY_ORDER_URLS",
            ),
            (
                &[("GATEWAY_ORDER_URLS", "not a url")][..],
                "GATEWAY_ORDER_URLS",
            ),
            (&[("COMMERCE_JWT_SECRET", "")][..], "COMMERCE_JWT_SECRET"),
            (
                &[("GATEWAY_MAX_IN_FLIGHT", "0")][..],
                "GATEWAY_MAX_IN_FLIGHT",
            ),
            (
                &[("GATEWAY_HEALTH_INTERVAL_MS", "0")][..],
                "GATEWAY_HEALTH_INTERVAL_MS",
            ),
            (&[("GATEWAY_USER_BURST", "0")][..], "GATEWAY_USER_BURST"),
        ] {
            let refused = gateway(pairs).expect_err(variable);
            assert_eq!(refused.name(), variable, "{pairs:?}: {refused}");
        }
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_variable() {
        let cases: &[Case] = &[
            ("port not a number", &[("PORT", "80x")], "PORT"),
            (
                "zero request timeout",
                &[("REQUEST_TIMEOUT_SECS", "0")],
                "REQUEST_TIMEOUT_SECS",
            ),
            (
                "zero saga timeout",
                &[("SAGA_TIMEOUT_SECS", "0")],
                "SAGA_TIMEOUT_SECS",
            ),
            (
                "zero pool",
                &[("DB_MAX_CONNECTIONS", "0")],
                "DB_MAX_CONNECTIONS",
            ),
            (
                "pool overflow",
                &[("DB_MAX_CONNECTIONS", "99999999999")],
                "DB_MAX_CONNECTIONS",
            ),
            ("zero in flight", &[("MAX_IN_FLIGHT", "0")], "MAX_IN_FLIGHT"),
            (
                "session timeout below what brokers accept",
                &[("KAFKA_SESSION_TIMEOUT_MS", "500")],
                "KAFKA_SESSION_TIMEOUT_MS",
            ),
            (
                "negative limit",
                &[("MAX_OPEN_ORDERS_PER_USER", "-1")],
                "MAX_OPEN_ORDERS_PER_USER",
            ),
            (
                "zero backorder timeout",
                &[("BACKORDER_TIMEOUT_SECS", "0")],
                "BACKORDER_TIMEOUT_SECS",
            ),
            (
                "zero key retention",
                &[("IDEMPOTENCY_KEY_RETENTION_HOURS", "0")],
                "IDEMPOTENCY_KEY_RETENTION_HOURS",
            ),
            ("lower-case currency", &[("CURRENCY", "eur")], "CURRENCY"),
            ("long currency", &[("CURRENCY", "EURO")], "CURRENCY"),
            (
                "unknown strategy",
                &[("STOCK_STRATEGY", "fastest")],
                "STOCK_STRATEGY",
            ),
            (
                "redis lock without redis",
                &[("STOCK_STRATEGY", "redis-lock")],
                "STOCK_STRATEGY",
            ),
            (
                "topic prefix with a space",
                &[("EVENT_PREFIX", "my app")],
                "EVENT_PREFIX",
            ),
            (
                "saga shorter than a call and a backoff",
                &[("SAGA_TIMEOUT_SECS", "12")],
                "PAYMENT_LEASE_SECS",
            ),
            (
                "saga shorter than a call plus backoff, lease fits",
                &[("SAGA_TIMEOUT_SECS", "19"), ("PAYMENT_LEASE_SECS", "11")],
                "SAGA_TIMEOUT_SECS",
            ),
            (
                "no payment calls at once",
                &[("PAYMENT_CONCURRENCY", "0")],
                "PAYMENT_CONCURRENCY",
            ),
            (
                "too many payment calls at once",
                &[("PAYMENT_CONCURRENCY", "5000")],
                "PAYMENT_CONCURRENCY",
            ),
            ("unknown service", &[("SERVICE", "billing")], "SERVICE"),
            (
                "a service apart without the broker",
                &[
                    ("SERVICE", "order"),
                    ("REDIS_URL", "redis://127.0.0.1:6379"),
                ],
                "KAFKA_BROKERS",
            ),
            (
                "a service apart without Redis",
                &[("SERVICE", "payment"), ("KAFKA_BROKERS", "127.0.0.1:9092")],
                "REDIS_URL",
            ),
            (
                "a service apart on the in-process lock",
                &[
                    ("SERVICE", "store"),
                    ("KAFKA_BROKERS", "127.0.0.1:9092"),
                    ("REDIS_URL", "redis://127.0.0.1:6379"),
                    ("STOCK_STRATEGY", "local-lock"),
                ],
                "STOCK_STRATEGY",
            ),
            (
                "too many saga threads",
                &[("SAGA_THREADS", "65")],
                "SAGA_THREADS",
            ),
            (
                "saga threads not a number",
                &[("SAGA_THREADS", "two")],
                "SAGA_THREADS",
            ),
            (
                "payment concurrency not a number",
                &[("PAYMENT_CONCURRENCY", "many")],
                "PAYMENT_CONCURRENCY",
            ),
            (
                "lease within a call",
                &[("PAYMENT_LEASE_SECS", "5")],
                "PAYMENT_LEASE_SECS",
            ),
            (
                "lease beyond the saga",
                &[("PAYMENT_LEASE_SECS", "60")],
                "PAYMENT_LEASE_SECS",
            ),
            (
                "unknown gateway choice",
                &[("PAYMENT_GATEWAY", "fake")],
                "PAYMENT_GATEWAY",
            ),
            (
                "both gateway settings",
                &[("PAYMENT_GATEWAY_URL", "http://127.0.0.1:1")],
                "PAYMENT_GATEWAY",
            ),
            (
                "zero stream pool",
                &[("DB_STREAM_CONNECTIONS", "0")],
                "DB_STREAM_CONNECTIONS",
            ),
            (
                "no streams per user",
                &[("SSE_MAX_STREAMS_PER_USER", "0")],
                "SSE_MAX_STREAMS_PER_USER",
            ),
            (
                "fewer streams overall than one user may open",
                &[("SSE_MAX_STREAMS", "3")],
                "SSE_MAX_STREAMS",
            ),
            (
                "negative stream cap",
                &[("SSE_MAX_STREAMS", "-1")],
                "SSE_MAX_STREAMS",
            ),
            (
                "zero stream lifetime",
                &[("SSE_MAX_LIFETIME_SECS", "0")],
                "SSE_MAX_LIFETIME_SECS",
            ),
            ("zero order burst", &[("ORDER_BURST", "0")], "ORDER_BURST"),
            (
                "order rate not a number",
                &[("ORDER_RATE_PER_MINUTE", "lots")],
                "ORDER_RATE_PER_MINUTE",
            ),
            (
                "drain not a number",
                &[("SHUTDOWN_DRAIN_SECS", "5s")],
                "SHUTDOWN_DRAIN_SECS",
            ),
        ];
        let mut failures = Vec::new();
        for (name, pairs, variable) in cases {
            match config(&with_secret_and_gateway(pairs)) {
                Err(e) if e.name() == *variable => {}
                other => failures.push(format!(
                    "{name}: expected an error naming {variable}, got {other:?}"
                )),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn the_secret_is_required_and_long() {
        let err = config(&[("PAYMENT_GATEWAY", "stand-in")]).unwrap_err();
        assert_eq!(err.name(), "COMMERCE_JWT_SECRET");
        let err = config(&[
            ("PAYMENT_GATEWAY", "stand-in"),
            ("COMMERCE_JWT_SECRET", "0123456789abcdef"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("at least 32"), "{err}");
        assert!(!err.to_string().contains("0123456789abcdef"), "{err}");
    }

    #[test]
    fn without_a_gateway_the_app_refuses_to_start() {
        let err = config(&[("COMMERCE_JWT_SECRET", SECRET)]).unwrap_err();
        assert_eq!(err.name(), "PAYMENT_GATEWAY_URL", "{err}");
        let c = config(&[
            ("COMMERCE_JWT_SECRET", SECRET),
            ("PAYMENT_GATEWAY_URL", "http://127.0.0.1:8090"),
        ])
        .unwrap();
        assert_eq!(
            c.payment.gateway,
            Some(PaymentGateway::Url(SecretUrl::new("http://127.0.0.1:8090")))
        );
    }

    #[test]
    fn saga_threads_zero_runs_the_saga_among_the_requests() {
        let c = config(&with_secret_and_gateway(&[("SAGA_THREADS", "0")])).unwrap();
        assert_eq!(c.saga.threads, 0);
        let c = config(&with_secret_and_gateway(&[("SAGA_THREADS", "64")])).unwrap();
        assert_eq!(c.saga.threads, 64);
    }

    #[test]
    fn a_service_apart_needs_no_gateway_unless_it_pays() {
        let apart = [
            ("COMMERCE_JWT_SECRET", SECRET),
            ("KAFKA_BROKERS", "127.0.0.1:9092"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
        ];
        for (service, expected) in [("order", Service::Order), ("store", Service::Store)] {
            let mut pairs = apart.to_vec();
            pairs.push(("SERVICE", service));
            assert_eq!(config(&pairs).unwrap().service, expected);
        }
        let mut pairs = apart.to_vec();
        pairs.push(("SERVICE", "payment"));
        assert_eq!(config(&pairs).unwrap_err().name(), "PAYMENT_GATEWAY_URL");
        for (name, service) in Service::NAMES.iter().zip(Service::ALL) {
            assert_eq!(name.parse::<Service>().unwrap(), service);
            assert_eq!(service.to_string(), *name);
        }
    }

    #[test]
    fn a_limit_of_zero_is_no_limit() {
        let c = config(&with_secret_and_gateway(&[
            ("MAX_OPEN_ORDERS_PER_USER", "0"),
            ("MAX_BACKORDERED_UNITS_PER_USER", "50"),
        ]))
        .unwrap();
        assert_eq!(c.orders.max_open_orders_per_user, None);
        assert_eq!(c.orders.max_backordered_units_per_user, Some(50));
    }

    #[test]
    fn strategy_names_round_trip() {
        for kind in StockStrategyKind::ALL {
            assert_eq!(kind.name().parse::<StockStrategyKind>(), Ok(kind));
        }
        assert!("lock".parse::<StockStrategyKind>().is_err());
    }
}
