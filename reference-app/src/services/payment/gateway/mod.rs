//! The external payment gateway (PG): what the payment service asks of it, what it answers,
//! and the typed, resilient client that asks it. One vocabulary for the whole payment
//! service: the worker speaks these types too (through [`Gateway`]).
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
//!    jitter): only when the outcome is unknown or the PG was unavailable (see *Outcomes*
//!    below); never on a decline or a permanent refusal, and not within the call when the PG
//!    asked for a `Retry-After` (the caller parks the charge for that long instead);
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
//! # Outcomes (decision 0011)
//!
//! Only two answers end a charge: an approval, and an explicit decline (402). Only a
//! documented permanent refusal ([`PERMANENT_REFUSALS`]: the request itself is wrong,
//! nothing was done) ends it as failed. Everything else is an **unknown outcome**, never a
//! refusal: 408, 409 (the same key's first request still running), 425 and 429, any 5xx, a
//! 2xx body that cannot be read, a status this client does not know, a connection that broke
//! and a timeout. The money may or may not have been taken, so the charge is asked again with
//! the same idempotency key, now or later ([`GatewayError::Unavailable`]), and
//! [`GatewayError::may_have_charged`] tells the payment service whether a cancelled order's
//! payment can be voided at once or must be asked again first.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use reference_app::services::payment::gateway::{
//!     ChargeOutcome, ChargeRequest, GatewayClient, GatewayClientConfig, GatewayError,
//! };
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
//!     Err(GatewayError::Refused { status, .. }) => println!("refused for good: {status}"),
//!     Err(unknown) => println!("ask again later, same key: {unknown}"),
//! }
//! # Ok(())
//! # }
//! ```

mod client;
mod http;
#[cfg(test)]
mod scripted;
mod stack;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use self::client::{ConfigError, GatewayClient, GatewayClientConfig, GatewayTransport};
pub use self::http::{HttpTransport, PERMANENT_REFUSALS};

/// A request to take money for an order.
///
/// Every attempt at the same charge, including retries and repeats after a crash, must carry
/// the same `idempotency_key`: the PG takes the money once per key and answers repeats with the
/// first answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// The order being paid for.
    pub order_id: Uuid,
    /// Amount in minor units (cents for EUR/USD).
    pub amount: i64,
    /// ISO 4217 currency code, e.g. `"EUR"`.
    pub currency: String,
    /// Identifies this charge across retries (sent as the `Idempotency-Key` header).
    pub idempotency_key: String,
}

/// The PG's answer to a charge: a decline is an answer, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// The money was taken.
    Approved {
        /// The PG's identifier of the charge, needed to refund it.
        charge_id: ChargeId,
    },
    /// The PG refused the payment (card declined, limit exceeded, ...).
    Declined {
        /// The PG's reason, for the order's history.
        reason: String,
    },
}

/// The PG's identifier of an approved charge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChargeId(pub String);

impl fmt::Display for ChargeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request to give back the money of an approved charge (e.g. the order was cancelled while
/// it was being paid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// The charge to refund, in full.
    pub charge_id: ChargeId,
    /// Identifies this refund across retries (sent as the `Idempotency-Key` header).
    pub idempotency_key: String,
}

/// The PG's confirmation of a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundReceipt {
    /// The PG's identifier of the refund.
    pub refund_id: String,
    /// The charge that was refunded.
    pub charge_id: ChargeId,
}

/// How one attempt at the PG went wrong, as a [`GatewayTransport`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No answer that settles the request: worth asking again with the same idempotency key.
    #[error(transparent)]
    Unavailable(#[from] UnavailableCause),
    /// A documented permanent refusal ([`PERMANENT_REFUSALS`]): the request itself was
    /// refused and nothing was done; asking again cannot help.
    #[error("payment gateway refused the request with status {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The PG's explanation, raw (its error body, NULs removed, at most
        /// [`RAW_TEXT_MAX`] characters): for the saga log, never for a customer.
        message: String,
    },
}

/// The longest raw text of the PG (an error body, a decline reason) kept for the saga log.
pub const RAW_TEXT_MAX: usize = 2_000;

/// Why an attempt at the PG settled nothing: the outcome is unknown (ask again, same key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnavailableCause {
    /// The PG answered with a 5xx status.
    #[error("payment gateway answered {status}")]
    ServerError {
        /// The HTTP status.
        status: u16,
        /// Its `Retry-After`, if any (whole seconds).
        retry_after: Option<Duration>,
    },
    /// The PG asked to slow down or come back later (408, 425, 429): nothing was done.
    #[error("payment gateway answered {status} (come back later)")]
    Throttled {
        /// The HTTP status.
        status: u16,
        /// Its `Retry-After`, if any (whole seconds).
        retry_after: Option<Duration>,
    },
    /// 409: the PG is still working on a request with the same idempotency key (the first
    /// attempt of this charge, abandoned by its timeout but not by the PG).
    #[error("payment gateway is still working on this idempotency key (409)")]
    InProgress,
    /// An answer this client cannot read (a 2xx body that does not parse, a redirect, a
    /// status it does not know): the request may have been done.
    #[error("unreadable answer from the payment gateway (status {status}): {detail}")]
    UnreadableAnswer {
        /// The HTTP status.
        status: u16,
        /// What could not be read.
        detail: String,
    },
    /// The PG could not be reached, or the connection broke before a full answer.
    #[error("could not reach the payment gateway: {detail}")]
    Connection {
        /// The error and its causes.
        detail: String,
        /// Whether the request may have reached the PG (`false`: the connection itself
        /// failed, nothing was sent).
        sent: bool,
    },
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

impl UnavailableCause {
    /// Whether the PG may have done the request (taken the money) although its answer did not
    /// say so. `false` only when it certainly did not: a 503 or a throttling answer (the
    /// request was turned away before any work), or a connection that never opened.
    #[must_use]
    pub fn may_have_charged(&self) -> bool {
        match self {
            Self::ServerError { status, .. } => *status != 503,
            Self::Throttled { .. } => false,
            Self::Connection { sent, .. } => *sent,
            Self::InProgress
            | Self::UnreadableAnswer { .. }
            | Self::AttemptTimedOut { .. }
            | Self::DeadlineExceeded { .. } => true,
        }
    }

    /// How long the PG asked us to wait (`Retry-After`), if it did.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::ServerError { retry_after, .. } | Self::Throttled { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

/// What a payment service can do when a call to the PG settles nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No attempt settled the request (see [`UnavailableCause`]), or the overall timeout ran
    /// out. Whether the money was taken is unknown unless `may_have_charged` is `false`: ask
    /// again later with the same idempotency key.
    #[error("payment gateway gave no answer after {attempts} attempt(s): {cause}")]
    Unavailable {
        /// Attempts made (0 when the deadline passed before the first one).
        attempts: u32,
        /// What went wrong on the last attempt.
        cause: UnavailableCause,
        /// Whether any attempt of the call may have been done by the PG.
        may_have_charged: bool,
    },
    /// The circuit breaker is open (or its one half-open probe is under way): no call was
    /// made. The fallback: park the charge and retry it later with the same idempotency key.
    #[error("payment gateway circuit breaker is open; no call was made")]
    BreakerOpen {
        /// When the breaker lets a probe through, if known (not while a probe is under way).
        retry_after: Option<Duration>,
    },
    /// A documented permanent refusal: nothing was done, asking again cannot help.
    #[error("payment gateway refused the request with status {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The PG's explanation, raw (see [`TransportError::Refused`]).
        message: String,
    },
}

impl GatewayError {
    /// Whether the PG may have done the request although the call failed: only then must a
    /// cancelled order's charge be asked about again before it is voided.
    #[must_use]
    pub fn may_have_charged(&self) -> bool {
        match self {
            Self::Unavailable {
                may_have_charged, ..
            } => *may_have_charged,
            Self::BreakerOpen { .. } | Self::Refused { .. } => false,
        }
    }

    /// How long to wait before asking again, when the PG or the breaker said.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { cause, .. } => cause.retry_after(),
            Self::BreakerOpen { retry_after } => *retry_after,
            Self::Refused { .. } => None,
        }
    }
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

impl BreakerState {
    /// Every state, for a gauge per state.
    pub const ALL: [Self; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    /// `closed`, `open` or `half_open` (the metric's label).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// The PG as the payment worker uses it: whole calls (the client's timeouts, retries and
/// breaker inside). [`GatewayClient`] in production; a scripted double in tests.
#[async_trait]
pub trait Gateway: Send + Sync + 'static {
    /// Takes `request.amount` for `request.order_id`, once per idempotency key; a decline is
    /// an `Ok`.
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError>;
    /// Refunds a charge in full, once per idempotency key.
    async fn refund(&self, request: &RefundRequest) -> Result<RefundReceipt, GatewayError>;
    /// The client's breaker, for metrics.
    fn breaker_state(&self) -> BreakerState;
}

#[async_trait]
impl<T: GatewayTransport> Gateway for GatewayClient<T> {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        GatewayClient::charge(self, request).await
    }

    async fn refund(&self, request: &RefundRequest) -> Result<RefundReceipt, GatewayError> {
        GatewayClient::refund(self, request).await
    }

    fn breaker_state(&self) -> BreakerState {
        GatewayClient::breaker_state(self)
    }
}

/// `text` without NUL characters (Postgres refuses them) and cut to [`RAW_TEXT_MAX`]
/// characters: the PG's own words, kept for the saga log.
#[must_use]
pub fn raw_text(text: &str) -> String {
    text.chars()
        .filter(|c| *c != '\0')
        .take(RAW_TEXT_MAX)
        .collect()
}
