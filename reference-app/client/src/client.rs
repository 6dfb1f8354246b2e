//! [`ApiClient`]: one typed method per route.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use reqwest::header::{HeaderMap, HeaderName};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::admin::{
    AuditView, ConsumerDeadLetterQuery, ConsumerDeadLetterView, DeadLetterQuery, DeadLetterView,
    Replayed,
};
use crate::error::{Error, ErrorBody, Result};
use crate::events::StatusStream;
use crate::ops::Health;
use crate::order::{ListQuery, OrderList, OrderView, PlaceOrder};
use crate::retry::RetryPolicy;
use crate::store::{
    CreateProduct, Inbound, InboundView, MovementsPage, MovementsQuery, ProductView, RenameProduct,
    StockView,
};

/// The header that makes a placement safe to repeat.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set (`true`) on the answer to a repeated placement: the order is the first one.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The request id the server logs a request under, echoed on every answer.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A client of the order system's HTTP API. Cheap to clone: clones share the connection pool.
///
/// Built by [`ApiClient::builder`]; [`ApiClient::with_token`] gives a clone acting for
/// another caller over the same connections.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Arc<str>,
    token: Option<Arc<str>>,
    timeout: Duration,
    retry: RetryPolicy,
}

/// Settings of an [`ApiClient`]; every one has a default.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until built"]
pub struct ApiClientBuilder {
    base_url: String,
    token: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    pool_max_idle_per_host: usize,
}

impl ApiClientBuilder {
    /// The bearer token sent with every request (default none: only `/health`, `/ready`,
    /// `/metrics` and the docs answer without one).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How long one attempt of a request may take, answer included (default 30 s). The
    /// status stream is exempt once its headers have arrived.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long opening a connection may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The retry policy of reads and placements (default [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Idle connections kept per host (default 32): raise it for many concurrent callers.
    pub fn pool_max_idle_per_host(mut self, connections: usize) -> Self {
        self.pool_max_idle_per_host = connections;
        self
    }

    /// The client.
    ///
    /// # Errors
    /// [`Error::InvalidBaseUrl`] for a URL that is not `http(s)://host[:port][/prefix]`;
    /// [`Error::Transport`] when the HTTP stack cannot be set up.
    pub fn build(self) -> Result<ApiClient> {
        let invalid = |reason: &str| Error::InvalidBaseUrl {
            url: self.base_url.clone(),
            reason: reason.to_owned(),
        };
        let url = reqwest::Url::parse(&self.base_url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(invalid("not an http(s) URL"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("a base URL has no query or fragment"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .user_agent(concat!("commerce-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::Transport)?;
        Ok(ApiClient {
            http,
            base: self.base_url.trim_end_matches('/').into(),
            token: self.token.map(Into::into),
            timeout: self.timeout,
            retry: self.retry,
        })
    }
}

/// An order placed (or found placed by an earlier attempt with the same key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The order, as it was when placed.
    pub order: OrderView,
    /// `201 Created` (all its stock) or `202 Accepted` (backordered).
    pub status: StatusCode,
    /// Whether the server answered from an earlier request with the same key
    /// (`Idempotent-Replayed: true`): this call placed nothing new.
    pub replayed: bool,
    /// The idempotency key the placement was sent with (the caller's, or one generated);
    /// `None` from [`ApiClient::place_order_without_key`].
    pub idempotency_key: Option<String>,
    /// Attempts made, 1 when the first was answered.
    pub attempts: u32,
}

impl ApiClient {
    /// A builder for a client of the API at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn builder(base_url: impl Into<String>) -> ApiClientBuilder {
        ApiClientBuilder {
            base_url: base_url.into(),
            token: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            pool_max_idle_per_host: 32,
        }
    }

    /// A clone sending `token` instead, over the same connections.
    #[must_use]
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        Self {
            token: Some(token.into().into()),
            ..self.clone()
        }
    }

    /// A clone with another retry policy, over the same connections.
    #[must_use]
    pub fn with_retry(&self, policy: RetryPolicy) -> Self {
        Self {
            retry: policy,
            ..self.clone()
        }
    }

    /// The base URL, without a trailing slash.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base
    }

    // --- store ---

    /// `POST /api/v1/products` (admin): creates a product with its initial stock.
    ///
    /// # Errors
    /// [`Error::Api`] `sku_taken` (409), `validation_failed` (422), `forbidden` (403), ...;
    /// [`Error::Transport`].
    pub async fn create_product(&self, product: &CreateProduct) -> Result<ProductView> {
        let request = self.request(Method::POST, "/api/v1/products").json(product);
        Ok(self.send(request).await?.1)
    }

    /// `PATCH /api/v1/products/{id}` (admin): renames a product; every instance of the store
    /// serves the new name from then on (its cache entry is evicted everywhere).
    ///
    /// # Errors
    /// [`Error::Api`] `product_not_found` (404), `validation_failed` (422), `forbidden` (403),
    /// ...; [`Error::Transport`].
    pub async fn rename_product(&self, id: i64, rename: &RenameProduct) -> Result<ProductView> {
        let request = self
            .request(Method::PATCH, &format!("/api/v1/products/{id}"))
            .json(rename);
        Ok(self.send(request).await?.1)
    }

    /// `GET /api/v1/products/{id}`: a product with its current stock.
    ///
    /// # Errors
    /// [`Error::Api`] `product_not_found` (404); [`Error::Transport`].
    pub async fn product(&self, id: i64) -> Result<ProductView> {
        self.read(&format!("/api/v1/products/{id}"), None::<&()>)
            .await
    }

    /// `GET /api/v1/products/{id}/stock`: a product's current stock.
    ///
    /// # Errors
    /// [`Error::Api`] `product_not_found` (404); [`Error::Transport`].
    pub async fn stock(&self, id: i64) -> Result<StockView> {
        self.read(&format!("/api/v1/products/{id}/stock"), None::<&()>)
            .await
    }

    /// `POST /api/v1/products/{id}/inbound` (admin): records arriving stock, which serves the
    /// oldest backorders first. Sent once (a repeat would receive the stock twice).
    ///
    /// # Errors
    /// [`Error::Api`] `product_not_found` (404), `validation_failed` (422), ...;
    /// [`Error::Transport`].
    pub async fn receive_stock(&self, id: i64, inbound: &Inbound) -> Result<InboundView> {
        let path = format!("/api/v1/products/{id}/inbound");
        let request = self.request(Method::POST, &path).json(inbound);
        Ok(self.send(request).await?.1)
    }

    /// `GET /api/v1/products/{id}/movements` (admin): a page of the stock ledger, newest
    /// first.
    ///
    /// # Errors
    /// [`Error::Api`] `product_not_found` (404), `invalid_query` (400), ...;
    /// [`Error::Transport`].
    pub async fn movements(&self, id: i64, page: &MovementsQuery) -> Result<MovementsPage> {
        self.read(&format!("/api/v1/products/{id}/movements"), Some(page))
            .await
    }

    // --- orders ---

    /// `POST /api/v1/orders`: places an order under a fresh idempotency key (a UUID), retried
    /// under the same key by the client's [`RetryPolicy`] when no usable answer came, so
    /// that at most one order is placed.
    ///
    /// # Errors
    /// [`Error::Api`] `insufficient_stock` (409, details: product, requested, available),
    /// `product_not_found` (404), `validation_failed` (422), ...; [`Error::Transport`] when
    /// the last attempt got no answer (the order may exist: repeat with
    /// [`ApiClient::place_order_with_key`] and the same key to find out).
    pub async fn place_order(&self, order: &PlaceOrder) -> Result<Placed> {
        self.place_order_with_key(order, &Uuid::new_v4().to_string())
            .await
    }

    /// [`ApiClient::place_order`] with the caller's idempotency key (1 to 200 visible ASCII
    /// characters): a repeat with the same key and body answers with the first order
    /// ([`Placed::replayed`]); with another body, 409 `idempotency_key_reused`.
    ///
    /// # Errors
    /// As [`ApiClient::place_order`].
    pub async fn place_order_with_key(&self, order: &PlaceOrder, key: &str) -> Result<Placed> {
        let attempts = AtomicU32::new(0);
        let attempt = || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            let request = self
                .request(Method::POST, "/api/v1/orders")
                .header(IDEMPOTENCY_KEY, key)
                .json(order);
            self.send::<OrderView>(request).await
        };
        let (status, order, headers) = attempt
            .retry(self.retry.backoff())
            .when(Error::is_transient)
            .adjust(|error, planned| self.retry.wait(error, planned))
            .await?;
        Ok(Placed {
            order,
            status,
            replayed: is_replayed(&headers),
            idempotency_key: Some(key.to_owned()),
            attempts: attempts.load(Ordering::Relaxed),
        })
    }

    /// `POST /api/v1/orders` without an idempotency key, sent once whatever the retry
    /// policy: a repeat could place a second order. For callers that measure the server's
    /// unkeyed path (the load harness) or deduplicate on their own.
    ///
    /// # Errors
    /// As [`ApiClient::place_order`]; after [`Error::Transport`] the order may or may not
    /// exist.
    pub async fn place_order_without_key(&self, order: &PlaceOrder) -> Result<Placed> {
        let request = self.request(Method::POST, "/api/v1/orders").json(order);
        let (status, order, headers) = self.send::<OrderView>(request).await?;
        Ok(Placed {
            order,
            status,
            replayed: is_replayed(&headers),
            idempotency_key: None,
            attempts: 1,
        })
    }

    /// `GET /api/v1/orders/{id}`: an order with its status history (its owner or an admin).
    ///
    /// # Errors
    /// [`Error::Api`] `order_not_found` (404), `forbidden` (403); [`Error::Transport`].
    pub async fn order(&self, id: Uuid) -> Result<OrderView> {
        self.read(&format!("/api/v1/orders/{id}"), None::<&()>)
            .await
    }

    /// `GET /api/v1/orders`: a page of the caller's orders, newest first; pass
    /// [`OrderList::next_cursor`] as [`ListQuery::cursor`] for the next.
    ///
    /// # Errors
    /// [`Error::Api`] `invalid_query` (400); [`Error::Transport`].
    pub async fn orders(&self, page: &ListQuery) -> Result<OrderList> {
        self.read("/api/v1/orders", Some(page)).await
    }

    /// `POST /api/v1/orders/{id}/cancel` (its owner or an admin): its stock returns; a
    /// payment already taken is refunded.
    ///
    /// # Errors
    /// [`Error::Api`] `illegal_transition` (409), `order_not_found` (404), `forbidden`
    /// (403); [`Error::Transport`].
    pub async fn cancel_order(&self, id: Uuid) -> Result<OrderView> {
        self.move_order(id, "cancel").await
    }

    /// `POST /api/v1/orders/{id}/ship` (admin): a PROCESSING order is SHIPPED.
    ///
    /// # Errors
    /// [`Error::Api`] `illegal_transition` (409), `order_not_found` (404), `forbidden`
    /// (403); [`Error::Transport`].
    pub async fn ship_order(&self, id: Uuid) -> Result<OrderView> {
        self.move_order(id, "ship").await
    }

    /// `POST /api/v1/orders/{id}/deliver` (admin): a SHIPPED order is DELIVERED.
    ///
    /// # Errors
    /// [`Error::Api`] `illegal_transition` (409), `order_not_found` (404), `forbidden`
    /// (403); [`Error::Transport`].
    pub async fn deliver_order(&self, id: Uuid) -> Result<OrderView> {
        self.move_order(id, "deliver").await
    }

    async fn move_order(&self, id: Uuid, step: &str) -> Result<OrderView> {
        let request = self.request(Method::POST, &format!("/api/v1/orders/{id}/{step}"));
        Ok(self.send(request).await?.1)
    }

    /// `GET /api/v1/orders/{id}/events`: the order's status stream, open once this returns
    /// (its owner or an admin). The first event is the current status.
    ///
    /// # Errors
    /// [`Error::Api`] `order_not_found` (404), `forbidden` (403) before the stream opens;
    /// [`Error::UnexpectedResponse`] when the answer is not `text/event-stream`;
    /// [`Error::Transport`].
    pub async fn order_events(&self, id: Uuid) -> Result<StatusStream> {
        // No overall timeout: the stream lasts as long as the order moves.
        let mut request = self
            .http
            .get(format!("{}/api/v1/orders/{id}/events", self.base))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(Error::Transport)?;
        let response = error_for_status(response).await?;
        let is_sse = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            return Err(Error::UnexpectedResponse {
                status: response.status(),
                reason: "not a text/event-stream".into(),
            });
        }
        Ok(StatusStream::from_bytes(response.bytes_stream()))
    }

    // --- admin ---

    /// `GET /api/v1/admin/dead-letters` (admin): events the relay gave up publishing, oldest
    /// first.
    ///
    /// # Errors
    /// [`Error::Api`] `forbidden` (403), `invalid_query` (400); [`Error::Transport`].
    pub async fn dead_letters(&self, page: &DeadLetterQuery) -> Result<Vec<DeadLetterView>> {
        self.read("/api/v1/admin/dead-letters", Some(page)).await
    }

    /// `POST /api/v1/admin/dead-letters/{id}/replay` (admin): the dead letter is pending
    /// again; the relay publishes it, then what it held back.
    ///
    /// # Errors
    /// [`Error::Api`] `event_not_found` (404), `not_a_dead_letter` (409); [`Error::Transport`].
    pub async fn replay_dead_letter(&self, id: Uuid) -> Result<Replayed> {
        let path = format!("/api/v1/admin/dead-letters/{id}/replay");
        Ok(self.send(self.request(Method::POST, &path)).await?.1)
    }

    /// `GET /api/v1/admin/audit` (admin): stock against the ledger, orders and backorders.
    ///
    /// # Errors
    /// [`Error::Api`] `forbidden` (403); [`Error::Transport`].
    pub async fn audit(&self) -> Result<AuditView> {
        self.read("/api/v1/admin/audit", None::<&()>).await
    }

    /// `GET /api/v1/admin/consumer-dead-letters` (admin): events a consumer set aside
    /// because they can never be applied, oldest first.
    ///
    /// # Errors
    /// [`Error::Api`] `forbidden` (403), `invalid_query` (400); [`Error::Transport`].
    pub async fn consumer_dead_letters(
        &self,
        query: &ConsumerDeadLetterQuery,
    ) -> Result<Vec<ConsumerDeadLetterView>> {
        self.read("/api/v1/admin/consumer-dead-letters", Some(query))
            .await
    }

    /// `POST /api/v1/admin/consumer-dead-letters/{consumer}/{event_id}/replay` (admin):
    /// applies the event again through its consumer (after a fix); it stays a dead letter if
    /// it still cannot be applied.
    ///
    /// # Errors
    /// [`Error::Api`] `consumer_not_found` / `dead_letter_not_found` (404), `replay_failed`
    /// (409); [`Error::Transport`].
    pub async fn replay_consumer_dead_letter(
        &self,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<Replayed> {
        let path = format!(
            "/api/v1/admin/consumer-dead-letters/{}/{event_id}/replay",
            path_segment(consumer)
        );
        Ok(self.send(self.request(Method::POST, &path)).await?.1)
    }

    /// `DELETE /api/v1/admin/consumer-dead-letters/{consumer}/{event_id}` (admin): drops the
    /// dead letter for good.
    ///
    /// # Errors
    /// [`Error::Api`] `dead_letter_not_found` (404); [`Error::Transport`].
    pub async fn discard_consumer_dead_letter(&self, consumer: &str, event_id: Uuid) -> Result<()> {
        let path = format!(
            "/api/v1/admin/consumer-dead-letters/{}/{event_id}",
            path_segment(consumer)
        );
        let response = self.execute(self.request(Method::DELETE, &path)).await?;
        error_for_status(response).await.map(drop)
    }

    // --- ops ---

    /// `GET /health`: the process serves requests.
    ///
    /// # Errors
    /// [`Error::Transport`]; [`Error::Api`] when shed or timed out.
    pub async fn health(&self) -> Result<Health> {
        self.read("/health", None::<&()>).await
    }

    /// `GET /ready`: whether the dependencies answer. A 503 with its checks is an `Ok`
    /// whose status is [`HealthStatus::Unavailable`](crate::HealthStatus::Unavailable).
    ///
    /// # Errors
    /// [`Error::Transport`]; [`Error::Api`] when shed or timed out.
    pub async fn ready(&self) -> Result<Health> {
        let response = self.execute(self.request(Method::GET, "/ready")).await?;
        let status = response.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let bytes = response.bytes().await.map_err(Error::Transport)?;
            return match serde_json::from_slice::<Health>(&bytes) {
                Ok(health) => Ok(health),
                Err(_) => Err(api_error(status, None, None, &bytes)),
            };
        }
        Ok(decode(error_for_status(response).await?).await?.1)
    }

    /// `GET /metrics`: the Prometheus text.
    ///
    /// # Errors
    /// [`Error::Transport`]; [`Error::Api`] when shed or timed out.
    pub async fn metrics(&self) -> Result<String> {
        let response = self.execute(self.request(Method::GET, "/metrics")).await?;
        let response = error_for_status(response).await?;
        response.text().await.map_err(Error::Transport)
    }

    // --- plumbing ---

    /// A request to `path` with the token and the timeout.
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(self.timeout);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// A GET, retried by the policy.
    async fn read<T: DeserializeOwned>(
        &self,
        path: &str,
        query: Option<&(impl Serialize + Sync)>,
    ) -> Result<T> {
        let attempt = || async {
            let mut request = self.request(Method::GET, path);
            if let Some(query) = query {
                request = request.query(query);
            }
            self.send::<T>(request).await
        };
        let (_, body, _) = attempt
            .retry(self.retry.backoff())
            .when(Error::is_transient)
            .adjust(|error, planned| self.retry.wait(error, planned))
            .await?;
        Ok(body)
    }

    async fn execute(&self, request: RequestBuilder) -> Result<Response> {
        request.send().await.map_err(Error::Transport)
    }

    /// Sends once; a success decodes as `T`, an error status becomes [`Error::Api`].
    async fn send<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<(StatusCode, T, HeaderMap)> {
        let response = error_for_status(self.execute(request).await?).await?;
        decode(response).await
    }
}

/// `text` as one path segment (percent-encoded where a URL path would read it otherwise).
fn path_segment(text: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("a valid URL");
    url.path_segments_mut()
        .expect("an http URL has path segments")
        .push(text);
    url.path()[1..].to_owned()
}

fn is_replayed(headers: &HeaderMap) -> bool {
    headers
        .get(IDEMPOTENT_REPLAYED)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// The response if its status is a success, else its error as [`Error::Api`].
async fn error_for_status(response: Response) -> Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let header = |name: HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let request_id = header(REQUEST_ID);
    let retry_after = header(reqwest::header::RETRY_AFTER)
        .and_then(|seconds| seconds.trim().parse().ok())
        .map(std::time::Duration::from_secs);
    let bytes = response.bytes().await.map_err(Error::Transport)?;
    Err(api_error(status, request_id, retry_after, &bytes))
}

fn api_error(
    status: StatusCode,
    request_id: Option<String>,
    retry_after: Option<std::time::Duration>,
    bytes: &[u8],
) -> Error {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => Error::Api {
            status,
            error: body.error,
            request_id,
            retry_after,
        },
        Err(_) => Error::UnexpectedResponse {
            status,
            reason: format!(
                "not an error body: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
        },
    }
}

async fn decode<T: DeserializeOwned>(response: Response) -> Result<(StatusCode, T, HeaderMap)> {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.map_err(Error::Transport)?;
    let body = serde_json::from_slice(&bytes).map_err(|e| Error::UnexpectedResponse {
        status,
        reason: format!("the body does not decode: {e}"),
    })?;
    Ok((status, body, headers))
}
