//! The system under test: the whole app on a fresh database, on port 0, driven over HTTP
//! through `commerce-client` (and a raw HTTP client for the requests a typed client cannot
//! send: malformed bodies, wrong content types, missing or forged tokens).
#![allow(dead_code, unreachable_pub)]

pub mod deployment;
pub mod faults;
pub mod gateway;
pub mod sse;

use std::time::Duration;

use commerce_client::{ApiClient, CreateProduct, ErrorObject, OrderStatus, PlaceOrder, Placed};
use commerce_testkit::{kafka_brokers, unique_name, TestDb};
use reference_app::auth::{Auth, Role};
use reference_app::config::{Config, Secret};
use reference_app::{Application, RunningApp};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

/// Which event transport the app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Postgres alone.
    InProcess,
    /// The Kafka-protocol broker (`KAFKA_BROKERS`, default 127.0.0.1:9092).
    Kafka,
}

/// One `#[tokio::test]` per transport for each scenario, an `async fn(Transport)` beside the
/// call (`#[macro_use] mod common;`): `mod in_process { fn scenario }` and
/// `mod kafka { fn scenario }`.
#[allow(unused_macros)]
macro_rules! on_both_transports {
    ($($scenario:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::common::Transport::InProcess).await;
                }
            )*
        }
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::common::Transport::Kafka).await;
                }
            )*
        }
    };
}

/// A saga timeout of `timeout` (a few seconds), with the payment timings scaled down so the
/// settings still pass the start-up checks: a gateway call of at most a third of it, the
/// worker's lease and backoff within it.
pub fn short_saga(config: &mut Config, timeout: Duration) {
    config.saga.timeout = timeout;
    config.payment.client.overall_timeout = timeout / 3;
    config.payment.client.attempt_timeout = timeout / 6;
    config.payment.worker.lease = timeout / 2;
    config.payment.worker.backoff.max = timeout / 6;
    config.payment.worker.backoff.initial = config.payment.worker.backoff.initial.min(timeout / 12);
}

/// A running app on a database of its own.
pub struct TestApp {
    pub url: String,
    /// The API as an admin.
    pub admin: ApiClient,
    /// The admin's bearer token (for raw requests).
    pub admin_token: String,
    /// For the requests the typed client cannot make.
    pub raw: reqwest::Client,
    pub running: Option<RunningApp>,
    pub auth: Auth,
    pub db: TestDb,
}

/// A raw HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }

    /// Why the answer is not `status` with the documented error body of `code` (`None`: it is).
    pub fn error_mismatch(&self, status: StatusCode, code: &str) -> Option<String> {
        let text = self.body.to_string();
        let lowercase = text.to_lowercase();
        if self.status != status || self.code() != code {
            Some(format!("got {} {text}", self.status))
        } else if !self.body["error"]["message"].is_string()
            || !self.body["error"]["details"].is_object()
        {
            Some(format!("not the error body shape: {text}"))
        } else {
            ["select ", "insert ", "sqlx", "panicked", "src/"]
                .into_iter()
                .find(|leak| lowercase.contains(leak))
                .map(|leak| format!("internals leaked ({leak}): {text}"))
        }
    }

    /// Panics unless the answer is `status` with the documented error body of `code`.
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        if let Some(mismatch) = self.error_mismatch(status, code) {
            panic!("expected {status} {code}: {mismatch}");
        }
    }
}

/// The API error of `result`, which must be `status` with `code`; panics otherwise.
#[track_caller]
pub fn expect_api_error<T: std::fmt::Debug>(
    result: commerce_client::Result<T>,
    status: StatusCode,
    code: &str,
) -> ErrorObject {
    match result {
        Err(commerce_client::Error::Api {
            status: got, error, ..
        }) if got == status && error.code == code => error,
        other => panic!("expected {status} {code}, got {other:?}"),
    }
}

impl TestApp {
    /// The app with default settings on `transport`.
    pub async fn start(transport: Transport) -> Self {
        Self::start_with(transport, |_| {}).await
    }

    /// The app with settings adjusted by `adjust`.
    pub async fn start_with(transport: Transport, adjust: impl FnOnce(&mut Config)) -> Self {
        let db = TestDb::with_pool_size(&[], 2).await;
        let mut config = Config::local(db.url(), SECRET);
        config.events.prefix = unique_name("app");
        if transport == Transport::Kafka {
            config.events.kafka_brokers = Some(kafka_brokers());
        }
        adjust(&mut config);
        let app = Application::build(config).await.expect("build the app");
        let url = app.base_url();
        let running = app.spawn();
        let auth = Auth::new(&Secret::new(SECRET)).unwrap();
        let admin_token = auth
            .issue("admin", Role::Admin, Duration::from_secs(3600))
            .unwrap();
        let admin = ApiClient::builder(&url)
            .bearer_token(&admin_token)
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .expect("API client");
        Self {
            url,
            admin,
            admin_token,
            raw: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            running: Some(running),
            auth,
            db,
        }
    }

    pub fn running(&self) -> &RunningApp {
        self.running.as_ref().expect("running")
    }

    /// A token for `user` with `role`, valid for an hour.
    pub fn token(&self, user: &str, role: Role) -> String {
        self.auth
            .issue(user, role, Duration::from_secs(3600))
            .unwrap()
    }

    /// The API as customer `user` (over the admin client's connections).
    pub fn customer(&self, user: &str) -> ApiClient {
        self.admin.with_token(self.token(user, Role::Customer))
    }

    /// Creates a product (admin) and returns its id.
    pub async fn product(&self, sku: &str, price: i64, stock: i64) -> i64 {
        self.admin
            .create_product(&CreateProduct {
                sku: sku.to_owned(),
                name: format!("product {sku}"),
                price,
                initial_stock: stock,
            })
            .await
            .expect("product created")
            .id
    }

    /// `customer` orders `quantity` × `product`.
    pub async fn order(
        &self,
        customer: &ApiClient,
        product: i64,
        quantity: i64,
    ) -> commerce_client::Result<Placed> {
        customer
            .place_order(&PlaceOrder::one(product, quantity))
            .await
    }

    /// The order's status, read by an admin.
    pub async fn status(&self, order: Uuid) -> OrderStatus {
        self.admin.order(order).await.expect("order read").status
    }

    /// Waits (at most `within`) for the order to reach `status`; panics with its history.
    pub async fn wait_for_status(&self, order: Uuid, status: OrderStatus, within: Duration) {
        let reached =
            commerce_testkit::eventually(within, || async { self.status(order).await == status })
                .await;
        if !reached {
            let order = self.admin.order(order).await;
            panic!("order did not reach {status} within {within:?}: {order:?}");
        }
    }

    /// The audit, which must be consistent.
    pub async fn assert_audit_clean(&self) {
        let audit = self.admin.audit().await.expect("audit");
        assert!(audit.consistent, "{audit:?}");
    }

    /// Any request, as sent: `token` may be empty (no header), `body` any JSON.
    pub async fn raw_request(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.raw.request(method, format!("{}{path}", self.url));
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Shuts the app down gracefully.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            commerce_testkit::within(Duration::from_secs(60), running.stop())
                .await
                .expect("clean stop");
        }
    }
}
