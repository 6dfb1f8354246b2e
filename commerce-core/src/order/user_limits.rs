//! Per-user limits on what a user may have open ([`OrderLimits`]'s `*_per_user` bounds),
//! enforced inside the placement transaction.
//!
//! Counting a user's open orders and then inserting one is a read-then-write race: two
//! placements of one user would both count below the limit and both insert. So every
//! placement that checks a limit first takes the user's transaction-scoped advisory lock and
//! counts only then, in a statement started after the lock was granted: the previous
//! holder has committed by then (a transaction is marked committed before it releases its
//! locks), so the count includes its order. Nothing but placements adds to what a user has
//! open (receipts, payments and cancellations only take away), so the placements of one
//! user are all that needs to wait on one another.
//!
//! The lock order of the crate is: users' advisory locks (ascending by lock key), then
//! product rows (ascending id), then order rows (ascending id), then the outbox's rows. A
//! user's lock is taken before anything else, and only by placements; a transaction waiting
//! for one holds no row yet, so it cannot be part of a cycle. Without a per-user limit no
//! such lock is taken and nothing is counted.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::error::{Error, Result};

use super::{OrderLimits, ShortagePolicy};

/// The class (first key) of the users' advisory locks: "core" in ASCII. An application
/// that takes two-key advisory locks of its own should use other classes.
const USER_LOCK_CLASS: i32 = 0x636f_7265;

/// Which per-user limit of [`OrderLimits`] an order would have exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UserLimit {
    /// [`OrderLimits::max_backordered_units_per_user`]: units waiting for stock.
    BackorderedUnits,
    /// [`OrderLimits::max_open_orders_per_user`]: orders BACKORDERED or CREATED.
    OpenOrders,
}

impl UserLimit {
    /// A stable machine-readable name (`"backordered_units"`, `"open_orders"`), e.g. for an
    /// API's error body.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BackorderedUnits => "backordered_units",
            Self::OpenOrders => "open_orders",
        }
    }
}

impl fmt::Display for UserLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::BackorderedUnits => "backordered units",
            Self::OpenOrders => "open orders",
        })
    }
}

/// The per-user bounds of an [`OrderLimits`], as the placement paths enforce them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UserLimits {
    backordered_units: Option<i64>,
    open_orders: Option<i64>,
}

impl UserLimits {
    pub(crate) fn new(limits: &OrderLimits) -> Self {
        Self {
            backordered_units: limits.max_backordered_units_per_user,
            open_orders: limits.max_open_orders_per_user,
        }
    }

    /// Whether an order of `policy` can go beyond a limit that is set: only then does its
    /// placement lock its user and count. A reject-policy order never waits for stock, so the
    /// units limit alone does not concern it.
    pub(crate) fn apply_to(self, policy: ShortagePolicy) -> bool {
        self.open_orders.is_some()
            || (policy == ShortagePolicy::Backorder && self.backordered_units.is_some())
    }
}

/// What one user has open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Exposure {
    /// Orders BACKORDERED or CREATED.
    open_orders: i64,
    /// Units waiting in the backorder queue for the user's orders.
    backordered_units: i64,
}

/// An order refused for a per-user limit: the data of [`Error::UserLimitExceeded`] (which
/// is not `Clone`, while a batch answers repeats of a refused request with the same error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OverLimit {
    user: String,
    limit: UserLimit,
    current: i64,
    requested: i64,
    max: i64,
}

impl From<OverLimit> for Error {
    fn from(over: OverLimit) -> Self {
        Error::UserLimitExceeded {
            user: over.user,
            limit: over.limit,
            current: over.current,
            requested: over.requested,
            max: over.max,
        }
    }
}

/// What the users of one placement transaction have open, counted under their locks, and
/// the limits each further order of theirs is admitted against.
#[derive(Debug)]
pub(crate) struct Exposures {
    limits: UserLimits,
    by_user: HashMap<String, Exposure>,
}

impl Exposures {
    /// Takes the advisory lock of every user of `users` (ascending by lock key, one
    /// statement), then counts what each has open (a second statement: its snapshot must
    /// start after the locks were granted). The locks are held until the transaction ends.
    /// Must run before the transaction locks any row (see the module's lock order).
    pub(crate) async fn lock_and_count(
        conn: &mut PgConnection,
        limits: UserLimits,
        users: &[&str],
    ) -> Result<Self> {
        // The subquery's order is the order the locks are taken in; colliding hashes only
        // make two users share a lock.
        sqlx::query(
            "SELECT pg_advisory_xact_lock($1, k) FROM \
             (SELECT DISTINCT hashtext(u) AS k FROM UNNEST($2::text[]) AS t(u) ORDER BY k) AS keys",
        )
        .bind(USER_LOCK_CLASS)
        .bind(users)
        .execute(&mut *conn)
        .await?;
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT u.user_id, \
               (SELECT count(*) FROM commerce.orders o WHERE o.user_id = u.user_id \
                  AND o.status IN ('BACKORDERED', 'CREATED')), \
               (SELECT COALESCE(sum(b.outstanding), 0)::bigint \
                  FROM commerce.orders o JOIN commerce.backorders b ON b.order_id = o.id \
                  WHERE o.user_id = u.user_id) \
             FROM (SELECT DISTINCT user_id FROM UNNEST($1::text[]) AS t(user_id)) AS u",
        )
        .bind(users)
        .fetch_all(&mut *conn)
        .await?;
        let by_user = rows
            .into_iter()
            .map(|(user, open_orders, backordered_units)| {
                (
                    user,
                    Exposure {
                        open_orders,
                        backordered_units,
                    },
                )
            })
            .collect();
        Ok(Self { limits, by_user })
    }

    /// Admits one more order of `user` that leaves `shortfall` units waiting for stock, and
    /// counts it for the user's next order in the same transaction; or refuses it.
    ///
    /// An order that leaves nothing waiting is not held to the backordered-units limit: it
    /// adds nothing to it, even for a user above it (after the limit was lowered, say).
    pub(crate) fn admit(&mut self, user: &str, shortfall: i64) -> Result<(), OverLimit> {
        let now = self.by_user.get(user).copied().unwrap_or_default();
        let over = |limit, current, requested, max| OverLimit {
            user: user.to_owned(),
            limit,
            current,
            requested,
            max,
        };
        if let Some(max) = self.limits.open_orders {
            if now.open_orders.saturating_add(1) > max {
                return Err(over(UserLimit::OpenOrders, now.open_orders, 1, max));
            }
        }
        if let Some(max) = self.limits.backordered_units {
            if shortfall > 0 && now.backordered_units.saturating_add(shortfall) > max {
                let current = now.backordered_units;
                return Err(over(UserLimit::BackorderedUnits, current, shortfall, max));
            }
        }
        let counted = self.by_user.entry(user.to_owned()).or_default();
        counted.open_orders = counted.open_orders.saturating_add(1);
        counted.backordered_units = counted.backordered_units.saturating_add(shortfall);
        Ok(())
    }
}

#[cfg(test)]
impl Exposures {
    /// As if counted under `units` and `orders` limits: `open` lists (user, open orders,
    /// backordered units).
    pub(crate) fn counted(
        units: Option<i64>,
        orders: Option<i64>,
        open: &[(&str, i64, i64)],
    ) -> Self {
        Self {
            limits: UserLimits {
                backordered_units: units,
                open_orders: orders,
            },
            by_user: open
                .iter()
                .map(|&(user, open_orders, backordered_units)| {
                    (
                        user.to_owned(),
                        Exposure {
                            open_orders,
                            backordered_units,
                        },
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposures(units: Option<i64>, orders: Option<i64>, open: &[(&str, i64, i64)]) -> Exposures {
        Exposures::counted(units, orders, open)
    }

    #[test]
    fn each_admitted_order_counts_for_the_next_of_the_same_user() {
        let mut open = exposures(Some(5), Some(3), &[("u", 1, 3)]);
        assert_eq!(open.admit("u", 2), Ok(()));
        let refused = open.admit("u", 1).unwrap_err();
        assert_eq!(
            (
                refused.limit,
                refused.current,
                refused.requested,
                refused.max
            ),
            (UserLimit::BackorderedUnits, 5, 1, 5)
        );
        // Nothing waiting: only the open orders count.
        assert_eq!(open.admit("u", 0), Ok(()));
        let refused = open.admit("u", 0).unwrap_err();
        assert_eq!(
            (
                refused.limit,
                refused.current,
                refused.requested,
                refused.max
            ),
            (UserLimit::OpenOrders, 3, 1, 3)
        );
        // Someone else is counted on their own.
        assert_eq!(open.admit("v", 5), Ok(()));
    }

    #[test]
    fn a_user_above_a_lowered_limit_may_still_order_what_is_in_stock() {
        let mut open = exposures(Some(2), None, &[("u", 4, 9)]);
        assert_eq!(open.admit("u", 0), Ok(()));
        assert!(open.admit("u", 1).is_err());
    }

    #[test]
    fn without_limits_everything_is_admitted() {
        let none = UserLimits::new(&OrderLimits::default());
        assert!(
            !none.apply_to(ShortagePolicy::Backorder) && !none.apply_to(ShortagePolicy::Reject)
        );
        let units_only = UserLimits::new(&OrderLimits {
            max_backordered_units_per_user: Some(10),
            ..OrderLimits::default()
        });
        assert!(units_only.apply_to(ShortagePolicy::Backorder));
        assert!(!units_only.apply_to(ShortagePolicy::Reject));
        let mut open = exposures(None, None, &[("u", 1_000, 1_000_000)]);
        assert_eq!(open.admit("u", i64::MAX), Ok(()));
    }
}
