//! A typed, resilient client for the external payment gateway (PG).
//!
//! [`GatewayClient`] charges and refunds through a [`GatewayTransport`] ([`HttpTransport`] in
//! production, a scripted fake in the unit tests). Every call goes through one stack of tower
//! layers, always in this order (outermost first):
//!
//! 1. **overall timeout** ([`GatewayClientConfig::overall_timeout`]): a deadline for the whole
//!    call, retries included;
//! 2. **circuit breaker** ([`GatewayClientConfig::breaker_failure_threshold`],
//!    [`breaker_open_duration`](GatewayClientConfig::breaker_open_duration)): after that many
//!    consecutive unavailable calls it opens and calls fail fast with
//!    [`GatewayError::BreakerOpen`], without touching the network; after the open duration the
//!    next call is let through alone as a probe (half-open): success closes the breaker, failure
//!    opens it again;
//! 3. **retry** ([`max_attempts`](GatewayClientConfig::max_attempts), exponential backoff with
//!    jitter): only when the PG was unavailable (5xx, connection error, attempt timeout); never on
//!    a decline, a 4xx or an unreadable answer;
//! 4. **per-attempt timeout** ([`attempt_timeout`](GatewayClientConfig::attempt_timeout)).
//!
//! The breaker sits outside the retry, so it counts calls, not attempts: one charge that needed
//! three attempts is one failure or one success. A retried charge is never taken twice: every
//! attempt carries the request's idempotency key and the PG answers repeats with its first
//! answer.
//!
//! All timing (timeouts, backoff, the breaker's open duration) runs on tokio's clock, so the
//! tests drive it with a paused clock.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use reference_app::payment::client::{GatewayClient, GatewayClientConfig, GatewayError};
//! use reference_app::payment::{ChargeOutcome, ChargeRequest};
//!
//! let client = GatewayClient::http("http://127.0.0.1:8090", GatewayClientConfig::default())?;
//! let request = ChargeRequest {
//!     order_id: uuid::Uuid::new_v4(),
//!     amount: 4_990,
//!     currency: "EUR".into(),
//!     idempotency_key: "charge-order-42".into(),
//! };
//! match client.charge(&request).await {
//!     Ok(ChargeOutcome::Approved { charge_id }) => println!("paid: {charge_id}"),
//!     Ok(ChargeOutcome::Declined { reason }) => println!("declined: {reason}"),
//!     Err(GatewayError::BreakerOpen { .. }) => println!("PG down: park the charge"),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok(())
//! # }
//! ```

mod http;
#[cfg(test)]
mod scripted;
mod stack;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::time::Duration;

pub use self::http::HttpTransport;
use self::stack::{BreakerMonitor, GatewayCall, GatewayReply, Stack};
use super::{ChargeId, ChargeOutcome, ChargeRequest, RefundReceipt, RefundRequest};

/// How one attempt at the PG went wrong, as a [`GatewayTransport`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The PG could not serve the request now (5xx, connection refused or dropped): worth a
    /// retry with the same idempotency key.
    #[error(transparent)]
    Unavailable(#[from] UnavailableCause),
    /// The PG refused the request itself (a 4xx other than a decline): a bug on our side, not
    /// retried.
    #[error("payment gateway rejected the request with status {status}: {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The PG's explanation, from its error body.
        message: String,
    },
    /// The PG answered something this client cannot read; not retried.
    #[error("unreadable answer from the payment gateway: {0}")]
    InvalidResponse(String),
}

/// Why the PG was unavailable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnavailableCause {
    /// The PG answered with a 5xx status.
    #[error("payment gateway answered {status}")]
    ServerError {
        /// The HTTP status.
        status: u16,
    },
    /// The PG could not be reached, or the connection broke before a full answer.
    #[error("could not reach the payment gateway: {0}")]
    Connection(String),
    /// One attempt got no answer within the per-attempt timeout.
    #[error("no answer within the per-attempt timeout of {after:?}")]
    AttemptTimedOut {
        /// The per-attempt timeout.
        after: Duration,
    },
    /// The overall timeout ran out before an answer.
    #[error("no answer within the overall timeout of {after:?}")]
    DeadlineExceeded {
        /// The overall timeout.
        after: Duration,
    },
}

/// What a payment service can do when a call to the PG fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The PG was unavailable for every attempt, or the overall timeout ran out. Whether the
    /// money was taken is unknown: try again later with the same idempotency key.
    #[error("payment gateway unavailable after {attempts} attempt(s): {cause}")]
    Unavailable {
        /// Attempts made (0 when the deadline passed before the first one).
        attempts: u32,
        /// What went wrong on the last attempt.
        cause: UnavailableCause,
    },
    /// The circuit breaker is open (or its one half-open probe is under way): no call was
    /// made. The fallback: park the charge and retry it later with the same idempotency key.
    #[error("payment gateway circuit breaker is open; no call was made")]
    BreakerOpen {
        /// When the breaker lets a probe through, if known (not while a probe is under way).
        retry_after: Option<Duration>,
    },
    /// The PG refused the request itself (a 4xx other than a decline): a bug, not retried.
    #[error("payment gateway rejected the request with status {status}: {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The PG's explanation.
        message: String,
    },
    /// The PG answered something this client cannot read; not retried.
    #[error("unreadable answer from the payment gateway: {0}")]
    InvalidResponse(String),
}

/// The circuit breaker's state, for metrics and health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast with [`GatewayError::BreakerOpen`].
    Open,
    /// One probe call is under way; others fail fast until it ends.
    HalfOpen,
}

/// A [`GatewayClientConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A field is out of its range.
    #[error("invalid payment gateway client setting {field}: {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// Its allowed range.
        reason: &'static str,
    },
    /// The base URL does not parse.
    #[error("invalid payment gateway URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// The resilience settings of a [`GatewayClient`]; [`Default`] gives the values documented on
/// each field.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayClientConfig {
    /// Deadline of a whole call, retries and backoff included (default 10 s).
    pub overall_timeout: Duration,
    /// Deadline of one attempt (default 2 s).
    pub attempt_timeout: Duration,
    /// Attempts per call, the first included (default 3; 1 disables retries).
    pub max_attempts: u32,
    /// Backoff before the first retry (default 100 ms).
    pub backoff_initial: Duration,
    /// Growth of the backoff per retry (default 2.0).
    pub backoff_multiplier: f64,
    /// Upper bound of the backoff before jitter (default 1 s).
    pub backoff_max: Duration,
    /// Jitter: each backoff is drawn in `[d·(1-j), d·(1+j)]` (default 0.5; 0 disables it).
    /// Spreads the retries of many clients after a PG hiccup.
    pub backoff_jitter: f64,
    /// Consecutive unavailable calls that open the breaker (default 5).
    pub breaker_failure_threshold: u32,
    /// How long the breaker stays open before it lets a probe through (default 30 s).
    pub breaker_open_duration: Duration,
}

impl Default for GatewayClientConfig {
    fn default() -> Self {
        Self {
            overall_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            max_attempts: 3,
            backoff_initial: Duration::from_millis(100),
            backoff_multiplier: 2.0,
            backoff_max: Duration::from_secs(1),
            backoff_jitter: 0.5,
            breaker_failure_threshold: 5,
            breaker_open_duration: Duration::from_secs(30),
        }
    }
}

impl GatewayClientConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        // A bound keeps every `Instant + Duration` of the stack far from overflowing.
        const A_DAY: Duration = Duration::from_secs(24 * 60 * 60);
        let invalid = |field, reason| Err(ConfigError::Invalid { field, reason });
        for (field, value) in [
            ("overall_timeout", self.overall_timeout),
            ("attempt_timeout", self.attempt_timeout),
            ("breaker_open_duration", self.breaker_open_duration),
        ] {
            if value.is_zero() || value > A_DAY {
                return invalid(field, "must be above zero and at most a day");
            }
        }
        if self.backoff_max > A_DAY {
            return invalid("backoff_max", "must be at most a day");
        }
        if self.backoff_max < self.backoff_initial {
            return invalid("backoff_max", "must be at least backoff_initial");
        }
        if !(self.backoff_multiplier.is_finite() && self.backoff_multiplier >= 1.0) {
            return invalid("backoff_multiplier", "must be finite and at least 1.0");
        }
        if !(0.0..=1.0).contains(&self.backoff_jitter) {
            return invalid("backoff_jitter", "must be within 0.0..=1.0");
        }
        if self.max_attempts == 0 {
            return invalid("max_attempts", "must be at least 1");
        }
        if self.breaker_failure_threshold == 0 {
            return invalid("breaker_failure_threshold", "must be at least 1");
        }
        Ok(())
    }
}

/// How the client reaches the PG: one attempt per call, no retries or timeouts of its own
/// (the client's stack adds those). Dropping the returned future must abandon the attempt.
pub trait GatewayTransport: Send + Sync + 'static {
    /// Sends one charge attempt.
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeOutcome, TransportError>> + Send;

    /// Sends one refund attempt.
    fn refund(
        &self,
        request: &RefundRequest,
    ) -> impl Future<Output = Result<RefundReceipt, TransportError>> + Send;
}

/// The payment gateway client: charges and refunds through the resilience stack described in
/// the [module docs](self). Cheap to share behind an `Arc`; calls may run concurrently.
pub struct GatewayClient<T> {
    stack: Stack<T>,
    breaker: BreakerMonitor,
    config: GatewayClientConfig,
}

impl GatewayClient<HttpTransport> {
    /// A client of the PG's HTTP API at `base_url` (e.g. `http://127.0.0.1:8090`).
    ///
    /// # Errors
    /// [`ConfigError`] when the URL or a setting is invalid.
    pub fn http(base_url: &str, config: GatewayClientConfig) -> Result<Self, ConfigError> {
        Self::new(HttpTransport::new(base_url)?, config)
    }
}

impl<T: GatewayTransport> GatewayClient<T> {
    /// A client over `transport` with the given settings.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when a setting is out of range.
    pub fn new(transport: T, config: GatewayClientConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let (stack, breaker) = stack::build(transport, &config)?;
        Ok(Self {
            stack,
            breaker,
            config,
        })
    }

    /// Takes `request.amount` for `request.order_id`, once per idempotency key.
    ///
    /// # Errors
    /// [`GatewayError`]; a decline is an `Ok`.
    pub async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        match self.call(GatewayCall::Charge(request.clone())).await? {
            GatewayReply::Charge(outcome) => Ok(outcome),
            GatewayReply::Refund(_) => Err(mismatched_reply("charge")),
        }
    }

    /// Refunds the charge `charge_id` in full, once per idempotency key.
    ///
    /// # Errors
    /// [`GatewayError`]; an unknown or already refunded charge is a
    /// [`GatewayError::Rejected`].
    pub async fn refund(
        &self,
        charge_id: &ChargeId,
        idempotency_key: &str,
    ) -> Result<RefundReceipt, GatewayError> {
        let request = RefundRequest {
            charge_id: charge_id.clone(),
            idempotency_key: idempotency_key.to_owned(),
        };
        match self.call(GatewayCall::Refund(request)).await? {
            GatewayReply::Refund(receipt) => Ok(receipt),
            GatewayReply::Charge(_) => Err(mismatched_reply("refund")),
        }
    }

    /// The circuit breaker's state now.
    #[must_use]
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The settings this client runs with.
    #[must_use]
    pub fn config(&self) -> &GatewayClientConfig {
        &self.config
    }

    async fn call(&self, call: GatewayCall) -> Result<GatewayReply, GatewayError> {
        use tower::ServiceExt as _;
        // A clone per call: the layers keep per-call readiness state, while the breaker's
        // state is shared by all clones.
        self.stack.clone().oneshot(call).await
    }
}

fn mismatched_reply(operation: &str) -> GatewayError {
    GatewayError::InvalidResponse(format!(
        "the transport answered a {operation} with another operation's reply"
    ))
}

impl<T> fmt::Debug for GatewayClient<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayClient")
            .field("breaker", &self.breaker.state())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
