//! Liveness, readiness and metrics.
//!
//! The probes (`/health`, `/ready`) have a router of their own, mounted outside the load
//! shedder and the request timeout (an orchestrator must hear from a busy instance), and
//! `/ready` checks Postgres on a connection of its own, not the request pool.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use commerce_client::{Health, HealthStatus};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::http::extract::Json;
use crate::services::payment::gateway::BreakerState;
use crate::services::payment::PaymentWorker;
use crate::services::store::catalog::Catalog;

/// A probe's answer: `Err(cause)` when the dependency is down (the cause is logged, never
/// answered).
type Probe = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A dependency `/ready` checks: its name and a probe.
#[derive(Clone)]
pub struct ReadinessCheck {
    name: &'static str,
    probe: Arc<dyn Fn() -> Probe + Send + Sync>,
}

impl std::fmt::Debug for ReadinessCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessCheck")
            .field("name", &self.name)
            .finish()
    }
}

impl ReadinessCheck {
    /// A check called `name` running `probe`.
    pub fn new<F, Fut>(name: &'static str, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            name,
            probe: Arc::new(move || Box::pin(probe())),
        }
    }

    /// Postgres answers a query on `pool`: give it a pool of its own (one connection), so a
    /// saturated request pool does not take the instance out of rotation.
    #[must_use]
    pub fn postgres(pool: PgPool) -> Self {
        Self::new("postgres", move || {
            let pool = pool.clone();
            async move {
                sqlx::query("SELECT 1")
                    .execute(&pool)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
    }

    /// Redis answers `PING`.
    #[must_use]
    pub fn redis(client: redis::Client) -> Self {
        Self::new("redis", move || {
            let client = client.clone();
            async move {
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| e.to_string())?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
    }
}

/// What `/metrics` needs.
#[derive(Debug, Clone)]
pub struct OpsState {
    /// The database (outbox lag).
    pub pool: PgPool,
    /// The product cache (hit rates).
    pub catalog: Catalog,
    /// The payment worker (its gateway breaker, payments by status), in a process that runs
    /// the payment service.
    pub payments: Option<PaymentWorker>,
}

/// What the probes need.
#[derive(Debug, Clone)]
pub struct ProbeState {
    /// What `/ready` checks.
    pub checks: Vec<ReadinessCheck>,
    /// Cancelled when the instance starts shutting down: `/ready` answers 503 from then on,
    /// while the server still serves, so load balancers stop sending it requests.
    pub draining: CancellationToken,
}

/// `/metrics` (no token needed; behind the load shedder like the API).
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `/health` and `/ready` (no token needed): mount them outside the load shedder and the
/// request timeout (`http::layered` does).
pub fn probes(state: ProbeState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(state)
}

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: HealthStatus::Ok,
        checks: std::collections::BTreeMap::new(),
    })
}

/// Readiness: Postgres, and Redis and the broker when configured, answer (503 otherwise),
/// and the instance is not shutting down (503 `shutdown: draining`). A failing check says
/// only `unavailable`; its cause goes to the log.
#[utoipa::path(get, path = "/ready", tag = "ops", responses(
    (status = 200, body = Health),
    (status = 503, description = "a dependency is down (`unavailable`), or the instance is shutting down (`shutdown: draining`)", body = Health),
))]
pub async fn ready(State(state): State<ProbeState>) -> (StatusCode, Json<Health>) {
    let mut checks = BTreeMap::new();
    if state.draining.is_cancelled() {
        checks.insert("shutdown".to_owned(), "draining".to_owned());
        return unavailable(checks);
    }
    let mut all_ok = true;
    for check in &state.checks {
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, (check.probe)())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")));
        let verdict = match outcome {
            Ok(()) => "ok",
            Err(cause) => {
                all_ok = false;
                tracing::warn!(check = check.name, %cause, "readiness check failed");
                "unavailable"
            }
        };
        checks.insert(check.name.to_owned(), verdict.to_owned());
    }
    if all_ok {
        (
            StatusCode::OK,
            Json(Health {
                status: HealthStatus::Ok,
                checks,
            }),
        )
    } else {
        unavailable(checks)
    }
}

/// How long a readiness check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn unavailable(checks: BTreeMap<String, String>) -> (StatusCode, Json<Health>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Health {
            status: HealthStatus::Unavailable,
            checks,
        }),
    )
}

/// Prometheus text: request latency by route, orders by outcome, saga outcomes, errors by
/// code, outbox lag, the payment breaker, cache hit rates.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    match commerce_outbox::outbox_stats(&state.pool).await {
        Ok(stats) => {
            metrics::gauge!("outbox_pending_events").set(stats.pending as f64);
            metrics::gauge!("outbox_dead_letters").set(stats.dead_letters as f64);
            metrics::gauge!("outbox_consumer_dead_letters").set(stats.consumer_dead_letters as f64);
            metrics::gauge!("outbox_oldest_pending_seconds").set(
                stats
                    .oldest_pending_age
                    .map_or(0.0, |age| age.as_secs_f64()),
            );
        }
        Err(error) => tracing::warn!(%error, "outbox stats for /metrics failed"),
    }
    if let Some(payments) = &state.payments {
        let breaker = payments.breaker_state();
        for candidate in BreakerState::ALL {
            let on = if candidate == breaker { 1.0 } else { 0.0 };
            metrics::gauge!("payment_breaker_state", "state" => candidate.as_str()).set(on);
        }
        match payments.payments_by_status().await {
            Ok(counts) => {
                for (status, count) in counts {
                    metrics::gauge!("payments", "status" => status.as_str()).set(count as f64);
                }
            }
            Err(error) => tracing::warn!(%error, "payment counts for /metrics failed"),
        }
    }
    let cache = state.catalog.metrics();
    for (level, counters) in [("l1", cache.l1), ("l2", cache.l2)] {
        let reads = counters.hits + counters.misses;
        let rate = if reads == 0 {
            0.0
        } else {
            counters.hits as f64 / reads as f64
        };
        metrics::gauge!("cache_hit_ratio", "cache" => cache.name.clone(), "level" => level)
            .set(rate);
        metrics::gauge!("cache_hits", "cache" => cache.name.clone(), "level" => level)
            .set(counters.hits as f64);
        metrics::gauge!("cache_misses", "cache" => cache.name.clone(), "level" => level)
            .set(counters.misses as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::prometheus().render(),
    )
}
