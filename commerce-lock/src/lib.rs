//! A distributed lock that is at least as safe as Redisson's `RLock`, plus what it lacks.
//!
//! ```no_run
//! use std::time::Duration;
//! use commerce_lock::{DistributedLock, LockOptions, RedisLock};
//!
//! # async fn run() -> commerce_lock::Result<()> {
//! let lock = RedisLock::connect("redis://127.0.0.1:6379").await?;
//! let options = LockOptions::new(Duration::from_secs(2), Duration::from_secs(10));
//! // Both stock rows of a two-line order, all or nothing.
//! let guard = lock.acquire_many(&["stock:7", "stock:1"], options).await?;
//! let fence = guard.fencing_token("stock:1").expect("stock:1 is held");
//! // ... UPDATE product_stock ... WHERE product_id = 1 AND lock_fence <= fence ...
//! # let _ = fence;
//! guard.release().await?;
//! lock.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! - **Ownership is a random token** stored in the key, never a thread or task id, so a guard
//!   can move between tasks freely. Only the token's holder can renew or release.
//! - **Leases** free the key if the holder dies; a **watchdog** renews them every
//!   `lease / 3` while the guard lives and stops for good on release. The guard's
//!   [`LockGuard::lost`] signal fires when a renewal finds the lock gone, and *before* the
//!   lease can run out on the server when renewals fail or hang (or, without a watchdog,
//!   when the lease nears its end): the holder hears of the loss before a successor can
//!   take the key.
//! - **Cancellation** does not strand a key for its whole lease: an acquire whose future is
//!   dropped (or whose reply times out) while its script may have run, and a cancelled
//!   `release()`, are released in the background (owner-checked).
//! - **Fencing tokens** ([`FencingToken`], one per key and acquisition, increasing, also
//!   across a lost counter unless the clock goes back) let the protected store refuse a
//!   holder whose lease already expired; see [`fencing`].
//! - `Duration::MAX` as a wait or a lease means "forever", never a panic.
//! - **Bounded waits** sleep on a pub/sub release notice (subscribed before the retry, so no
//!   wake-up is lost), or until the blocking lease ends; out of time is
//!   [`Error::WaitTimeout`]. An unreachable Redis is [`Error::Unavailable`] within the
//!   connect + response timeouts.
//! - **Multi-key** acquire takes sorted keys all at once or none.
//! - [`LocalLock`] is the same contract in-process; [`redis_lock`] is an attribute macro
//!   running an `async fn` body under the lock.
//!
//! Locks are not reentrant: acquiring a key this task already holds waits for itself and
//! ends in [`Error::WaitTimeout`].
#![warn(missing_docs)]

mod backend;
mod deadline;
mod error;
pub mod fencing;
mod guard;
mod local;
mod options;
mod redis_store;
mod signal;
mod watchdog;

#[doc(hidden)]
pub mod __private;

pub use error::{Error, Result};
pub use fencing::FencingToken;
pub use guard::LockGuard;
pub use local::LocalLock;
pub use options::LockOptions;
pub use redis_store::{RedisLock, RedisLockBuilder};

/// Runs an `async fn` body while holding a lock; see the [macro documentation](macro@redis_lock).
pub use commerce_lock_macros::redis_lock;

use async_trait::async_trait;

/// A lock service: [`RedisLock`] across processes, [`LocalLock`] within one.
///
/// Object safe: hold it as `Arc<dyn DistributedLock>` to choose the implementation at
/// startup.
#[async_trait]
pub trait DistributedLock: Send + Sync {
    /// Takes every key (sorted and deduplicated first) or none, waiting up to
    /// `options.wait` for holders to release.
    ///
    /// # Errors
    /// [`Error::WaitTimeout`] when some key stayed held, [`Error::Unavailable`] when the
    /// store cannot be reached, [`Error::Invalid`] for an empty key list, an empty key or a
    /// zero lease, [`Error::ShutDown`] after `shutdown`.
    async fn acquire_many(&self, keys: &[&str], options: LockOptions) -> Result<LockGuard>;

    /// Takes one key; see [`DistributedLock::acquire_many`].
    ///
    /// # Errors
    /// As [`DistributedLock::acquire_many`].
    async fn acquire(&self, key: &str, options: LockOptions) -> Result<LockGuard> {
        self.acquire_many(&[key], options).await
    }
}

/// The README's example, compiled as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
