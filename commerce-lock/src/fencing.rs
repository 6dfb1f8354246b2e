//! Fencing tokens: how a protected write refuses a holder whose lease already expired.
//!
//! A lease-based lock cannot stop a holder that pauses (GC, a stalled VM, a slow query) past
//! its lease: by the time it writes, someone else may hold the lock. Each acquisition
//! therefore hands out a number that grows per key ([`FencingToken`]); the store that the
//! lock protects remembers the newest token it accepted and refuses older ones.
//!
//! # How tokens are made, and when they stop growing
//!
//! A token is `max(previous token for the key, clock in µs since 1970) + 1`: the Redis
//! server's `TIME` for [`RedisLock`](crate::RedisLock), the system clock for
//! [`LocalLock`](crate::LocalLock). The clock part keeps tokens growing when the counter is
//! lost or comes back older: a Redis restart without persistence, a failover to a replica
//! that missed the last increments, an eviction, or a restarted process for the in-process
//! lock. Without it a lost counter would restart at 1 (every fenced write refused until the
//! store's fence is reset), and a partly lost one would hand the same token to two holders.
//!
//! Two limits remain:
//! - The clock must not go back (e.g. a failover to a server with a skewed clock) while the
//!   counter is also lost; then a token can be re-issued.
//! - Redis must not evict the fence keys (`<ns>:fence:<key>`, no TTL): keep them off an
//!   instance with an `allkeys-*` `maxmemory-policy` (e.g. the one serving a cache), or use
//!   `noeviction`/`volatile-*`.
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

/// A number handed out with each acquisition of a key, greater than every earlier one for
/// the same key: it survives releases and expiries, and a lost counter as long as the clock
/// does not go back (see the [module documentation](self)).
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

    /// The token as a Postgres `BIGINT` (tokens are near the clock in µs, about 2^51 today,
    /// far below `i64::MAX`; saturates if not).
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
