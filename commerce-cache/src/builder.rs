//! [`CacheBuilder`]: every knob of a [`TwoLevelCache`], with documented defaults.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{L2Backend, MemoryBackend, RedisBackend};
use crate::bus::{InvalidationBus, MemoryBus, RedisBus};
use crate::cache::{CacheValue, TwoLevelCache};
use crate::{ttl, Error, Result};

/// The settings a built cache runs with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) name: String,
    /// Prepended to every key in L2; also names the invalidation channel.
    pub(crate) prefix: String,
    pub(crate) l1_capacity: u64,
    pub(crate) l1_ttl: Duration,
    pub(crate) l2_ttl: Duration,
    pub(crate) l2_ttl_jitter: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) fail_safe: Option<Duration>,
    pub(crate) refresh_ahead: Option<Duration>,
    pub(crate) l2_timeout: Duration,
    pub(crate) l2_retry_after: Duration,
    pub(crate) version_retention: Duration,
    pub(crate) heartbeat_timeout: Duration,
}

impl Config {
    pub(crate) fn channel(&self) -> String {
        format!("{}__invalidations", self.prefix)
    }

    /// Every duration at most [`ttl::MAX_TTL`], so no later sum or timer can overflow.
    fn clamped(self) -> Self {
        Self {
            l1_ttl: ttl::clamp(self.l1_ttl),
            l2_ttl: ttl::clamp(self.l2_ttl),
            l2_ttl_jitter: ttl::clamp(self.l2_ttl_jitter),
            negative_ttl: ttl::clamp(self.negative_ttl),
            fail_safe: self.fail_safe.map(ttl::clamp),
            refresh_ahead: self.refresh_ahead.map(ttl::clamp),
            l2_timeout: ttl::clamp(self.l2_timeout),
            l2_retry_after: ttl::clamp(self.l2_retry_after),
            version_retention: ttl::clamp(self.version_retention),
            heartbeat_timeout: ttl::clamp(self.heartbeat_timeout),
            ..self
        }
    }
}

/// Builds a [`TwoLevelCache`]; start with [`TwoLevelCache::builder`].
///
/// Defaults: L1 10,000 entries for 60 s; L2 10 min plus up to 30 s jitter; `None` cached 30 s;
/// L2 operations time out after 200 ms and, after a failure, L2 is probed again every 1 s;
/// versions (tombstones and seen invalidations) are kept 60 s; the invalidation subscription
/// is given up after two heartbeats in a row went unanswered for 2 s; no fail-safe, no
/// refresh-ahead; in-process L2 and bus (single node) unless [`CacheBuilder::redis`] or
/// [`CacheBuilder::backend`]/[`CacheBuilder::bus`] say otherwise.
///
/// Durations over 100 years (`Duration::MAX` included) count as 100 years, here and in the
/// per-call TTLs: "never expires" for a cache, and nothing overflows.
pub struct CacheBuilder<V> {
    config: Config,
    redis: Option<redis::Client>,
    backend: Option<Arc<dyn L2Backend>>,
    bus: Option<Arc<dyn InvalidationBus>>,
    value: PhantomData<fn() -> V>,
}

impl<V> std::fmt::Debug for CacheBuilder<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("config", &self.config)
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

impl<V: CacheValue> CacheBuilder<V> {
    pub(crate) fn new(name: String) -> Self {
        Self {
            config: Config {
                prefix: format!("cache:{name}:"),
                name,
                l1_capacity: 10_000,
                l1_ttl: Duration::from_secs(60),
                l2_ttl: Duration::from_secs(600),
                l2_ttl_jitter: Duration::from_secs(30),
                negative_ttl: Duration::from_secs(30),
                fail_safe: None,
                refresh_ahead: None,
                l2_timeout: Duration::from_millis(200),
                l2_retry_after: Duration::from_secs(1),
                version_retention: Duration::from_secs(60),
                heartbeat_timeout: Duration::from_secs(2),
            },
            redis: None,
            backend: None,
            bus: None,
            value: PhantomData,
        }
    }

    /// Replaces the L2 key prefix (default `cache:<name>:`). Every node of one cache must use
    /// the same prefix; different caches must not share one.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.prefix = prefix.into();
        self
    }

    /// L1 size in entries; `0` turns L1 off (every read goes to L2).
    #[must_use]
    pub fn l1_capacity(mut self, entries: u64) -> Self {
        self.config.l1_capacity = entries;
        self
    }

    /// Longest time an entry stays in L1. It is also capped by the L2 entry's remaining TTL,
    /// and bounds how stale a node can be when it missed an invalidation without noticing.
    #[must_use]
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.config.l1_ttl = ttl;
        self
    }

    /// TTL of values in L2 (a `ttl` given per call replaces it).
    #[must_use]
    pub fn l2_ttl(mut self, ttl: Duration) -> Self {
        self.config.l2_ttl = ttl;
        self
    }

    /// Up to this much random time is added to each L2 value TTL, so keys filled together
    /// (after a deploy, a flush) do not expire together.
    #[must_use]
    pub fn l2_ttl_jitter(mut self, jitter: Duration) -> Self {
        self.config.l2_ttl_jitter = jitter;
        self
    }

    /// TTL of a cached "not found" (`None`), in both levels; keep it short.
    #[must_use]
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.config.negative_ttl = ttl;
        self
    }

    /// Fail-safe: keep L1 entries this long past their fresh time and serve one when the
    /// loader fails (counted as `stale_served`). Invalidated entries are never served.
    #[must_use]
    pub fn fail_safe(mut self, max_staleness: Duration) -> Self {
        self.config.fail_safe = Some(max_staleness);
        self
    }

    /// Refresh-ahead: the first read of an L1 entry in the last `window` of its fresh time
    /// reloads it (from L2 when L2 has more time left, else from the loader) while every other
    /// read keeps being served from L1, so a hot key never expires under load.
    #[must_use]
    pub fn refresh_ahead(mut self, window: Duration) -> Self {
        self.config.refresh_ahead = Some(window);
        self
    }

    /// Longest wait for one L2 operation before falling back to L1 and the loader.
    #[must_use]
    pub fn l2_timeout(mut self, timeout: Duration) -> Self {
        self.config.l2_timeout = timeout;
        self
    }

    /// After an L2 failure, L2 is skipped and probed by one read this often until it answers.
    #[must_use]
    pub fn l2_retry_after(mut self, interval: Duration) -> Self {
        self.config.l2_retry_after = interval;
        self
    }

    /// How long tombstones (in L2) and seen invalidation versions (in each node) are kept. It
    /// must exceed the longest load: a load that started before a write and ends after this
    /// long could put the old value back.
    #[must_use]
    pub fn version_retention(mut self, retention: Duration) -> Self {
        self.config.version_retention = retention;
        self
    }

    /// How long the Redis invalidation subscription waits for the reply to one heartbeat
    /// `PING` (sent every second). Two unanswered heartbeats in a row mean the connection is
    /// lost: it is replaced and this node drops its whole L1, since notices may have been
    /// missed. Kept well above [`CacheBuilder::l2_timeout`] so a Redis stall of a few hundred
    /// ms (a large `DEL`, a fork for `BGSAVE`) does not flush every node's L1 at once; a
    /// connection that went silent is still noticed within about `2 × (1 s + timeout)`.
    /// Applies to the bus made by [`CacheBuilder::redis`], not to one given to
    /// [`CacheBuilder::bus`].
    #[must_use]
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.config.heartbeat_timeout = timeout;
        self
    }

    /// Uses Redis for L2 and for invalidations (the usual multi-node setup), unless
    /// [`CacheBuilder::backend`] or [`CacheBuilder::bus`] replace one of them.
    #[must_use]
    pub fn redis(mut self, client: redis::Client) -> Self {
        self.redis = Some(client);
        self
    }

    /// Uses `backend` for L2 (for example one `Arc<MemoryBackend>` shared by test nodes).
    #[must_use]
    pub fn backend(mut self, backend: Arc<dyn L2Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Uses `bus` for invalidations.
    #[must_use]
    pub fn bus(mut self, bus: Arc<dyn InvalidationBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Checks the settings, subscribes to invalidations and starts the cache's listener task.
    ///
    /// Succeeds while Redis is down: reads then use L1 and the loader until it is back.
    /// Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`Error::Config`] for zero TTLs or timeouts, or an empty name or prefix;
    /// [`Error::Backend`] when the Redis client settings are unusable.
    pub async fn build(self) -> Result<TwoLevelCache<V>> {
        let config = self.config.clamped();
        for (what, value) in [
            ("l1_ttl", config.l1_ttl),
            ("l2_ttl", config.l2_ttl),
            ("negative_ttl", config.negative_ttl),
            ("l2_timeout", config.l2_timeout),
            ("version_retention", config.version_retention),
            ("heartbeat_timeout", config.heartbeat_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!("{what} must be greater than zero")));
            }
        }
        if config.name.is_empty() || config.prefix.is_empty() {
            return Err(Error::Config(
                "name and key prefix must not be empty".to_owned(),
            ));
        }
        let backend: Arc<dyn L2Backend> = match (self.backend, &self.redis) {
            (Some(backend), _) => backend,
            (None, Some(client)) => Arc::new(RedisBackend::new(client.clone(), config.l2_timeout)?),
            (None, None) => Arc::new(MemoryBackend::new()),
        };
        let bus: Arc<dyn InvalidationBus> = match (self.bus, self.redis) {
            (Some(bus), _) => bus,
            (None, Some(client)) => Arc::new(
                RedisBus::new(client, config.l2_timeout)?
                    .heartbeat_timeout(config.heartbeat_timeout),
            ),
            (None, None) => Arc::new(MemoryBus::new()),
        };
        Ok(TwoLevelCache::start(config, backend, bus).await)
    }
}
