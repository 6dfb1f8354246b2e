//! The same runs over HTTP: the reference app, started in this process on the run's database
//! with the strategy under test, takes every order as `POST /api/v1/orders` from the clients.
//!
//! The whole order system runs, not just the stock write: authentication, the JSON layer, the
//! outbox and the payment saga (each created order is charged at the stand-in gateway in the
//! background, as in production).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};
use commerce_client::{ApiClient, PlaceOrder, RetryPolicy, StatusCode};
use reference_app::auth::{Auth, Role};
use reference_app::config::{
    AuthSettings, Config, GatewayConfig, Secret, SecretUrl, Service, StockStrategyKind,
};
use reference_app::gateway::{Gateway, RunningGateway};
use reference_app::{Application, RunningApp};

use super::target::Attempt;

/// The JWT secret of the app the harness starts (it mints its clients' tokens with it).
const SECRET: &str = "stock-load-http-secret-0123456789abcdef";

/// Clients of the app over HTTP, through `commerce-client`.
#[derive(Clone)]
pub struct HttpTarget {
    /// No token; each user's client is a clone of it over the same connections.
    api: ApiClient,
    auth: Arc<Auth>,
    /// A client per user, its token minted once.
    users: Arc<Mutex<HashMap<String, ApiClient>>>,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("url", &self.api.base_url())
            .finish_non_exhaustive()
    }
}

/// The suffix of a strategy name (`batching+gateway`) that puts the gateway (`serve --service
/// gateway`) in front of the app: the row beside the plain one is what the extra hop costs.
pub(crate) const THROUGH_GATEWAY: &str = "+gateway";

/// The suffix (`batching+apart`) that runs the distributed mode's topology instead of the
/// all-in-one app: two order instances, a store and a payment instance (each an application
/// of its own, in this process), events through Kafka, the cache through Redis, the gateway
/// in front.
pub(crate) const APART: &str = "+apart";

/// The apps the clients talk to, and the gateway in front of them when the row asks for one.
#[derive(Debug)]
pub(crate) struct Served {
    apps: Vec<RunningApp>,
    gateway: Option<RunningGateway>,
}

impl Served {
    /// Stops the gateway, then the apps.
    ///
    /// # Errors
    /// When one failed.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        if let Some(gateway) = self.gateway {
            gateway.stop().await.context("stop the gateway")?;
        }
        for app in self.apps {
            app.stop().await?;
        }
        Ok(())
    }
}

/// What a strategy name asks for: the plain strategy, and where the clients go.
fn topology(strategy: &str) -> (&str, bool, bool) {
    if let Some(plain) = strategy.strip_suffix(APART) {
        (plain, true, true)
    } else if let Some(plain) = strategy.strip_suffix(THROUGH_GATEWAY) {
        (plain, true, false)
    } else {
        (strategy, false, false)
    }
}

/// The plain strategy of a name with [`THROUGH_GATEWAY`] or [`APART`].
pub(crate) fn plain_strategy(strategy: &str) -> (&str, bool) {
    let (plain, gateway, _) = topology(strategy);
    (plain, gateway)
}

/// Starts the app on database `name` with `strategy` (with [`THROUGH_GATEWAY`]: and the
/// gateway in front of it; with [`APART`]: the services apart behind the gateway),
/// `connections` database connections and room for `clients` requests in flight.
///
/// # Errors
/// A strategy the app does not offer, or the app failing to start.
pub(crate) async fn start(
    strategy: &str,
    name: &str,
    connections: u32,
    clients: usize,
) -> anyhow::Result<(HttpTarget, Served)> {
    let (strategy, through_gateway, apart) = topology(strategy);
    let Ok(kind) = strategy.parse::<StockStrategyKind>() else {
        bail!("--http: strategy {strategy:?} has no HTTP form");
    };
    let server = commerce_testkit::database_url();
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(base, _)| base);
    let mut config = Config::local(format!("{base}/{name}"), SECRET);
    config.database.max_connections = connections;
    // The saga's pool (relay, consumers, payment worker) keeps the app's default: the rows
    // report how fast the saga pays what is placed, so it gets what a deployment gives it.
    config.stock.strategy = kind;
    config.redis_url = (kind == StockStrategyKind::RedisLock)
        .then(|| SecretUrl::new(commerce_testkit::redis_url()));
    // Like the clients' pool: waiting is part of the latency measured, not a failure.
    config.http.request_timeout = Duration::from_secs(600);
    config.http.max_in_flight = clients.saturating_mul(2).max(1);
    // Each client is one user ordering back to back: the run measures the system's
    // throughput, not the per-user rate limit.
    config.orders.rate_per_minute = None;
    config.events.prefix = commerce_testkit::unique_name("load");
    // Payments queue behind a surge; the run measures ordering, not the saga's patience.
    config.saga.timeout = Duration::from_secs(3_600);
    // The saga's own runtime, as the app reads it (`SAGA_THREADS=0` puts the saga among the
    // requests, to compare).
    if let Ok(threads) = std::env::var("SAGA_THREADS") {
        config.saga.threads = threads
            .parse()
            .with_context(|| format!("SAGA_THREADS={threads:?}: not a number of threads"))?;
    }
    // Each client orders again and again as one user: per-user limits on open orders would
    // turn the run into a test of the limits (409 `user_limit_exceeded`), not of ordering.
    config.orders.max_open_orders_per_user = None;
    config.orders.max_backordered_units_per_user = None;
    let mut apps = Vec::new();
    let (mut order_urls, mut store_urls) = (Vec::new(), Vec::new());
    if apart {
        config.events.kafka_brokers = Some(commerce_testkit::kafka_brokers());
        config.redis_url = Some(SecretUrl::new(commerce_testkit::redis_url()));
        for service in [
            Service::Store,
            Service::Payment,
            Service::Order,
            Service::Order,
        ] {
            let mut own = config.clone();
            own.service = service;
            if service == Service::Order {
                own.database.max_connections = (connections / 2).max(1);
            } else {
                own.database.max_connections = 4;
            }
            let app = Application::build(own)
                .await
                .with_context(|| format!("start the {service} service"))?;
            match service {
                Service::Order => order_urls.push(app.base_url()),
                Service::Store => store_urls.push(app.base_url()),
                _ => {}
            }
            apps.push(app);
        }
    } else {
        let app = Application::build(config)
            .await
            .context("start the reference app")?;
        order_urls.push(app.base_url());
        store_urls.push(app.base_url());
        apps.push(app);
    }
    let gateway = if through_gateway {
        let gateway = Gateway::build(GatewayConfig {
            listen: "127.0.0.1:0".parse().expect("an address"),
            order: order_urls.clone(),
            store: store_urls.clone(),
            auth: AuthSettings {
                jwt_secret: Secret::new(SECRET),
                ..AuthSettings::default()
            },
            // As the app's own: the rows compare the hop, not the admission rules.
            write_timeout: Duration::from_secs(600),
            max_in_flight: clients.saturating_mul(2).max(1),
            latency_target: None,
            user_rate_per_minute: None,
            ..GatewayConfig::default()
        })
        .await
        .context("start the gateway")?;
        let gateway = gateway.spawn();
        // Its first health check puts the app in.
        let probe = ApiClient::builder(&gateway.base_url)
            .retry(RetryPolicy::none())
            .build()
            .context("HTTP client")?;
        let ready = commerce_testkit::eventually(Duration::from_secs(10), || async {
            probe.ready().await.is_ok()
        })
        .await;
        if !ready {
            bail!("the gateway did not become ready within 10 s");
        }
        Some(gateway)
    } else {
        None
    };
    let url = gateway
        .as_ref()
        .map_or_else(|| order_urls[0].clone(), |g| g.base_url.clone());
    let api = ApiClient::builder(url)
        .pool_max_idle_per_host(clients.min(1_024))
        // One attempt per order: the run measures the server, and a retry would count twice.
        .retry(RetryPolicy::none())
        // Like the app's request timeout: waiting is part of the latency measured.
        .timeout(Duration::from_secs(600))
        .build()
        .context("HTTP client")?;
    let running = apps.into_iter().map(Application::spawn).collect();
    let target = HttpTarget {
        api,
        auth: Arc::new(Auth::new(&Secret::new(SECRET)).context("token signer")?),
        users: Arc::default(),
    };
    Ok((
        target,
        Served {
            apps: running,
            gateway,
        },
    ))
}

impl HttpTarget {
    fn user(&self, user: &str) -> Result<ApiClient, String> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = users.get(user) {
            return Ok(client.clone());
        }
        let token = self
            .auth
            .issue(user, Role::Customer, Duration::from_secs(24 * 3600))
            .map_err(|e| e.to_string())?;
        let client = self.api.with_token(token);
        users.insert(user.to_owned(), client.clone());
        Ok(client)
    }

    /// Orders one unit of `product` for `user` (without an idempotency key, as before the
    /// client existed: the figures measure the unkeyed path).
    pub async fn attempt(&self, user: &str, product: i64) -> Attempt {
        let client = match self.user(user) {
            Ok(client) => client,
            Err(e) => return Attempt::Failed(e),
        };
        match client
            .place_order_without_key(&PlaceOrder::one(product, 1))
            .await
        {
            Ok(placed) if placed.status == StatusCode::CREATED => Attempt::Ok,
            Ok(placed) => Attempt::Failed(format!("{}: {:?}", placed.status, placed.order)),
            Err(e) if e.code() == Some("insufficient_stock") => Attempt::Rejected,
            Err(e) => Attempt::Failed(e.to_string()),
        }
    }
}
