//! What the services say to each other: topics, event types and payloads. The services talk
//! only through these events (and HTTP), never by calling each other's functions, so each
//! can run in a process of its own.

use commerce_core::{OrderLine, OrderStatus};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The topics the services talk on, under one prefix (`EVENT_PREFIX`, default `commerce`), so
/// several systems (or tests) can share a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `<prefix>.orders`: commerce-core's order events (`order.placed`,
    /// `order.status_changed`, `order.cancelled`, ...) and the saga's `order.created`; keyed
    /// by order id.
    pub orders: String,
    /// `<prefix>.stock`: commerce-core's stock events, keyed by product id.
    pub stock: String,
    /// `<prefix>.payments`: the payment service's answers, keyed by order id.
    pub payments: String,
    /// The prefix, also of the consumer groups (`<prefix>.order-service`, ...).
    pub prefix: String,
}

impl Topics {
    /// The topics under `prefix`.
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        Self {
            orders: format!("{prefix}.orders"),
            stock: format!("{prefix}.stock"),
            payments: format!("{prefix}.payments"),
            prefix: prefix.to_owned(),
        }
    }

    /// Every topic.
    #[must_use]
    pub fn all(&self) -> [&str; 3] {
        [&self.orders, &self.stock, &self.payments]
    }

    /// The consumer group (and inbox name) of `service`.
    #[must_use]
    pub fn group(&self, service: &str) -> String {
        format!("{}.{service}", self.prefix)
    }
}

/// The saga's name in the saga log.
pub const SAGA: &str = "order-payment";

/// commerce-core's event when an order is placed. One placed CREATED (with all its stock)
/// starts the saga: it carries who placed the order and its lines at their prices, so the
/// payment service charges from it and no [`ORDER_CREATED`] is written beside it.
pub const ORDER_PLACED: &str = "order.placed";
/// The saga starts for an order that became CREATED after its placement (its last
/// backordered line served): it must be paid. Written by the order service in the transaction
/// that made the order CREATED. (An order placed CREATED starts it with [`ORDER_PLACED`].)
pub const ORDER_CREATED: &str = "order.created";
/// commerce-core's event when an order is cancelled (by its owner, an admin, a failed
/// payment or the saga's timeout).
pub const ORDER_CANCELLED: &str = "order.cancelled";
/// The charge was approved: the order may be processed.
pub const PAYMENT_APPROVED: &str = "payment.approved";
/// The charge failed for good (declined, or refused by the gateway): the order is cancelled.
pub const PAYMENT_FAILED: &str = "payment.failed";
/// A charge taken for an order that was cancelled meanwhile has been refunded.
pub const PAYMENT_REFUNDED: &str = "payment.refunded";

/// Payload of [`ORDER_CREATED`], and what the payment service charges for any start of the
/// saga ([`OrderPlaced::charge`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    /// The order.
    pub order_id: Uuid,
    /// Who pays.
    pub user_id: String,
    /// What to charge, in minor units.
    pub amount: i64,
    /// The currency of `amount`.
    pub currency: String,
}

/// The part of commerce-core's `order.placed` payload the payment service reads.
#[derive(Debug, Clone, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order: Uuid,
    /// Who placed it (who pays).
    pub user_id: String,
    /// CREATED (placed with all its stock: the saga starts) or BACKORDERED (it starts with
    /// [`ORDER_CREATED`] once the last line is served).
    pub status: OrderStatus,
    /// Its lines at the prices it was placed at.
    pub lines: Vec<OrderLine>,
}

impl OrderPlaced {
    /// What to charge for the order, in `currency` (the system's), when its placement starts
    /// the saga (it was placed CREATED): the sum of its lines, saturating as commerce-core's
    /// `Order::total`. `None` for an order placed BACKORDERED.
    #[must_use]
    pub fn charge(&self, currency: &str) -> Option<OrderCreated> {
        (self.status == OrderStatus::Created).then(|| OrderCreated {
            order_id: self.order,
            user_id: self.user_id.clone(),
            amount: OrderLine::total_of(&self.lines),
            currency: currency.to_owned(),
        })
    }
}

/// The longest reason a payment answer gives an order (its cancel reason, in the order's
/// history).
pub const REASON_MAX_CHARS: usize = 200;

/// `raw` (text from outside: a gateway's decline reason or error body) as a reason fit for an
/// order's history: control characters become spaces, runs of whitespace one space, and it
/// is cut to [`REASON_MAX_CHARS`] characters (ending in `…` when cut). Never empty. The raw
/// text belongs in the saga log.
#[must_use]
pub fn reason_text(raw: &str) -> String {
    let words: Vec<&str> = raw
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
        .collect();
    let clean = words.join(" ");
    if clean.is_empty() {
        return "no reason given".to_owned();
    }
    if clean.chars().count() <= REASON_MAX_CHARS {
        return clean;
    }
    let mut cut: String = clean.chars().take(REASON_MAX_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// Payload of [`PAYMENT_APPROVED`], [`PAYMENT_FAILED`] and [`PAYMENT_REFUNDED`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentOutcome {
    /// The order.
    pub order_id: Uuid,
    /// The amount, in minor units.
    pub amount: i64,
    /// The gateway's charge id, when a charge was taken.
    pub charge_id: Option<String>,
    /// Why it failed (for [`PAYMENT_FAILED`]): at most [`REASON_MAX_CHARS`] characters, no
    /// control characters ([`reason_text`]).
    pub reason: Option<String>,
}

/// The part of commerce-core's `order.cancelled` payload the payment service reads.
#[derive(Debug, Clone, Deserialize)]
pub struct OrderCancelled {
    /// The order.
    pub order: Uuid,
    /// Why.
    pub reason: String,
}

/// Test fixture: commerce-core's `order.placed` for `order` placed by `alice` with `status`,
/// one line per entry of `lines` (quantity, allocated, unit price) on products 1, 2, ...
#[cfg(test)]
pub(crate) fn placed_by_alice(
    order: commerce_core::OrderId,
    status: OrderStatus,
    lines: &[(i64, i64, i64)],
) -> commerce_core::CoreEvent {
    commerce_core::CoreEvent::OrderPlaced {
        order,
        user_id: "alice".into(),
        status,
        policy: commerce_core::ShortagePolicy::Backorder,
        lines: (1..)
            .zip(lines)
            .map(|(product, &(quantity, allocated, unit_price))| OrderLine {
                product: commerce_core::ProductId(product),
                quantity,
                allocated,
                unit_price,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_outside_are_cleaned_and_bounded() {
        let cases = [
            ("do_not_honor\nretry later", "do_not_honor retry later"),
            (
                "<html>\r\n<head>\t<title>403</title>",
                "<html> <head> <title>403</title>",
            ),
            ("  \u{0}\u{7}  ", "no reason given"),
            ("", "no reason given"),
        ];
        for (raw, clean) in cases {
            assert_eq!(reason_text(raw), clean, "{raw:?}");
        }
        let long = reason_text(&"é".repeat(600));
        assert_eq!(long.chars().count(), REASON_MAX_CHARS);
        assert!(long.ends_with('…'));
    }
}
