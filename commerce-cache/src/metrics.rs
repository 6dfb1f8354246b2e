//! Counters per cache and level, read as a [`CacheMetrics`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters; every field only grows.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) l1_hits: AtomicU64,
    pub(crate) l1_misses: AtomicU64,
    pub(crate) l1_evictions: AtomicU64,
    pub(crate) l2_hits: AtomicU64,
    pub(crate) l2_misses: AtomicU64,
    pub(crate) l2_evictions: AtomicU64,
    pub(crate) l2_errors: AtomicU64,
    pub(crate) l2_skipped: AtomicU64,
    pub(crate) l2_fill_conflicts: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) load_errors: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) invalidations_received: AtomicU64,
    pub(crate) invalidations_published: AtomicU64,
    pub(crate) resyncs: AtomicU64,
}

/// Adds one to a counter. Relaxed: counters are statistics, not synchronisation.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Counters of one cache level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelMetrics {
    /// Reads answered by this level (a cached `None` counts as a hit).
    pub hits: u64,
    /// Reads this level could not answer.
    pub misses: u64,
    /// Entries removed before their time: L1 capacity evictions and invalidations; L2 evicts.
    pub evictions: u64,
}

/// A snapshot of one cache's counters since it was built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheMetrics {
    /// The cache's name.
    pub name: String,
    /// The local level (moka).
    pub l1: LevelMetrics,
    /// The shared level (Redis or in-process).
    pub l2: LevelMetrics,
    /// Whether L2 answered its last operation (`false` while it is skipped after a failure).
    pub l2_healthy: bool,
    /// L2 operations that failed or timed out.
    pub l2_errors: u64,
    /// L2 operations not attempted because L2 was down (circuit open).
    pub l2_skipped: u64,
    /// Fills refused because the key was written while it was being loaded.
    pub l2_fill_conflicts: u64,
    /// Loader calls.
    pub loads: u64,
    /// Loader calls that returned an error (never cached).
    pub load_errors: u64,
    /// Expired values served because the loader failed (fail-safe).
    pub stale_served: u64,
    /// Refresh-ahead reloads of entries close to expiry.
    pub refreshes: u64,
    /// Invalidation notices received from the bus (own ones included).
    pub invalidations_received: u64,
    /// Invalidation notices published by this node.
    pub invalidations_published: u64,
    /// Whole-L1 drops after the bus may have lost notices.
    pub resyncs: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self, name: &str, l2_healthy: bool) -> CacheMetrics {
        CacheMetrics {
            name: name.to_owned(),
            l1: LevelMetrics {
                hits: read(&self.l1_hits),
                misses: read(&self.l1_misses),
                evictions: read(&self.l1_evictions),
            },
            l2: LevelMetrics {
                hits: read(&self.l2_hits),
                misses: read(&self.l2_misses),
                evictions: read(&self.l2_evictions),
            },
            l2_healthy,
            l2_errors: read(&self.l2_errors),
            l2_skipped: read(&self.l2_skipped),
            l2_fill_conflicts: read(&self.l2_fill_conflicts),
            loads: read(&self.loads),
            load_errors: read(&self.load_errors),
            stale_served: read(&self.stale_served),
            refreshes: read(&self.refreshes),
            invalidations_received: read(&self.invalidations_received),
            invalidations_published: read(&self.invalidations_published),
            resyncs: read(&self.resyncs),
        }
    }
}
