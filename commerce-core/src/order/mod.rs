//! Orders: the request, its validation, the stored order and its state machine.

mod completion;
mod history;
mod idempotency;
mod lines;
mod place;
mod read;
mod status;
mod transition;
mod user_limits;
mod validate;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{OrderId, ProductId};

pub(crate) use completion::promote_completed;
pub(crate) use idempotency::forget_keys;
// The batching strategy's own checks, compiled only with it.
#[cfg(feature = "batching")]
pub(crate) use idempotency::is_same_request;
pub(crate) use lines::allocate_line;
pub use place::{OrderWriter, PlacedOrder, ReserveMode};
pub(crate) use read::{load_order, order_totals, orders_of_user, orders_stuck_in, status_history};
pub use read::{OrderCursor, OrderPage, OrderTotal};
pub use status::{OrderStatus, UnknownStatus};
pub use transition::BatchTransition;
pub(crate) use transition::{
    cancel_order, cancel_order_if, cancel_order_if_in, cancel_order_in, transition_order,
    transition_order_in, transition_orders_in,
};
#[cfg(feature = "batching")]
pub(crate) use user_limits::OverLimit;
pub use user_limits::UserLimit;
pub(crate) use user_limits::{Exposures, UserLimits};
pub(crate) use validate::{check_quantity, check_text, MAX_TEXT};
pub use validate::{OrderLimits, ValidatedOrder};

/// What to do when a line asks for more than is in stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShortagePolicy {
    /// Refuse the whole order with [`crate::Error::InsufficientStock`]; nothing is written.
    #[default]
    Reject,
    /// Take what is there and queue the rest (FIFO per product); the order is BACKORDERED
    /// until arriving stock covers every line.
    Backorder,
}

impl ShortagePolicy {
    /// The policy as stored (`"reject"` / `"backorder"`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Backorder => "backorder",
        }
    }

    /// The stored policy; anything else is a corrupt row, not a default.
    pub(crate) fn from_db(s: &str) -> crate::Result<Self> {
        match s {
            "reject" => Ok(Self::Reject),
            "backorder" => Ok(Self::Backorder),
            other => Err(crate::Error::Database(sqlx::Error::Decode(
                format!("unknown shortage policy {other:?}").into(),
            ))),
        }
    }
}

/// One requested line: a product and how many units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRequest {
    /// The product ordered.
    pub product: ProductId,
    /// Units ordered; must be positive and within [`OrderLimits::max_quantity`].
    pub quantity: i64,
}

/// An order as a caller asks for it; [`crate::Commerce::place_order`] validates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    /// Who orders (an opaque id from the application's auth, e.g. a token subject).
    pub user_id: String,
    /// The lines; at least one, each product at most once.
    pub lines: Vec<LineRequest>,
    /// What to do on a shortage.
    pub policy: ShortagePolicy,
    /// Repeating a request with the same key (per user) returns the first order.
    pub idempotency_key: Option<String>,
}

impl NewOrder {
    /// An order for `user_id` with no lines yet, rejecting on shortage, without a key.
    #[must_use]
    pub fn new(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            lines: Vec::new(),
            policy: ShortagePolicy::Reject,
            idempotency_key: None,
        }
    }

    /// Adds a line.
    #[must_use]
    pub fn line(mut self, product: impl Into<ProductId>, quantity: i64) -> Self {
        self.lines.push(LineRequest {
            product: product.into(),
            quantity,
        });
        self
    }

    /// Sets the shortage policy.
    #[must_use]
    pub fn policy(mut self, policy: ShortagePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// A stored order line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product.
    pub product: ProductId,
    /// Units ordered.
    pub quantity: i64,
    /// Units taken from stock so far (equal to `quantity` unless the line is backordered).
    pub allocated: i64,
    /// The product's unit price (minor units) when the order was placed.
    pub unit_price: i64,
}

impl OrderLine {
    /// `quantity × unit_price`, saturating (quantities and prices are bounded far below).
    #[must_use]
    pub fn amount(&self) -> i64 {
        self.quantity.saturating_mul(self.unit_price)
    }

    /// What `lines` cost together: the sum of their [`OrderLine::amount`]s, saturating, as
    /// [`Order::total`] (e.g. of the lines a [`crate::CoreEvent::OrderPlaced`] carries, so a
    /// hook charges for a placed order without reading it back).
    #[must_use]
    pub fn total_of(lines: &[Self]) -> i64 {
        lines
            .iter()
            .fold(0_i64, |total, line| total.saturating_add(line.amount()))
    }
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Its id.
    pub id: OrderId,
    /// Who placed it.
    pub user_id: String,
    /// Where it stands.
    pub status: OrderStatus,
    /// The shortage policy it was placed with.
    pub policy: ShortagePolicy,
    /// The idempotency key it was placed with.
    pub idempotency_key: Option<String>,
    /// Its lines, in product id order.
    pub lines: Vec<OrderLine>,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When its status last changed.
    pub updated_at: DateTime<Utc>,
}

impl Order {
    /// What the order costs: the sum of its lines' amounts, in minor units.
    #[must_use]
    pub fn total(&self) -> i64 {
        OrderLine::total_of(&self.lines)
    }
}

/// One recorded status change of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    /// The status before (`None` for the first row, written when the order was placed).
    pub from: Option<OrderStatus>,
    /// The status after.
    pub to: OrderStatus,
    /// Why (given by the caller, or by the system, e.g. "stock allocated").
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}
