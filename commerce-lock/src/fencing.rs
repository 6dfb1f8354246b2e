//! Fencing tokens: how a protected write refuses a holder whose lease already expired.
//!
//! A lease-based lock cannot stop a holder that pauses (GC, a stalled VM, a slow query) past
//! its lease: by the time it writes, someone else may hold the lock. Each acquisition
//! therefore hands out a number that grows per key ([`FencingToken`]); the store that the
//! lock protects remembers the newest token it accepted and refuses older ones.
//!
//! # In Postgres (how commerce-core uses it)
//!
//! Give the protected row a `lock_fence BIGINT NOT NULL DEFAULT 0` column and make every
//! write under the lock conditional on it:
//!
//! ```sql
//! UPDATE product_stock
//!    SET quantity = quantity - $1, lock_fence = $2
//!  WHERE product_id = $3 AND lock_fence <= $2
//! ```
//!
//! `$2` is `guard.fencing_token("stock:<id>")`. Zero rows affected means a newer holder has
//! written since: roll the transaction back and report [`Error::StaleFencingToken`]
//! (`<=` rather than `<` lets the same holder write twice).
//!
//! # In Redis
//!
//! [`RedisLock::write_fenced`](crate::RedisLock::write_fenced) stores a value together with
//! the newest token in one script and refuses stale tokens.
//!
//! [`Error::StaleFencingToken`]: crate::Error::StaleFencingToken

use std::fmt;

/// A number handed out with each acquisition of a key, strictly greater than every earlier
/// one for the same key (it survives releases and expiries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw token (as read back from a store).
    #[must_use]
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The raw token.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The token as a Postgres `BIGINT` (tokens stay far below `i64::MAX`; saturates if not).
    #[must_use]
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
