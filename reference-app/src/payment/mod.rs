//! Payment: what the payment service asks of the external payment gateway (PG), and the client
//! that asks it.
//!
//! The types here are the saga's view of a payment, independent of the PG's wire format (which
//! [`client::HttpTransport`] owns).

pub mod client;

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
