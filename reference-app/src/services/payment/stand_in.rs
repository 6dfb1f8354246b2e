//! A stand-in for the external payment gateway (PG), for local runs and tests: an axum
//! [`Router`] with the PG's API, its state in memory, and knobs to make it slow or failing.
//!
//! API (errors are JSON `{code, message}`):
//! - `POST /v1/charges`, JSON `{order_id, amount, currency}`, header `Idempotency-Key`:
//!   201 `{charge_id, status: "approved"}`, or 402 `{status: "declined", reason}` when the
//!   amount is above [`StandInConfig::decline_above`];
//! - `POST /v1/charges/{charge_id}/refunds`, header `Idempotency-Key`: 201
//!   `{refund_id, charge_id, status: "refunded"}`; 404 for an unknown charge, 409 for one
//!   already refunded under another key;
//! - `GET /health`: 200 `{status: "ok"}` (never failed on purpose).
//!
//! Idempotency: a repeated key gets the first answer again, byte for byte, and charges or
//! refunds nothing more, even when the repeats arrive concurrently; the same key with another
//! body is a 422. Charges and refunds have separate key spaces. Missing key or bad JSON: 400.
//!
//! Failure injection happens before anything else: a request picked to fail (the next
//! [`StandInControl::fail_next`] ones, then each with probability `failure_rate`) gets a 503 and
//! changes nothing. The others wait `latency`, then are served.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use reference_app::services::payment::stand_in::{self, StandInConfig};
//!
//! let (router, control) = stand_in::router(&StandInConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! control.fail_next(2); // the next two requests answer 503
//! stand_in::serve(listener, router, std::future::pending()).await
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use uuid::Uuid;

/// Settings of the stand-in PG, read by [`StandInConfig::from_env`]; [`Default`] gives the
/// documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct StandInConfig {
    /// Where the `stand-in-gateway` binary listens: `STAND_IN_GATEWAY_HOST` (default `127.0.0.1`) and
    /// `STAND_IN_GATEWAY_PORT` (default 8090). [`router`] ignores it.
    pub addr: SocketAddr,
    /// `STAND_IN_GATEWAY_LATENCY_MS` (default 0): added to every request that is not failed on purpose.
    pub latency: Duration,
    /// `STAND_IN_GATEWAY_FAILURE_RATE` (default 0.0, within 0.0..=1.0): the fraction of charge and refund
    /// requests answered 503 before anything is done.
    pub failure_rate: f64,
    /// `STAND_IN_GATEWAY_DECLINE_ABOVE` (default 1000000): charges above this many minor units are
    /// declined.
    pub decline_above: i64,
    /// `STAND_IN_GATEWAY_SEED` (default unset: from entropy): seed of the failure draws, for runs that
    /// must repeat.
    pub seed: Option<u64>,
}

impl Default for StandInConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8090),
            latency: Duration::ZERO,
            failure_rate: 0.0,
            decline_above: 1_000_000,
            seed: None,
        }
    }
}

/// A setting of the stand-in PG that does not parse or is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stand-in gateway setting {setting}={value:?}: {reason}")]
pub struct StandInConfigError {
    /// The environment variable (or, at run time, the knob) concerned.
    pub setting: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl StandInConfig {
    /// Reads the `STAND_IN_GATEWAY_*` environment variables (see the fields), defaults for those unset
    /// or empty.
    ///
    /// # Errors
    /// [`StandInConfigError`] naming the first variable that does not parse or is out of range.
    pub fn from_env() -> Result<Self, StandInConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), with `lookup` standing in for the environment.
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, StandInConfigError> {
        fn read<T>(
            lookup: &impl Fn(&str) -> Option<String>,
            setting: &'static str,
        ) -> Result<Option<T>, StandInConfigError>
        where
            T: std::str::FromStr,
            T::Err: std::fmt::Display,
        {
            match lookup(setting).filter(|value| !value.trim().is_empty()) {
                None => Ok(None),
                Some(value) => {
                    value
                        .trim()
                        .parse()
                        .map(Some)
                        .map_err(|e: T::Err| StandInConfigError {
                            setting,
                            reason: e.to_string(),
                            value,
                        })
                }
            }
        }
        let defaults = Self::default();
        let host = read::<IpAddr>(&lookup, "STAND_IN_GATEWAY_HOST")?.unwrap_or(defaults.addr.ip());
        let port = read::<u16>(&lookup, "STAND_IN_GATEWAY_PORT")?.unwrap_or(defaults.addr.port());
        let failure_rate = read::<f64>(&lookup, "STAND_IN_GATEWAY_FAILURE_RATE")?.unwrap_or(0.0);
        check_failure_rate("STAND_IN_GATEWAY_FAILURE_RATE", failure_rate)?;
        Ok(Self {
            addr: SocketAddr::new(host, port),
            latency: read::<u64>(&lookup, "STAND_IN_GATEWAY_LATENCY_MS")?
                .map_or(defaults.latency, Duration::from_millis),
            failure_rate,
            decline_above: read(&lookup, "STAND_IN_GATEWAY_DECLINE_ABOVE")?
                .unwrap_or(defaults.decline_above),
            seed: read(&lookup, "STAND_IN_GATEWAY_SEED")?,
        })
    }
}

fn check_failure_rate(setting: &'static str, rate: f64) -> Result<(), StandInConfigError> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(StandInConfigError {
            setting,
            value: rate.to_string(),
            reason: "must be within 0.0..=1.0".into(),
        })
    }
}

/// The stand-in PG's API as a router, and the handle that steers and observes it.
pub fn router(config: &StandInConfig) -> (Router, StandInControl) {
    let pg = Arc::new(Pg {
        decline_above: config.decline_above,
        knobs: Mutex::new(Knobs {
            latency: config.latency,
            failure_rate: config.failure_rate,
            fail_next: 0,
            rng: config
                .seed
                .map_or_else(StdRng::from_entropy, StdRng::seed_from_u64),
        }),
        ledger: Mutex::default(),
        stats: Counters::default(),
    });
    let router = Router::new()
        .route("/health", get(health))
        .route("/v1/charges", post(create_charge))
        .route("/v1/charges/{charge_id}/refunds", post(refund_charge))
        .with_state(Arc::clone(&pg));
    (router, StandInControl(pg))
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the requests under way
/// finish.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener.tap_io(crate::http::no_delay), router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Steers a running stand-in PG (latency, failures) and reads its counters. Clones share it.
#[derive(Debug, Clone)]
pub struct StandInControl(Arc<Pg>);

impl StandInControl {
    /// Sets the latency added to each request served from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.0.knobs().latency = latency;
    }

    /// Sets the fraction of requests answered 503 from now on.
    ///
    /// # Errors
    /// When `rate` is not within `0.0..=1.0`; the rate is then unchanged.
    pub fn set_failure_rate(&self, rate: f64) -> Result<(), StandInConfigError> {
        check_failure_rate("failure_rate", rate)?;
        self.0.knobs().failure_rate = rate;
        Ok(())
    }

    /// Answers the next `requests` charge or refund requests with 503, whatever the rate.
    pub fn fail_next(&self, requests: u64) {
        self.0.knobs().fail_next = requests;
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> StandInStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        let stats = &self.0.stats;
        StandInStats {
            requests: load(&stats.requests),
            injected_failures: load(&stats.injected_failures),
            charges_taken: load(&stats.charges_taken),
            declines: load(&stats.declines),
            refunds: load(&stats.refunds),
        }
    }
}

/// What the stand-in PG has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StandInStats {
    /// Charge and refund requests received, failed ones included.
    pub requests: u64,
    /// Requests answered 503 on purpose.
    pub injected_failures: u64,
    /// Charges approved (money taken), replays not counted.
    pub charges_taken: u64,
    /// Charges declined, replays not counted.
    pub declines: u64,
    /// Refunds made, replays not counted.
    pub refunds: u64,
}

#[derive(Debug)]
struct Pg {
    decline_above: i64,
    knobs: Mutex<Knobs>,
    ledger: Mutex<Ledger>,
    stats: Counters,
}

#[derive(Debug)]
struct Knobs {
    latency: Duration,
    failure_rate: f64,
    fail_next: u64,
    rng: StdRng,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    injected_failures: AtomicU64,
    charges_taken: AtomicU64,
    declines: AtomicU64,
    refunds: AtomicU64,
}

/// Everything the PG remembers. One lock for all of it: a request decides and records its
/// answer under the lock, so concurrent repeats of a key see the first one's answer.
#[derive(Debug, Default)]
struct Ledger {
    /// Idempotency key -> the charge it asked for and the answer given.
    charge_keys: HashMap<String, (ChargeBody, Reply)>,
    /// Idempotency key -> the charge it refunded and the answer given.
    refund_keys: HashMap<String, (String, Reply)>,
    /// Approved charge id -> its refund id, once refunded.
    charges: HashMap<String, Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ChargeBody {
    order_id: Uuid,
    amount: i64,
    currency: String,
}

/// An answer as first given, to replay for a repeated key.
#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    body: Value,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// Every error answer, with its status and stable `code`, in one place.
#[derive(Debug, thiserror::Error)]
enum PgApiError {
    #[error("injected failure")]
    Unavailable,
    #[error("the Idempotency-Key header is missing or empty")]
    MissingIdempotencyKey,
    #[error("the Idempotency-Key header must be visible ASCII of at most 255 characters")]
    InvalidIdempotencyKey,
    #[error("the body is not the expected JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("this Idempotency-Key was used with another request")]
    IdempotencyKeyReused,
    #[error("no charge {0}")]
    ChargeNotFound(String),
    #[error("charge {0} is already refunded")]
    AlreadyRefunded(String),
}

impl PgApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::MissingIdempotencyKey => (StatusCode::BAD_REQUEST, "missing_idempotency_key"),
            Self::InvalidIdempotencyKey => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
            Self::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            Self::ChargeNotFound(_) => (StatusCode::NOT_FOUND, "charge_not_found"),
            Self::AlreadyRefunded(_) => (StatusCode::CONFLICT, "charge_already_refunded"),
        }
    }
}

impl IntoResponse for PgApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        (
            status,
            Json(json!({ "code": code, "message": self.to_string() })),
        )
            .into_response()
    }
}

impl Pg {
    fn knobs(&self) -> MutexGuard<'_, Knobs> {
        self.knobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the request, fails it if picked to, else waits the latency.
    async fn admit(&self) -> Result<(), PgApiError> {
        self.stats.requests.fetch_add(1, Ordering::SeqCst);
        let latency = {
            let mut knobs = self.knobs();
            let fail = if knobs.fail_next > 0 {
                knobs.fail_next -= 1;
                true
            } else {
                // Not gen_bool: it panics on a rate outside 0..=1, which a caller of `router`
                // could still pass; here such a rate just fails always or never.
                let rate = knobs.failure_rate;
                knobs.rng.gen::<f64>() < rate
            };
            if fail {
                self.stats.injected_failures.fetch_add(1, Ordering::SeqCst);
                return Err(PgApiError::Unavailable);
            }
            knobs.latency
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        Ok(())
    }

    fn charge(&self, key: String, charge: ChargeBody) -> Result<Reply, PgApiError> {
        let mut ledger = self.ledger();
        if let Some((first, reply)) = ledger.charge_keys.get(&key) {
            return if *first == charge {
                Ok(reply.clone())
            } else {
                Err(PgApiError::IdempotencyKeyReused)
            };
        }
        let reply = if charge.amount > self.decline_above {
            self.stats.declines.fetch_add(1, Ordering::SeqCst);
            Reply {
                status: StatusCode::PAYMENT_REQUIRED,
                body: json!({ "status": "declined", "reason": "amount_above_limit" }),
            }
        } else {
            let charge_id = format!("ch_{}", Uuid::new_v4().simple());
            ledger.charges.insert(charge_id.clone(), None);
            self.stats.charges_taken.fetch_add(1, Ordering::SeqCst);
            Reply {
                status: StatusCode::CREATED,
                body: json!({ "charge_id": charge_id, "status": "approved" }),
            }
        };
        ledger.charge_keys.insert(key, (charge, reply.clone()));
        Ok(reply)
    }

    fn refund(&self, key: String, charge_id: String) -> Result<Reply, PgApiError> {
        let mut ledger = self.ledger();
        if let Some((first, reply)) = ledger.refund_keys.get(&key) {
            return if *first == charge_id {
                Ok(reply.clone())
            } else {
                Err(PgApiError::IdempotencyKeyReused)
            };
        }
        let refund = match ledger.charges.get_mut(&charge_id) {
            None => return Err(PgApiError::ChargeNotFound(charge_id)),
            Some(Some(_)) => return Err(PgApiError::AlreadyRefunded(charge_id)),
            Some(refund) => refund,
        };
        let refund_id = format!("re_{}", Uuid::new_v4().simple());
        *refund = Some(refund_id.clone());
        self.stats.refunds.fetch_add(1, Ordering::SeqCst);
        let reply = Reply {
            status: StatusCode::CREATED,
            body: json!({ "refund_id": refund_id, "charge_id": charge_id, "status": "refunded" }),
        };
        ledger.refund_keys.insert(key, (charge_id, reply.clone()));
        Ok(reply)
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, PgApiError> {
    let value = headers
        .get("idempotency-key")
        .ok_or(PgApiError::MissingIdempotencyKey)?;
    let key = value
        .to_str()
        .map_err(|_| PgApiError::InvalidIdempotencyKey)?
        .trim();
    match key.len() {
        0 => Err(PgApiError::MissingIdempotencyKey),
        1..=255 => Ok(key.to_owned()),
        _ => Err(PgApiError::InvalidIdempotencyKey),
    }
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn create_charge(
    State(pg): State<Arc<Pg>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Reply, PgApiError> {
    pg.admit().await?;
    let key = idempotency_key(&headers)?;
    // Parsed by hand rather than with the `Json` extractor, so bad JSON gets this API's error
    // body instead of axum's plain-text rejection.
    let charge: ChargeBody =
        serde_json::from_slice(&body).map_err(|e| PgApiError::InvalidJson(e.to_string()))?;
    if charge.amount <= 0 {
        return Err(PgApiError::InvalidRequest("amount must be positive"));
    }
    if !(charge.currency.len() == 3 && charge.currency.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err(PgApiError::InvalidRequest(
            "currency must be an ISO 4217 code like \"EUR\"",
        ));
    }
    pg.charge(key, charge)
}

async fn refund_charge(
    State(pg): State<Arc<Pg>>,
    Path(charge_id): Path<String>,
    headers: HeaderMap,
) -> Result<Reply, PgApiError> {
    pg.admit().await?;
    let key = idempotency_key(&headers)?;
    pg.refund(key, charge_id)
}

#[cfg(test)]
mod tests;
