//! The order state machine.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where an order stands.
///
/// ```text
/// BACKORDERED ──(stock allocated)──> CREATED ──> PROCESSING ──> SHIPPED ──> DELIVERED
///      │                               │             │
///      └───────────────────────────────┴─────────────┴──> CANCELLED (stock returned)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Waiting in the backorder queue for stock of at least one line.
    Backordered,
    /// All lines have their stock; ready to be processed.
    Created,
    /// Being picked and packed (or paid for).
    Processing,
    /// Handed to the carrier.
    Shipped,
    /// Received by the customer. Final.
    Delivered,
    /// Cancelled; its stock went back. Final.
    Cancelled,
}

impl OrderStatus {
    /// The status an order is placed in: CREATED when every line got all its units,
    /// BACKORDERED when one waits for stock (the one rule of every way to place an order).
    pub(crate) fn on_placement(every_line_complete: bool) -> Self {
        if every_line_complete {
            Self::Created
        } else {
            Self::Backordered
        }
    }

    /// Every status, in lifecycle order.
    pub const ALL: [Self; 6] = [
        Self::Backordered,
        Self::Created,
        Self::Processing,
        Self::Shipped,
        Self::Delivered,
        Self::Cancelled,
    ];

    /// The status as stored and shown (`"CREATED"`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backordered => "BACKORDERED",
            Self::Created => "CREATED",
            Self::Processing => "PROCESSING",
            Self::Shipped => "SHIPPED",
            Self::Delivered => "DELIVERED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Whether a caller may move an order from `self` to `to`.
    ///
    /// BACKORDERED -> CREATED is not in this set: only the arrival of stock makes that move,
    /// inside the transaction that allocates the stock.
    #[must_use]
    pub fn can_transition_to(self, to: Self) -> bool {
        use OrderStatus::{Backordered, Cancelled, Created, Delivered, Processing, Shipped};
        matches!(
            (self, to),
            (Created, Processing)
                | (Processing, Shipped)
                | (Shipped, Delivered)
                | (Backordered | Created | Processing, Cancelled)
        )
    }

    /// Whether the order still holds (or waits for) stock: not shipped, delivered or cancelled.
    #[must_use]
    pub fn holds_stock(self) -> bool {
        matches!(self, Self::Backordered | Self::Created | Self::Processing)
    }

    /// Whether no further transition is possible.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Cancelled)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A status string that is not one of [`OrderStatus::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown order status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for OrderStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::{self, *};

    #[test]
    fn happy_path_is_allowed_step_by_step() {
        assert!(Created.can_transition_to(Processing));
        assert!(Processing.can_transition_to(Shipped));
        assert!(Shipped.can_transition_to(Delivered));
    }

    #[test]
    fn skipping_steps_and_going_back_are_refused() {
        assert!(!Created.can_transition_to(Shipped));
        assert!(!Created.can_transition_to(Delivered));
        assert!(!Shipped.can_transition_to(Processing));
        assert!(!Delivered.can_transition_to(Created));
        assert!(
            !Backordered.can_transition_to(Created),
            "only stock arrival may do that"
        );
        assert!(!Backordered.can_transition_to(Processing));
    }

    #[test]
    fn only_orders_not_yet_shipped_can_be_cancelled() {
        for from in OrderStatus::ALL {
            let expected = matches!(from, Backordered | Created | Processing);
            assert_eq!(
                from.can_transition_to(Cancelled),
                expected,
                "{from} -> CANCELLED"
            );
        }
    }

    #[test]
    fn final_states_have_no_way_out() {
        for from in [Delivered, Cancelled] {
            assert!(from.is_final());
            for to in OrderStatus::ALL {
                assert!(!from.can_transition_to(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn status_round_trips_through_its_string() {
        for status in OrderStatus::ALL {
            assert_eq!(status.as_str().parse::<OrderStatus>(), Ok(status));
        }
        assert!("SHIPPING".parse::<OrderStatus>().is_err());
    }
}
