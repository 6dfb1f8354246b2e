//! The L2 seam: where entries shared by all nodes live.
//!
//! Every entry carries a **version**. Writes (`write`, `delete`) give the key a new version that
//! is greater than any version the key had before, also after the entry expired; a `delete`
//! leaves a tombstone holding the version for a while. A fill after a load (`fill`) only succeeds
//! while the key still has the version read before the load, so a load that raced with a write
//! can never put the older value back into L2.

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;

pub use self::memory::MemoryBackend;
pub use self::redis::RedisBackend;
use crate::Result;

/// What an L2 entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// An encoded value.
    Value(Vec<u8>),
    /// The loader found nothing: a cached "not found".
    Negative,
}

/// The answer to an L2 read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Entry {
    /// The key's current version, `0` when the key has none (never written, or long expired).
    pub version: u64,
    /// The stored value, `None` when the key is absent or a tombstone.
    pub stored: Option<Stored>,
    /// How long the entry has left to live, `None` when it has no expiry.
    pub ttl_left: Option<Duration>,
}

/// The answer to a conditional fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    /// The value was stored; the key now has this version.
    Filled {
        /// The key's version after the fill.
        version: u64,
    },
    /// The key was written or deleted since it was read; nothing was stored.
    Conflict {
        /// The key's version now.
        current: u64,
    },
}

/// A shared store for L2 entries (Redis across nodes, or in-process for a single node).
///
/// `key` is the full key, prefix included. Implementations must make each method atomic per key.
#[async_trait]
pub trait L2Backend: Send + Sync + 'static {
    /// Reads the entry, its version and its remaining lifetime in one atomic step.
    async fn read(&self, key: &str) -> Result<L2Entry>;

    /// Stores `stored` for `ttl` only if the key's version is still `expected_version`.
    ///
    /// A fill does not change the version of an existing key; a key without one gets a fresh
    /// version greater than any it had before.
    async fn fill(
        &self,
        key: &str,
        expected_version: u64,
        stored: &Stored,
        ttl: Duration,
    ) -> Result<FillOutcome>;

    /// Stores `stored` for `ttl` unconditionally and returns the key's new version.
    async fn write(&self, key: &str, stored: &Stored, ttl: Duration) -> Result<u64>;

    /// Removes the value, keeps a tombstone with a new version for `tombstone_ttl`, and returns
    /// that version.
    async fn delete(&self, key: &str, tombstone_ttl: Duration) -> Result<u64>;
}
