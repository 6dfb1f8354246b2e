//! [`GatewayClient`]: the resilience stack over a [`GatewayTransport`], and its settings.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use super::http::HttpTransport;
use super::stack::{self, BreakerMonitor, GatewayCall, GatewayReply, Stack};
use super::{
    BreakerState, ChargeOutcome, ChargeRequest, GatewayError, RefundReceipt, RefundRequest,
    TransportError, UnavailableCause,
};

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
/// the [module docs](super). Cheap to share behind an `Arc`; calls may run concurrently.
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

    /// Refunds `request.charge_id` in full, once per idempotency key.
    ///
    /// # Errors
    /// [`GatewayError`]; an unknown or already refunded charge is a
    /// [`GatewayError::Refused`].
    pub async fn refund(&self, request: &RefundRequest) -> Result<RefundReceipt, GatewayError> {
        match self.call(GatewayCall::Refund(request.clone())).await? {
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
    GatewayError::Unavailable {
        attempts: 1,
        cause: UnavailableCause::UnreadableAnswer {
            status: 0,
            detail: format!("the transport answered a {operation} with another operation's reply"),
        },
        may_have_charged: true,
    }
}

impl<T> fmt::Debug for GatewayClient<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayClient")
            .field("breaker", &self.breaker.state())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
