//! [`TwoLevelCache`]: the read-through cache itself.

mod listener;
mod read;
mod shape;
mod write;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::shape::{Always, Maybe};
use crate::backend::L2Backend;
use crate::builder::{CacheBuilder, Config};
use crate::bus::InvalidationBus;
use crate::flight::Flights;
use crate::health::L2Health;
use crate::l1::{EntryExpiry, L1Entry};
use crate::metrics::{bump, CacheMetrics, Counters};
use crate::{Error, Result};

/// What a cache can hold: cloned out of L1 on every hit, JSON in L2.
///
/// Implemented for every type that qualifies; wrap large values in `Arc` to make hits cheap.
pub trait CacheValue: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static> CacheValue for T {}

/// A two-level read-through cache: L1 in this process (moka), L2 shared by all nodes (Redis).
///
/// Cheap to clone; clones share everything. See the crate documentation for the policies.
pub struct TwoLevelCache<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for TwoLevelCache<V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V> std::fmt::Debug for TwoLevelCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwoLevelCache")
            .field("name", &self.inner.config.name)
            .field("prefix", &self.inner.config.prefix)
            .finish_non_exhaustive()
    }
}

/// Keys whose L2 write or publish failed are remembered (up to this many) and evicted in L2
/// once it answers again, so an outage cannot resurrect the value they had before.
const MAX_REPAIRS: usize = 10_000;

pub(crate) struct Inner<V> {
    config: Config,
    channel: String,
    l1: Option<moka::future::Cache<String, L1Entry<V>>>,
    l2: Arc<dyn L2Backend>,
    bus: Arc<dyn InvalidationBus>,
    flights: Arc<Flights<V>>,
    health: L2Health,
    counters: Arc<Counters>,
    /// Highest invalidation version seen per key: fills below it are refused.
    watermarks: moka::sync::Cache<String, u64>,
    /// Bumped when every in-flight fill must be refused (L1 dropped, or a local write whose
    /// version L2 could not give).
    generation: AtomicU64,
    repairs: Mutex<HashSet<String>>,
    repairs_overflowed: AtomicBool,
    /// Cancelled on shutdown or when the last clone is dropped; every background task of the
    /// cache (the invalidation listener) stops on it.
    shutdown: CancellationToken,
    /// Owns the background tasks, so `shutdown()` can wait for them to end.
    tasks: TaskTracker,
}

impl<V> Drop for Inner<V> {
    fn drop(&mut self) {
        // The listener holds only a weak reference between events, so it sees the token at
        // its next await and ends, dropping (and so closing) its subscription.
        self.shutdown.cancel();
        self.tasks.close();
    }
}

impl<V: CacheValue> TwoLevelCache<V> {
    /// Starts a builder for the cache `name` (used in metrics, logs and the default key
    /// prefix `cache:<name>:`).
    pub fn builder(name: impl Into<String>) -> CacheBuilder<V> {
        CacheBuilder::new(name.into())
    }

    pub(crate) async fn start(
        config: Config,
        l2: Arc<dyn L2Backend>,
        bus: Arc<dyn InvalidationBus>,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        let l1 = (config.l1_capacity > 0).then(|| {
            let evictions = Arc::clone(&counters);
            moka::future::Cache::builder()
                .name(&config.name)
                .max_capacity(config.l1_capacity)
                .expire_after(EntryExpiry)
                .eviction_listener(move |_key, _entry, cause| {
                    use moka::notification::RemovalCause;
                    if matches!(cause, RemovalCause::Size | RemovalCause::Explicit) {
                        bump(&evictions.l1_evictions);
                    }
                })
                .build()
        });
        let watermarks = moka::sync::Cache::builder()
            .max_capacity(config.l1_capacity.max(1024).saturating_mul(4))
            .time_to_live(config.version_retention)
            .build();
        let channel = config.channel();
        let subscription = bus.subscribe(&channel).await;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let inner = Arc::new(Inner {
            health: L2Health::new(config.l2_retry_after),
            channel,
            config,
            l1,
            l2,
            bus,
            flights: Arc::new(Flights::default()),
            counters,
            watermarks,
            generation: AtomicU64::new(0),
            repairs: Mutex::new(HashSet::new()),
            repairs_overflowed: AtomicBool::new(false),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        });
        tasks.spawn(listener::run(
            Arc::downgrade(&inner),
            subscription,
            shutdown,
        ));
        Self { inner }
    }

    /// Reads `key`: L1, then L2 (filling L1), then `loader` (filling both). `Ok(None)` from
    /// the loader is cached for the negative TTL; errors are returned and never cached.
    ///
    /// Concurrent misses of one key on this node run the loader once; the others wait for
    /// its result. If that load fails or its caller goes away, the caller that has waited
    /// longest runs its own loader for the others, and so on: the source sees one load of the
    /// key at a time from this node, and every loaded value is cached. Errors are not shared
    /// (`E` need not be `Clone`): a caller that gets an error got it from its own loader, so
    /// while loads keep failing callers take turns; give them a deadline. Cache trouble never
    /// fails the call: without L2 the loader answers.
    ///
    /// # Errors
    /// Only the loader's.
    pub async fn get_or_load<E, F, Fut>(&self, key: &str, loader: F) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        self.get_or_load_with_ttl(key, None, loader).await
    }

    /// [`TwoLevelCache::get_or_load`] with an L2 TTL for this key instead of the cache's
    /// (`None`: the cache's). The negative TTL is not affected.
    ///
    /// # Errors
    /// Only the loader's.
    pub async fn get_or_load_with_ttl<E, F, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let found = self
            .inner
            .lookup(key, ttl, || async { loader().await.map(Maybe) })
            .await?;
        Ok(found.0)
    }

    /// Like [`TwoLevelCache::get_or_load_with_ttl`] for loaders that always find a value; a
    /// cached "not found" for `key` counts as a miss.
    ///
    /// # Errors
    /// Only the loader's.
    pub async fn get_value_or_load<E, F, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let found = self
            .inner
            .lookup(key, ttl, || async { loader().await.map(Always) })
            .await?;
        Ok(found.0)
    }

    /// Write-through: stores `value` in L2 and this node's L1, and tells the other nodes to
    /// drop their copy. Call it after the write to the source of truth has committed.
    ///
    /// # Errors
    /// [`Error::Encode`]: `value` cannot be serialized, so the key was evicted instead (as by
    /// [`TwoLevelCache::evict`]) and the next read loads it. Or an L2/bus error: this node
    /// already serves `value`, other nodes may serve the old one until their L1 TTL ends, and
    /// the key is evicted in L2 as soon as L2 answers again.
    pub async fn put(&self, key: &str, value: V) -> Result<()> {
        self.inner.put(key, Some(value), None).await
    }

    /// [`TwoLevelCache::put`] with an L2 TTL for this key instead of the cache's.
    ///
    /// # Errors
    /// As [`TwoLevelCache::put`].
    pub async fn put_with_ttl(&self, key: &str, value: V, ttl: Duration) -> Result<()> {
        self.inner.put(key, Some(value), Some(ttl)).await
    }

    /// Removes `key` from L2 and every node's L1; the next read loads it. This is the
    /// recommended write policy: commit to the source of truth, then evict.
    ///
    /// # Errors
    /// An L2/bus error: this node no longer serves the key, other nodes may until their L1
    /// TTL ends, and the eviction is retried when L2 answers again.
    pub async fn evict(&self, key: &str) -> Result<()> {
        self.inner.evict(key).await
    }

    /// Drops `key` from this node's L1 only (L2 and other nodes keep it).
    pub async fn evict_local(&self, key: &str) {
        if let Some(l1) = &self.inner.l1 {
            l1.invalidate(key).await;
        }
    }

    /// Drops this node's whole L1 (L2 and other nodes keep their entries).
    pub fn clear_local(&self) {
        self.inner.drop_l1();
    }

    /// Whether this node's L1 holds `key` right now (for tests and diagnostics).
    #[must_use]
    pub fn contains_local(&self, key: &str) -> bool {
        self.inner
            .l1
            .as_ref()
            .is_some_and(|l1| l1.contains_key(key))
    }

    /// The cache's counters since it was built.
    #[must_use]
    pub fn metrics(&self) -> CacheMetrics {
        self.inner
            .counters
            .snapshot(&self.inner.config.name, self.inner.health.is_healthy())
    }

    /// The cache's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The L2 key prefix of this cache.
    #[must_use]
    pub fn key_prefix(&self) -> &str {
        &self.inner.config.prefix
    }

    /// Runs `work` as one of the cache's own tasks, so [`TwoLevelCache::shutdown`] waits for it
    /// (the macros' write-backs, which must finish once the caller's write committed).
    pub(crate) fn spawn_owned<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.tasks.spawn(work)
    }

    /// Stops listening for invalidations and waits for the cache's background tasks to end
    /// (write-backs of `#[cache_put]` / `#[cache_evict]` still running included).
    /// Reads and writes keep working, but this node's L1 no longer hears about other nodes'
    /// writes; call it when the node is going away. Dropping the last clone stops the tasks
    /// too, without waiting. Calling it again (from any clone) returns at once.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl<V: CacheValue> Inner<V> {
    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.config.prefix)
    }

    /// Runs one L2 operation under the timeout and the circuit breaker. Failures are counted
    /// and logged once per outage, never returned to readers.
    async fn l2_call<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        if !self.health.admit() {
            bump(&self.counters.l2_skipped);
            return Err(Error::Unavailable);
        }
        let outcome = match tokio::time::timeout(self.config.l2_timeout, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Timeout {
                operation,
                timeout: self.config.l2_timeout,
            }),
        };
        match &outcome {
            Ok(_) => {
                if self.health.succeeded() {
                    tracing::info!(cache = %self.config.name, "cache L2 is back");
                }
            }
            Err(error @ (Error::Backend { .. } | Error::Timeout { .. })) => {
                bump(&self.counters.l2_errors);
                if self.health.failed() {
                    tracing::warn!(
                        cache = %self.config.name,
                        %error,
                        "cache L2 unavailable; serving from L1 and the loader until it is back"
                    );
                }
            }
            Err(error) => {
                bump(&self.counters.l2_errors);
                tracing::warn!(cache = %self.config.name, %error, "cache L2 operation failed");
            }
        }
        outcome
    }

    /// How long an entry may be served from L1: its L1 TTL, capped by what L2 had left.
    fn l1_fresh_ttl(&self, negative: bool, l2_ttl_left: Option<Duration>) -> Duration {
        let base = if negative {
            self.config.negative_ttl.min(self.config.l1_ttl)
        } else {
            self.config.l1_ttl
        };
        l2_ttl_left.map_or(base, |left| base.min(left))
    }

    fn new_l1_entry(&self, value: Option<V>, version: u64, fresh: Duration) -> L1Entry<V> {
        let now = (self.config.fail_safe.is_some() || self.config.refresh_ahead.is_some())
            .then(Instant::now);
        let fresh_until = now
            .filter(|_| self.config.fail_safe.is_some())
            .map(|now| now + fresh);
        let refresh = match (now, self.config.refresh_ahead) {
            (Some(now), Some(window)) if window < fresh => {
                Some((now + (fresh - window), Arc::new(AtomicBool::new(false))))
            }
            _ => None,
        };
        L1Entry {
            value,
            version,
            // Both at most 100 years (clamped by the builder): no overflow.
            lifetime: fresh.saturating_add(self.config.fail_safe.unwrap_or_default()),
            fresh_until,
            refresh,
        }
    }

    /// Puts a value read from L2 or loaded into L1, unless it is older than what this node
    /// already holds or has seen invalidated, or L1 was dropped since the read began.
    async fn fill_l1(
        &self,
        key: &str,
        value: Option<V>,
        version: u64,
        l2_ttl_left: Option<Duration>,
        generation: u64,
    ) {
        let Some(l1) = &self.l1 else { return };
        let fresh = self.l1_fresh_ttl(value.is_none(), l2_ttl_left);
        if fresh.is_zero() {
            return;
        }
        let entry = self.new_l1_entry(value, version, fresh);
        // Under moka's per-key compute lock, serialized with invalidations of the same key.
        l1.entry_by_ref(key)
            .and_compute_with(|current| {
                let outdated = self.generation.load(Ordering::Acquire) != generation
                    || self.watermarks.get(key).is_some_and(|seen| seen > version)
                    || current.is_some_and(|current| current.value().version > version);
                std::future::ready(if outdated { Op::Nop } else { Op::Put(entry) })
            })
            .await;
    }

    /// Records that `key` is at `version` everywhere: raises the watermark, and drops this
    /// node's L1 copy if it is older. With `replacement`, stores it as the new L1 entry.
    async fn apply_version(&self, key: &str, version: u64, replacement: Option<L1Entry<V>>) {
        let Some(l1) = &self.l1 else { return };
        l1.entry_by_ref(key)
            .and_compute_with(|current| {
                if self.watermarks.get(key).is_none_or(|seen| seen < version) {
                    self.watermarks.insert(key.to_owned(), version);
                }
                let current_version = current.map(|current| current.value().version);
                let op = match (replacement, current_version) {
                    (_, Some(current)) if current > version => Op::Nop,
                    (Some(entry), _) => Op::Put(entry),
                    (None, Some(current)) if current < version => Op::Remove,
                    (None, _) => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    fn drop_l1(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(l1) = &self.l1 {
            l1.invalidate_all();
        }
    }

    fn queue_repair(&self, key: &str) {
        let mut repairs = self.repairs.lock().unwrap_or_else(PoisonError::into_inner);
        if repairs.len() < MAX_REPAIRS {
            repairs.insert(key.to_owned());
        } else if !self.repairs_overflowed.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cache = %self.config.name,
                "too many keys waiting for L2 eviction; further ones rely on their TTL"
            );
        }
    }
}
