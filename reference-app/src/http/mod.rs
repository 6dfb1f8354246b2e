//! What every route shares: the error type, the extractors, and the layers around the whole
//! router (request ids, logging, metrics, timeouts, load shedding, body limits, panics, and
//! JSON bodies for unknown routes and wrong methods).
//!
//! From the outside in: panics caught, request id (a client's own kept only when it is a sane
//! token), logging, body limit, metrics (so every answer is counted, the shedder's 429s
//! too); then, for the API but not the probes, load shedding and the request timeout.

mod error;
pub mod extract;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use commerce_outbox::trace;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::{page_limit, ApiError, ApiResult, ErrorBody, ErrorObject};

/// The request id header: set when the client sends none (or one that is not a sane token),
/// echoed on every response, and carried by every log line of the request.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client request id kept (a W3C `traceparent` is 55 characters).
const MAX_REQUEST_ID: usize = 128;

/// Limits of the HTTP layer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request taking longer gets 503 `timeout` (streams: until their headers are sent).
    pub request_timeout: Duration,
    /// Larger bodies get 413.
    pub body_limit: usize,
    /// Requests in flight beyond this get 429 at once instead of queueing.
    pub max_in_flight: usize,
}

/// Turns Nagle's algorithm off on an accepted connection, so an answer written in two parts
/// (the head, then a streamed body: what the gateway relays) leaves at once instead of waiting
/// for the client's delayed acknowledgement of the first part (up to 40 ms on Linux).
/// A connection that refuses the option is served as it is.
pub(crate) fn no_delay(connection: &mut tokio::net::TcpStream) {
    if let Err(error) = connection.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY refused on an accepted connection");
    }
}

/// Wraps `api` in the shared layers and JSON fallbacks, and mounts `probes` (liveness and
/// readiness) beside it outside the load shedder and the request timeout: a busy instance
/// still answers its orchestrator.
pub fn layered(api: Router, probes: Router, limits: Limits) -> Router {
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    let timeout = limits.request_timeout;
    api.fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(move |request, next| {
            within_timeout(timeout, request, next)
        }))
        .layer(middleware::from_fn_with_state(in_flight, shed_load))
        .merge(probes.method_not_allowed_fallback(method_not_allowed))
        .layer(middleware::from_fn(within_trace))
        .layer(middleware::from_fn(crate::telemetry::track_requests))
        .layer(DefaultBodyLimit::max(limits.body_limit))
        .layer(
            ServiceBuilder::new()
                .map_request(drop_insane_request_id)
                .map_request(ensure_traceparent)
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http().make_span_with(|request: &Request| {
                        let id = request
                            .headers()
                            .get(REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        // The W3C trace id the gateway passes on (or the client sent): one
                        // request's lines share it across the gateway and the services.
                        let trace = request
                            .headers()
                            .get(trace::TRACEPARENT)
                            .and_then(|v| v.to_str().ok())
                            .and_then(trace::trace_id)
                            .unwrap_or("-");
                        let span = tracing::info_span!(
                            "request",
                            id = %id,
                            trace = %trace,
                            method = %request.method(),
                            uri = %request.uri().path(),
                        );
                        crate::telemetry::adopt_trace_context(&span, request.headers());
                        span
                    }),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(CatchPanicLayer::custom(panic_response)),
        )
}

/// Removes a client's request id unless it is a sane token (1 to [`MAX_REQUEST_ID`] ASCII
/// letters, digits, `-`, `_`, `.`, `:`), so a fresh one is made: the id goes into every log
/// line of the request, and a client must not be able to flood or forge those.
fn drop_insane_request_id(mut request: Request) -> Request {
    if request
        .headers()
        .get(REQUEST_ID)
        .is_some_and(|id| !is_sane_request_id(id))
    {
        request.headers_mut().remove(REQUEST_ID);
    }
    request
}

/// Gives a request without a W3C trace context (or with one that is not W3C's) a new one, so
/// every log line of the request, and every event it writes, carries a trace id; the gateway
/// passes it on to the services.
fn ensure_traceparent(mut request: Request) -> Request {
    let valid = request
        .headers()
        .get(trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(trace::is_traceparent);
    if !valid {
        let trace_id = uuid::Uuid::new_v4().simple().to_string();
        let span_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
        let value = format!("00-{trace_id}-{span_id}-01");
        request.headers_mut().insert(
            trace::TRACEPARENT,
            HeaderValue::from_str(&value).expect("hex digits and dashes"),
        );
    }
    request
}

fn is_sane_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    (1..=MAX_REQUEST_ID).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

async fn route_not_found(uri: Uri) -> ApiError {
    ApiError::route_not_found(uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

/// Runs the request under its W3C trace context (the gateway's, or the client's): the events
/// it writes carry it to their consumers (`commerce_outbox::trace`).
async fn within_trace(request: Request, next: Next) -> Response {
    let traceparent = request
        .headers()
        .get(trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    trace::scope(traceparent, next.run(request)).await
}

async fn within_timeout(timeout: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::timeout().into_response(),
    }
}

/// Sheds load: with every permit taken, answer 429 at once rather than queue without bound.
async fn shed_load(
    State(in_flight): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    match in_flight.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => ApiError::overloaded().into_response(),
    }
}

#[allow(clippy::needless_pass_by_value)] // the signature tower-http's CatchPanic calls
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned());
    ApiError::internal(format!("handler panicked: {what}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_keeps_its_w3c_trace_context_and_gets_one_otherwise() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let with = |value: Option<&str>| {
            let mut request = Request::new(axum::body::Body::empty());
            if let Some(value) = value {
                request
                    .headers_mut()
                    .insert(trace::TRACEPARENT, HeaderValue::from_str(value).unwrap());
            }
            let request = ensure_traceparent(request);
            request.headers()[trace::TRACEPARENT]
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(with(Some(good)), good);
        for replaced in [None, Some("garbage"), Some("00-0-0-01")] {
            let made = with(replaced);
            assert!(trace::is_traceparent(&made), "{made}");
            assert_ne!(Some(made.as_str()), replaced);
        }
        assert_ne!(with(None), with(None), "a new trace each time");
    }

    #[test]
    fn request_ids_are_kept_only_when_they_are_short_plain_tokens() {
        let sane = |text: &str| is_sane_request_id(&HeaderValue::from_str(text).unwrap());
        for kept in [
            "trace-me-42",
            "0192f0c4-7f3a-7c1e-9b2a-1d2e3f4a5b6c",
            "svc.a:1_2",
            &"x".repeat(MAX_REQUEST_ID),
        ] {
            assert!(sane(kept), "{kept}");
        }
        for replaced in [
            "",
            "two words",
            "a\tb",
            "<script>",
            "quote\"d",
            &"x".repeat(MAX_REQUEST_ID + 1),
        ] {
            assert!(!sane(replaced), "{replaced}");
        }
        let non_ascii = HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap();
        assert!(!is_sane_request_id(&non_ascii));
    }
}
