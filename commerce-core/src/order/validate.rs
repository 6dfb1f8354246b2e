//! Checks a [`NewOrder`] before anything touches the database.

use crate::error::{Error, Result};
use crate::ids::ProductId;

use super::{LineRequest, NewOrder, ShortagePolicy};

/// Bounds on what one order may ask for, and (optionally) on what one user may have open.
///
/// The first four are checked before anything touches the database. The per-user limits
/// are off by default; when one is set, every placement path checks it inside the
/// placement transaction, under a per-user lock, so concurrent placements of one user
/// cannot pass it together, and a refused order ([`crate::Error::UserLimitExceeded`])
/// writes nothing.
///
/// ```
/// use commerce_core::OrderLimits;
/// let limits = OrderLimits {
///     max_backordered_units_per_user: Some(20),
///     max_open_orders_per_user: Some(5),
///     ..OrderLimits::default()
/// };
/// # let _ = limits;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderLimits {
    /// Most lines in one order. Default 100.
    pub max_lines: usize,
    /// Most units on one line. Default 10,000.
    pub max_quantity: i64,
    /// Longest user id, in bytes. Default 200.
    pub max_user_id_len: usize,
    /// Longest idempotency key, in bytes. Default 200.
    pub max_idempotency_key_len: usize,
    /// Most units one user may have waiting for stock, across their BACKORDERED orders and
    /// counting the new order's shortfall (the units it cannot take now). An order that
    /// leaves nothing waiting is not held to it. Default `None`: no limit.
    ///
    /// Counting costs the placement transaction a lock and a read of the user's orders
    /// (through the `(user_id, created_at)` index), so it grows with a user's history.
    pub max_backordered_units_per_user: Option<i64>,
    /// Most orders one user may have BACKORDERED or CREATED (placed, not yet paid or
    /// cancelled), the new order included: every placement counts, whatever its policy.
    /// Default `None`: no limit.
    pub max_open_orders_per_user: Option<i64>,
}

impl Default for OrderLimits {
    fn default() -> Self {
        Self {
            max_lines: 100,
            max_quantity: 10_000,
            max_user_id_len: 200,
            max_idempotency_key_len: 200,
            max_backordered_units_per_user: None,
            max_open_orders_per_user: None,
        }
    }
}

/// An order that passed validation: non-empty, lines sorted by product id and unique,
/// quantities in range. Only [`ValidatedOrder::new`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedOrder {
    user_id: String,
    lines: Vec<LineRequest>,
    policy: ShortagePolicy,
    idempotency_key: Option<String>,
}

impl ValidatedOrder {
    /// Validates `order` against `limits`.
    ///
    /// # Errors
    /// [`Error::EmptyOrder`], [`Error::TooManyLines`], [`Error::InvalidQuantity`],
    /// [`Error::DuplicateLine`] or [`Error::InvalidInput`] (user id or key empty or too long).
    pub fn new(order: NewOrder, limits: &OrderLimits) -> Result<Self> {
        check_text("user_id", &order.user_id, limits.max_user_id_len)?;
        if let Some(key) = &order.idempotency_key {
            check_text("idempotency_key", key, limits.max_idempotency_key_len)?;
        }
        if order.lines.is_empty() {
            return Err(Error::EmptyOrder);
        }
        if order.lines.len() > limits.max_lines {
            return Err(Error::TooManyLines {
                lines: order.lines.len(),
                max: limits.max_lines,
            });
        }
        for line in &order.lines {
            check_quantity(Some(line.product), line.quantity, limits.max_quantity)?;
        }
        let mut lines = order.lines;
        // One fixed lock order (ascending product id) is what keeps concurrent multi-line
        // orders from deadlocking each other.
        lines.sort_by_key(|line| line.product);
        if let Some(pair) = lines.windows(2).find(|w| w[0].product == w[1].product) {
            return Err(Error::DuplicateLine {
                product: pair[0].product,
            });
        }
        Ok(Self {
            user_id: order.user_id,
            lines,
            policy: order.policy,
            idempotency_key: order.idempotency_key,
        })
    }

    /// Who orders.
    #[must_use]
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The lines, sorted by product id, each product once.
    #[must_use]
    pub fn lines(&self) -> &[LineRequest] {
        &self.lines
    }

    /// The products of the lines, ascending.
    pub fn products(&self) -> impl Iterator<Item = ProductId> + '_ {
        self.lines.iter().map(|line| line.product)
    }

    /// The shortage policy.
    #[must_use]
    pub fn policy(&self) -> ShortagePolicy {
        self.policy
    }

    /// The idempotency key, if any.
    #[must_use]
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
}

/// Rejects a quantity that is not positive or above `max`.
pub(crate) fn check_quantity(product: Option<ProductId>, quantity: i64, max: i64) -> Result<()> {
    let reason = if quantity <= 0 {
        "must be positive"
    } else if quantity > max {
        "above the configured maximum"
    } else {
        return Ok(());
    };
    Err(Error::InvalidQuantity {
        product,
        quantity,
        reason,
    })
}

/// Longest free text (a name, a reason, a reference) the crate stores.
pub(crate) const MAX_TEXT: usize = 500;

/// Rejects text that is blank, longer than `max_len` bytes or holds control characters
/// (which Postgres would refuse, NUL, or which would garble logs).
pub(crate) fn check_text(field: &'static str, value: &str, max_len: usize) -> Result<()> {
    let reason = if value.trim().is_empty() {
        "must not be empty"
    } else if value.len() > max_len {
        "too long"
    } else if value.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidInput { field, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(order: NewOrder) -> Result<ValidatedOrder> {
        ValidatedOrder::new(order, &OrderLimits::default())
    }

    #[test]
    fn lines_come_out_sorted_by_product() {
        let order = validate(NewOrder::new("u").line(9, 1).line(2, 3).line(5, 1)).unwrap();
        let products: Vec<_> = order.products().map(|p| p.0).collect();
        assert_eq!(products, [2, 5, 9]);
    }

    #[test]
    fn bad_quantities_are_rejected() {
        for quantity in [0, -1, i64::MIN, 10_001, i64::MAX] {
            let err = validate(NewOrder::new("u").line(1, quantity)).unwrap_err();
            assert!(
                matches!(err, Error::InvalidQuantity { quantity: q, .. } if q == quantity),
                "{quantity}: {err:?}"
            );
        }
    }

    #[test]
    fn empty_and_oversized_orders_are_rejected() {
        assert!(matches!(
            validate(NewOrder::new("u")),
            Err(Error::EmptyOrder)
        ));
        let mut big = NewOrder::new("u");
        for p in 0..101 {
            big = big.line(p, 1);
        }
        assert!(matches!(
            validate(big),
            Err(Error::TooManyLines {
                lines: 101,
                max: 100
            })
        ));
    }

    #[test]
    fn duplicate_lines_are_rejected() {
        let err = validate(NewOrder::new("u").line(4, 1).line(3, 1).line(4, 2)).unwrap_err();
        assert!(matches!(err, Error::DuplicateLine { product } if product.0 == 4));
    }

    #[test]
    fn user_id_and_key_must_be_sensible() {
        let empty_user = validate(NewOrder::new(" ").line(1, 1)).unwrap_err();
        assert!(matches!(
            empty_user,
            Error::InvalidInput {
                field: "user_id",
                ..
            }
        ));
        let long_key = validate(
            NewOrder::new("u")
                .line(1, 1)
                .idempotency_key("k".repeat(201)),
        );
        assert!(matches!(
            long_key,
            Err(Error::InvalidInput {
                field: "idempotency_key",
                ..
            })
        ));
    }
}
