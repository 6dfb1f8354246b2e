//! The payment service: the payment side of the saga. It records a payment for every
//! `order.created` (exactly once, through the inbox), charges the external payment gateway
//! from a worker (outside any database transaction, with the gateway client's timeouts,
//! retries and breaker), and answers with `payment.approved` or `payment.failed` through the
//! outbox, in the transaction that records the outcome. An order cancelled before it was
//! charged voids its payment; one cancelled after is refunded (`payment.refunded`).
//!
//! When the gateway is unavailable (its breaker open, or retries exhausted) the charge is
//! **parked** and tried again later, rather than failed at once: a short gateway outage then
//! costs a delay, not the customer's order and its stock. The saga still ends: the order
//! service cancels an order whose payment has not answered within the saga timeout, and the
//! cancellation voids the parked payment (see `docs/saga.md`).

mod consumer;
mod http_gateway;
mod worker;

use async_trait::async_trait;

pub use consumer::OrderEvents;
pub use http_gateway::http_gateway;
pub use worker::{PaymentWorker, WorkerSettings};

/// A charge to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The order paid for.
    pub order_id: uuid::Uuid,
    /// Minor units.
    pub amount: i64,
    /// Currency of `amount`.
    pub currency: String,
    /// The same for every attempt of this charge: the gateway takes it once.
    pub idempotency_key: String,
}

/// The gateway's answer to a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeAnswer {
    /// Taken.
    Approved {
        /// The gateway's id of the charge (for a refund).
        charge_id: String,
    },
    /// Refused for a business reason (e.g. the amount).
    Declined {
        /// Why.
        reason: String,
    },
}

/// Why the gateway gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayFailure {
    /// Not reachable, or failing, after the client's retries: try again later.
    #[error("payment gateway unavailable: {0}")]
    Unavailable(String),
    /// The client's breaker is open: no call was made; try again later.
    #[error("payment gateway breaker open")]
    BreakerOpen,
    /// The gateway refused the request itself (not a decline): retrying will not help.
    #[error("payment gateway refused the request: {0}")]
    Refused(String),
}

impl GatewayFailure {
    /// Whether a later attempt may succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Refused(_))
    }
}

/// The external payment gateway as the payment service uses it (the HTTP client in
/// production, a scripted double in tests).
#[async_trait]
pub trait Gateway: Send + Sync + 'static {
    /// Takes a charge (idempotent per `charge.idempotency_key`).
    async fn charge(&self, charge: &Charge) -> Result<ChargeAnswer, GatewayFailure>;
    /// Refunds a charge (idempotent per `idempotency_key`).
    async fn refund(&self, charge_id: &str, idempotency_key: &str) -> Result<(), GatewayFailure>;
    /// `closed`, `open` or `half_open`, for metrics.
    fn breaker_state(&self) -> &'static str;
}
