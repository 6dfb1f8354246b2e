//! The one error type of the HTTP API and the one place that turns the crates' typed errors
//! into it. Every error response has the body
//! `{"error": {"code": "snake_case", "message": "...", "details": {...}}}`; 5xx bodies stay
//! generic while the cause goes to the log with the request id.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use commerce_client::DecodeError;
use serde_json::{json, Value};

/// An error as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Value,
    /// Logged, never sent: what went wrong inside.
    cause: Option<String>,
    /// `Retry-After`, seconds (429 and 503 only; 1 when not given).
    retry_after: Option<u64>,
}

pub use commerce_client::{ErrorBody, ErrorObject};

impl ApiError {
    /// An error with `status`, `code` and `message`, no details.
    #[must_use]
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
            cause: None,
            retry_after: None,
        }
    }

    /// Adds details for the client.
    #[must_use]
    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// Adds the internal cause, for the log only.
    #[must_use]
    pub fn cause(mut self, cause: impl std::fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    /// Sets `Retry-After` to `wait` rounded up to whole seconds (at least 1); for 429 and
    /// 503 answers.
    #[must_use]
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(whole_seconds(wait));
        self
    }

    /// 400 `bad_request`.
    #[must_use]
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized`.
    #[must_use]
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    #[must_use]
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 with a specific code.
    #[must_use]
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 422 `validation_failed`.
    #[must_use]
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
    }

    /// 500 `internal`: the body says nothing more; `cause` goes to the log.
    #[must_use]
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on our side; the request id identifies it in the logs",
        )
        .cause(cause)
    }

    /// 503 `unavailable`: a dependency is down; retry later.
    #[must_use]
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "a service this request needs is unavailable; retry later",
        )
        .cause(cause)
    }

    /// 503 `unavailable` with `Retry-After: 1`: nothing reached the dependency (it refused
    /// the connection, or none is up), so the request may be sent again as it is.
    #[must_use]
    pub fn unavailable_briefly(cause: impl std::fmt::Display) -> Self {
        Self::unavailable(cause).retry_after(std::time::Duration::from_secs(1))
    }

    /// 503 `timeout`: the request took longer than the configured limit.
    #[must_use]
    pub fn timeout() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; it may still complete, retry with the same idempotency key",
        )
    }

    /// 404 `route_not_found` for a path no route matches.
    #[must_use]
    pub fn route_not_found(path: &str) -> Self {
        Self::not_found("route_not_found", format!("no route for {path}"))
    }

    /// 405 `method_not_allowed`.
    #[must_use]
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )
    }

    /// 429 `too_many_requests`: the server is at its limit of requests in flight.
    #[must_use]
    pub fn overloaded() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many requests in flight; retry shortly",
        )
        .retry_after(std::time::Duration::from_secs(1))
    }

    /// 400 `invalid_query` for the query parameter `field`.
    #[must_use]
    pub fn invalid_query(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", message)
            .details(json!({ "field": field }))
    }

    /// 404 `consumer_not_found`: no event consumer of that name runs in this process.
    #[must_use]
    pub fn consumer_not_found(consumer: &str, known: &[&str]) -> Self {
        Self::not_found(
            "consumer_not_found",
            format!("no consumer {consumer:?} runs in this process"),
        )
        .details(json!({ "consumer": consumer, "known": known }))
    }

    /// 429 `rate_limited`: the caller sent `what` (`"orders"`, `"requests"`) faster than
    /// their allowance; `wait` is how long until the next is allowed (`Retry-After`, and
    /// `details.retry_after_seconds`).
    #[must_use]
    pub fn rate_limited(what: &str, wait: std::time::Duration) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many {what} in a short time; retry after the time in Retry-After"),
        )
        .details(json!({ "retry_after_seconds": whole_seconds(wait) }))
        .retry_after(wait)
    }

    /// 429 `too_many_streams`: `limit` (`per_user` or `overall`) open event streams, `max`,
    /// are open already.
    #[must_use]
    pub fn too_many_streams(limit: &'static str, max: usize) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            "too many event streams open; close one, or retry later",
        )
        .details(json!({ "limit": limit, "max": max }))
        .retry_after(STREAM_RETRY)
    }
}

/// `limit` (`default` when absent) if it is 1 to `max`, else 400 `invalid_query`.
///
/// # Errors
/// The 400 when `limit` is out of range.
pub fn page_limit(limit: Option<u32>, default: u32, max: u32) -> ApiResult<u32> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::invalid_query(
            "limit",
            format!("limit must be 1 to {max}"),
        ))
    }
}

impl From<crate::auth::TokenError> for ApiError {
    fn from(e: crate::auth::TokenError) -> Self {
        Self::unauthorized(format!("{e}: send `Authorization: Bearer <token>`"))
    }
}

impl From<commerce_outbox::Error> for ApiError {
    fn from(e: commerce_outbox::Error) -> Self {
        use commerce_outbox::Error as E;
        match e {
            E::EventNotFound(id) => {
                Self::not_found("event_not_found", format!("no outbox event {id}"))
            }
            E::NotDeadLetter { id, status } => Self::new(
                StatusCode::CONFLICT,
                "not_a_dead_letter",
                format!("event {id} is {status}, not a dead letter"),
            ),
            E::ConsumerDeadLetterNotFound { consumer, event_id } => Self::not_found(
                "dead_letter_not_found",
                format!("consumer {consumer} has no dead letter {event_id}"),
            ),
            E::ReplayFailed {
                consumer,
                event_id,
                source,
            } => Self::new(
                StatusCode::CONFLICT,
                "replay_failed",
                format!(
                    "consumer {consumer} still cannot apply event {event_id}; it stays a dead letter"
                ),
            )
            .cause(source),
            other => Self::unavailable(e_chain(&other)),
        }
    }
}

/// `wait` rounded up to whole seconds, at least 1 (what `Retry-After` can say).
fn whole_seconds(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// When to try again for a stream refused at a cap: streams end within their lifetime, and
/// a client that closes one of its own may open another at once.
const STREAM_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, cause = ?self.cause, "request failed");
        } else if let Some(cause) = &self.cause {
            tracing::debug!(code = self.code, %cause, "request refused");
        }
        crate::telemetry::count_error(self.code);
        let body = ErrorBody {
            error: ErrorObject {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(self.retry_after.unwrap_or(1)),
            );
        }
        response
    }
}

impl From<commerce_core::Error> for ApiError {
    fn from(e: commerce_core::Error) -> Self {
        use commerce_core::Error as E;
        let message = e.to_string();
        match e {
            E::ProductNotFound { product } => Self::not_found("product_not_found", message)
                .details(json!({ "product_id": product.0 })),
            E::OrderNotFound { order } => {
                Self::not_found("order_not_found", message).details(json!({ "order_id": order.0 }))
            }
            E::ProductAlreadyExists { product } => {
                Self::new(StatusCode::CONFLICT, "product_exists", message)
                    .details(json!({ "product_id": product.0 }))
            }
            E::SkuAlreadyExists { sku } => {
                Self::new(StatusCode::CONFLICT, "sku_taken", message).details(json!({ "sku": sku }))
            }
            E::InsufficientStock {
                product,
                requested,
                available,
            } => Self::new(StatusCode::CONFLICT, "insufficient_stock", message).details(json!({
                "product_id": product.0,
                "requested": requested,
                "available": available,
            })),
            E::IllegalTransition { order, from, to } => {
                Self::new(StatusCode::CONFLICT, "illegal_transition", message).details(json!({
                    "order_id": order.0,
                    "from": from.as_str(),
                    "to": to.as_str(),
                }))
            }
            E::UserLimitExceeded {
                limit,
                current,
                requested,
                max,
                ..
            } => Self::new(StatusCode::CONFLICT, "user_limit_exceeded", message).details(json!({
                "limit": limit.as_str(),
                "current": current,
                "requested": requested,
                "max": max,
            })),
            E::DuplicateRequest { key, existing, .. } => {
                Self::new(StatusCode::CONFLICT, "idempotency_key_reused", message)
                    .details(json!({ "idempotency_key": key, "order_id": existing.0 }))
            }
            E::InvalidQuantity {
                product, quantity, ..
            } => Self::validation(message)
                .details(json!({ "product_id": product.map(|p| p.0), "quantity": quantity })),
            E::EmptyOrder => Self::validation(message),
            E::TooManyLines { lines, max } => {
                Self::validation(message).details(json!({ "lines": lines, "max": max }))
            }
            E::DuplicateLine { product } => {
                Self::validation(message).details(json!({ "product_id": product.0 }))
            }
            E::InvalidInput { field, .. } => {
                Self::validation(message).details(json!({ "field": field }))
            }
            // The lock service down is a dependency down, not a concurrent change.
            E::Strategy(ref source) if lock_service_down(source.as_ref()) => {
                Self::unavailable_briefly(e_chain(&e))
            }
            E::Conflict(_) | E::StockChanged { .. } | E::Strategy(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "conflict_retry",
                "the request met a concurrent change and wrote nothing; retry it",
            )
            .cause(e_chain(&e)),
            E::Overloaded {
                product,
                retry_after,
            } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many orders wait for this product; nothing was written: retry after the \
                 time in Retry-After",
            )
            .details(json!({ "product_id": product.0, "retry_after_seconds": whole_seconds(retry_after) }))
            .retry_after(retry_after),
            E::CommitOutcomeUnknown(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                "the database connection broke while committing: the change may or may not \
                 exist; retry with the same idempotency key, or read it back",
            )
            .cause(e_chain(&e)),
            E::DatabaseUnavailable(_) => Self::unavailable(e_chain(&e)),
            _ => Self::internal(e_chain(&e)),
        }
    }
}

/// Whether a stock strategy's error is its lock service being unreachable or failing
/// (commerce-lock's `Unavailable` or `Redis`), rather than a lock held too long by another.
fn lock_service_down(source: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    matches!(
        source.downcast_ref::<commerce_lock::Error>(),
        Some(commerce_lock::Error::Unavailable { .. } | commerce_lock::Error::Redis { .. })
    )
}

/// The error and its sources on one line, for the log.
fn e_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<DecodeError> for ApiError {
    fn from(error: DecodeError) -> Self {
        match error {
            DecodeError::Syntax(reason) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "the body is not valid JSON",
            )
            .details(json!({ "reason": reason })),
            DecodeError::Shape { path, reason } => {
                let details = if path == "." {
                    json!({ "reason": reason })
                } else {
                    json!({ "field": path, "reason": reason })
                };
                Self::validation("the JSON has the wrong shape or types for this request")
                    .details(details)
            }
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than the server accepts",
            )
        } else {
            Self::bad_request("the request body could not be read").cause(rejection.body_text())
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "a path parameter is not valid (ids are integers for products, UUIDs for orders)",
        )
        .details(json!({ "reason": rejection.body_text() }))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "a query parameter is not valid",
        )
        .details(json!({ "reason": rejection.body_text() }))
    }
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_product_with_too_many_orders_waiting_is_503_overloaded_with_retry_after() {
        let error = commerce_core::Error::Overloaded {
            product: commerce_core::ProductId(7),
            retry_after: std::time::Duration::from_millis(500),
        };
        let response = ApiError::from(error).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(response.into_body(), 4_096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "overloaded");
        assert_eq!(body["error"]["details"]["product_id"], 7);
        assert_eq!(body["error"]["details"]["retry_after_seconds"], 1);
    }
}
