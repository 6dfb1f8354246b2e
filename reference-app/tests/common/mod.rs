//! The system under test: the whole app on a fresh database, on port 0, driven over HTTP.
#![allow(dead_code, unreachable_pub)]

pub mod gateway;

use std::time::Duration;

use commerce_testkit::{kafka_brokers, unique_name, TestDb};
use futures::StreamExt;
use reference_app::auth::{Auth, Role};
use reference_app::config::{Config, Secret};
use reference_app::{Application, RunningApp};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

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
    pub client: reqwest::Client,
    pub running: Option<RunningApp>,
    pub auth: Auth,
    pub admin: String,
    pub db: TestDb,
}

/// An HTTP answer.
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

    /// Panics unless the body is the documented error shape.
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.code(), code, "{self:?}");
        assert!(self.body["error"]["message"].is_string(), "{self:?}");
        assert!(self.body["error"]["details"].is_object(), "{self:?}");
        let text = self.body.to_string().to_lowercase();
        for leak in ["select ", "insert ", "sqlx", "panicked", "src/"] {
            assert!(!text.contains(leak), "internals leaked: {text}");
        }
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
        let admin = auth
            .issue("admin", Role::Admin, Duration::from_secs(3600))
            .unwrap();
        Self {
            url,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            running: Some(running),
            auth,
            admin,
            db,
        }
    }

    pub fn running(&self) -> &RunningApp {
        self.running.as_ref().expect("running")
    }

    /// A customer token for `user`.
    pub fn customer(&self, user: &str) -> String {
        self.auth
            .issue(user, Role::Customer, Duration::from_secs(3600))
            .unwrap()
    }

    /// Any request; `token` may be empty (no header).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
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

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.request(Method::GET, path, token, None, &[]).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.request(Method::POST, path, token, Some(body), &[])
            .await
    }

    /// Creates a product (admin) and returns its id.
    pub async fn product(&self, sku: &str, price: i64, stock: i64) -> i64 {
        let answer = self
            .post(
                "/api/v1/products",
                &self.admin,
                json!({"sku": sku, "name": format!("product {sku}"), "price": price, "initial_stock": stock}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        answer.body["id"].as_i64().expect("id")
    }

    /// Places an order of `quantity` × `product` for `token`'s user.
    pub async fn order(&self, token: &str, product: i64, quantity: i64) -> Answer {
        self.post(
            "/api/v1/orders",
            token,
            json!({"items": [{"product_id": product, "quantity": quantity}]}),
        )
        .await
    }

    /// The order's status, read by an admin.
    pub async fn status(&self, order: &str) -> String {
        let answer = self
            .get(&format!("/api/v1/orders/{order}"), &self.admin)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        answer.body["status"].as_str().unwrap().to_owned()
    }

    /// Waits (at most `within`) for the order to reach `status`; panics with its history.
    pub async fn wait_for_status(&self, order: &str, status: &str, within: Duration) {
        let reached =
            commerce_testkit::eventually(within, || async { self.status(order).await == status })
                .await;
        if !reached {
            let answer = self
                .get(&format!("/api/v1/orders/{order}"), &self.admin)
                .await;
            panic!(
                "order {order} did not reach {status} within {within:?}: {}",
                answer.body
            );
        }
    }

    /// The audit, which must be consistent.
    pub async fn assert_audit_clean(&self) {
        let audit = self.get("/api/v1/admin/audit", &self.admin).await;
        assert_eq!(audit.body["consistent"], json!(true), "{audit:?}");
    }

    /// Reads the SSE stream of `order` until it ends or `within` passes; returns the statuses.
    pub async fn watch(&self, order: &str, token: &str, within: Duration) -> Vec<String> {
        let response = self
            .client
            .get(format!("{}/api/v1/orders/{order}/events", self.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("stream opened");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut statuses = Vec::new();
        let mut buffer = String::new();
        let mut stream = response.bytes_stream();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(None) | Err(_) => break,
                Ok(Some(Err(e))) => panic!("stream failed: {e}"),
            };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                    let value: Value = serde_json::from_str(data.trim()).expect("JSON data");
                    statuses.push(value["status"].as_str().unwrap().to_owned());
                }
            }
        }
        statuses
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
