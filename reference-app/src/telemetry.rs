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

/// Logs to stderr at `RUST_LOG` (default `info,sqlx=warn`), once per process; with
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set, the spans also go to that OpenTelemetry collector over
/// OTLP/HTTP (service name `OTEL_SERVICE_NAME`, batches as `OTEL_BSP_*` say), each request's
/// span a child of the trace context it came with. Call [`shutdown`] before the process
/// ends, so the last spans are sent.
pub fn init_logs() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let otlp = otlp_tracer().map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otlp)
        .try_init();
}

/// The process's OTLP exporter, kept for [`shutdown`].
static PROVIDER: OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = OnceLock::new();

/// A tracer exporting over OTLP/HTTP, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the
/// exporter reads it and the other `OTEL_EXPORTER_OTLP_*` settings itself).
fn otlp_tracer() -> Option<opentelemetry_sdk::trace::SdkTracer> {
    use opentelemetry::trace::TracerProvider;

    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|endpoint| !endpoint.trim().is_empty())?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT: no OTLP exporter ({error}); spans stay local");
            return None;
        }
    };
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = provider.tracer("commerce-rs");
    let _ = PROVIDER.set(provider);
    Some(tracer)
}

/// Sends the spans not exported yet and stops the exporter (nothing when there is none).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(error) = provider.shutdown() {
            eprintln!("OTLP exporter shutdown: {error}");
        }
    }
}

/// Makes `span` (a request's) a child of the W3C trace context in `headers`, so that what
/// the collector receives from the gateway and from each service is one trace. Nothing
/// without an exporter or a context.
pub fn adopt_trace_context(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    if PROVIDER.get().is_none() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderCarrier(headers))
    });
    let _ = span.set_parent(parent);
}

/// `headers` as an OpenTelemetry propagation carrier.
struct HeaderCarrier<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
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
