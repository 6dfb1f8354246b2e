//! Logs (tracing) and metrics (Prometheus text at `/metrics`, through the `metrics` facade).
//!
//! Counters and histograms are recorded where things happen; gauges that describe state
//! (outbox lag, the payment breaker, cache hit rates) are read when `/metrics` is scraped.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Request latency buckets, seconds: from a cache hit to a slow payment call.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Logs to stderr at `RUST_LOG` (default `info,sqlx=warn`), once per process.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// The process's Prometheus recorder, installed on first use (one per process: tests that run
/// several apps in one process share it).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("http_request_duration_seconds".into()),
                &LATENCY_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder installed first (an embedding application's) keeps working; ours
        // then renders only what it was given directly.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Records every request's latency by route template and status class.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(
        "http_request_duration_seconds",
        "route" => route.clone(),
        "method" => method.clone(),
        "status" => status.clone()
    )
    .record(started.elapsed().as_secs_f64());
    metrics::counter!("http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// Counts an error response by its code.
pub fn count_error(code: &'static str) {
    metrics::counter!("http_errors_total", "code" => code).increment(1);
}

/// Counts an order placement by outcome (`created`, `backordered`, `replayed`,
/// `insufficient_stock`, `rate_limited`, `error`).
pub fn count_order(outcome: &'static str) {
    metrics::counter!("orders_total", "outcome" => outcome).increment(1);
}

/// Counts a saga outcome on the order side (`paid`, `declined`, `timed_out`, `refunded`,
/// `ignored`, `unprocessable`).
pub fn count_saga(outcome: &'static str) {
    metrics::counter!("saga_outcomes_total", "outcome" => outcome).increment(1);
}

/// Counts what the payment service did with a payment (`approved`, `declined`, `failed`,
/// `voided`, `parked`, `charged_after_cancel`, `refunded`, `refund_failed`,
/// `settled_without_charge`).
pub fn count_payment(outcome: &'static str) {
    metrics::counter!("payment_outcomes_total", "outcome" => outcome).increment(1);
}
