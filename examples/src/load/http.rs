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
use reference_app::auth::{Auth, Role};
use reference_app::config::{Config, Secret, SecretUrl, StockStrategyKind};
use reference_app::{Application, RunningApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::target::Attempt;

/// The JWT secret of the app the harness starts (it mints its clients' tokens with it).
const SECRET: &str = "stock-load-http-secret-0123456789abcdef";

/// Clients of the app over HTTP.
#[derive(Clone)]
pub struct HttpTarget {
    client: reqwest::Client,
    orders_url: String,
    auth: Arc<Auth>,
    /// A token per user, minted once.
    tokens: Arc<Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("orders_url", &self.orders_url)
            .finish_non_exhaustive()
    }
}

/// Starts the app on database `name` with `strategy`, `connections` database connections and
/// room for `clients` requests in flight.
///
/// # Errors
/// A strategy the app does not offer, or the app failing to start.
pub(crate) async fn start(
    strategy: &str,
    name: &str,
    connections: u32,
    clients: usize,
) -> anyhow::Result<(HttpTarget, RunningApp)> {
    let Ok(kind) = strategy.parse::<StockStrategyKind>() else {
        bail!("--http: strategy {strategy:?} has no HTTP form");
    };
    let server = commerce_testkit::database_url();
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(base, _)| base);
    let mut config = Config::local(format!("{base}/{name}"), SECRET);
    config.database.max_connections = connections;
    config.database.background_connections = 4;
    config.stock.strategy = kind;
    config.redis_url = (kind == StockStrategyKind::RedisLock)
        .then(|| SecretUrl::new(commerce_testkit::redis_url()));
    // Like the clients' pool: waiting is part of the latency measured, not a failure.
    config.http.request_timeout = Duration::from_secs(600);
    config.http.max_in_flight = clients.saturating_mul(2).max(1);
    config.events.prefix = commerce_testkit::unique_name("load");
    // Payments queue behind a surge; the run measures ordering, not the saga's patience.
    config.saga.timeout = Duration::from_secs(3_600);
    let app = Application::build(config)
        .await
        .context("start the reference app")?;
    let orders_url = format!("{}/api/v1/orders", app.base_url());
    let running = app.spawn();
    let target = HttpTarget {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(clients.min(1_024))
            .build()
            .context("HTTP client")?,
        orders_url,
        auth: Arc::new(Auth::new(&Secret::new(SECRET)).context("token signer")?),
        tokens: Arc::default(),
    };
    Ok((target, running))
}

impl HttpTarget {
    fn token(&self, user: &str) -> Result<String, String> {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(token) = tokens.get(user) {
            return Ok(token.clone());
        }
        let token = self
            .auth
            .issue(user, Role::Customer, Duration::from_secs(24 * 3600))
            .map_err(|e| e.to_string())?;
        tokens.insert(user.to_owned(), token.clone());
        Ok(token)
    }

    /// Orders one unit of `product` for `user`.
    pub async fn attempt(&self, user: &str, product: i64) -> Attempt {
        let token = match self.token(user) {
            Ok(token) => token,
            Err(e) => return Attempt::Failed(e),
        };
        let sent = self
            .client
            .post(&self.orders_url)
            .bearer_auth(token)
            .json(&json!({"items": [{"product_id": product, "quantity": 1}]}))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Attempt::Failed(e.to_string()),
        };
        let status = response.status();
        if status == StatusCode::CREATED {
            return Attempt::Ok;
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status == StatusCode::CONFLICT && body["error"]["code"] == "insufficient_stock" {
            return Attempt::Rejected;
        }
        Attempt::Failed(format!("{status}: {body}"))
    }
}
