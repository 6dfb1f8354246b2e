//! Pressure a test puts on a running app from outside: the request pool held by a blocked
//! order, a request held in flight by a body that never finishes.

use std::time::Duration;

use reference_app::auth::Role;
use reqwest::{Method, StatusCode};
use sqlx::{Postgres, Transaction};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{Answer, TestApp};

/// Every connection of the app's request pool (sized 1 by the test) held: an order waits for
/// the row lock this test holds on its product.
pub struct HeldPool {
    lock: Transaction<'static, Postgres>,
    blocked: JoinHandle<Answer>,
}

impl HeldPool {
    /// Locks `product`'s row, places an order of it (which waits on the lock, holding a pool
    /// connection) and returns once Postgres shows the order waiting.
    pub async fn hold(app: &TestApp, product: i64) -> Self {
        let mut lock = app.db.pool().begin().await.unwrap();
        sqlx::query("SELECT available FROM commerce.products WHERE id = $1 FOR UPDATE")
            .bind(product)
            .execute(&mut *lock)
            .await
            .unwrap();
        let blocked = {
            let (client, url, token) = (
                app.raw.clone(),
                app.url.clone(),
                app.token("pool-holder", Role::Customer),
            );
            tokio::spawn(async move {
                let response = client
                    .post(format!("{url}/api/v1/orders"))
                    .bearer_auth(token)
                    .json(&serde_json::json!({"items": [{"product_id": product, "quantity": 1}]}))
                    .send()
                    .await
                    .expect("the blocked order is answered");
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.json().await.unwrap_or_default();
                Answer {
                    status,
                    headers,
                    body,
                }
            })
        };
        let pool = app.db.pool().clone();
        let waiting = commerce_testkit::eventually(Duration::from_secs(10), || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&pool)
                .await
                .unwrap()
                    > 0
            }
        })
        .await;
        assert!(waiting, "the order never waited for the row lock");
        Self { lock, blocked }
    }

    /// Releases the lock without waiting for the blocked order's answer (its server may be
    /// gone).
    pub async fn abandon(self) {
        self.lock.rollback().await.unwrap();
        self.blocked.abort();
    }

    /// Releases the lock; the blocked order completes.
    pub async fn release(self) -> Answer {
        self.lock.rollback().await.unwrap();
        commerce_testkit::within(Duration::from_secs(30), self.blocked)
            .await
            .unwrap()
    }
}

/// A request held in flight: its headers sent, its body never finished, so the server's
/// handler waits for the rest (holding its in-flight permit) until the socket is dropped.
pub struct HeldRequest {
    socket: TcpStream,
}

impl HeldRequest {
    /// Starts `POST /api/v1/orders` for `token` with a body that stops half way.
    pub async fn start(app: &TestApp, token: &str) -> Self {
        let address = app.url.trim_start_matches("http://");
        let mut socket = TcpStream::connect(address).await.unwrap();
        let head = format!(
            "POST /api/v1/orders HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"items\": ["
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.flush().await.unwrap();
        Self { socket }
    }

    /// Holds the only request slot of an app with `MAX_IN_FLIGHT=1`: returns once a `GET
    /// probe` is shed. A held request that reached the server while a probe had the slot is
    /// shed itself (answered at once); it is started again then.
    pub async fn take_the_only_slot(app: &TestApp, token: &str, probe: &str) -> Self {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut held = Self::start(app, token).await;
        while tokio::time::Instant::now() < deadline {
            let answer = app.raw_request(Method::GET, probe, token, None, &[]).await;
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                return held;
            }
            if held.was_answered() {
                held = Self::start(app, token).await;
            }
        }
        panic!("the held request never took the slot");
    }

    /// Whether the server has answered (so the request no longer holds anything).
    fn was_answered(&self) -> bool {
        let mut byte = [0_u8; 1];
        !matches!(self.socket.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}
