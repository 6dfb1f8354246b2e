//! The read path: L1, single flight, L2, loader.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;

use super::shape::Shape;
use super::{CacheValue, Inner};
use crate::backend::{FillOutcome, L2Entry};
use crate::flight::{Leader, Turn};
use crate::l1::{Freshness, L1Entry};
use crate::metrics::bump;
use crate::{codec, ttl};

/// What L1 had for a key that is going to be loaded.
struct Fallback<V> {
    entry: L1Entry<V>,
    /// `true`: still fresh, this caller claimed its refresh. `false`: past its fresh time.
    refreshing: bool,
}

impl<V: CacheValue> Inner<V> {
    pub(super) async fn lookup<S, E, F, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<S, E>
    where
        S: Shape<V>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<S, E>>,
    {
        let mut fallback = None;
        if let Some(l1) = &self.l1 {
            if let Some(entry) = l1.get(key).await {
                // The hot path: moves the value out of moka's clone, no second clone.
                match entry.freshness() {
                    Freshness::Fresh => {
                        if let Some(found) = S::from_cached(entry.value) {
                            bump(&self.counters.l1_hits);
                            return Ok(found);
                        }
                    }
                    Freshness::RefreshClaimed if S::accepts(&entry.value) => {
                        bump(&self.counters.l1_hits);
                        bump(&self.counters.refreshes);
                        fallback = Some(Fallback {
                            entry,
                            refreshing: true,
                        });
                    }
                    Freshness::RefreshClaimed => entry.release_refresh(),
                    Freshness::Stale if S::accepts(&entry.value) => {
                        fallback = Some(Fallback {
                            entry,
                            refreshing: false,
                        });
                    }
                    Freshness::Stale => {}
                }
            }
        }
        let refreshing = fallback.as_ref().is_some_and(|f| f.refreshing);
        if !refreshing {
            bump(&self.counters.l1_misses);
        }

        let leader = match self.flights.join(key).wait_turn().await {
            Turn::Lead(leader) => leader,
            Turn::Landed(value) => {
                if let Some(found) = S::from_cached(value) {
                    return Ok(found);
                }
                // A cached "not found" for a caller that needs a value: load it, outside the
                // flight (which is over), the way a leader would.
                return self.load(key, ttl, loader, fallback, None).await;
            }
        };

        // A flight may have landed between our L1 miss and joining: its value is in L1 now.
        if let (Some(l1), None) = (&self.l1, &fallback) {
            if let Some(entry) = l1.get(key).await {
                if entry.freshness() == Freshness::Fresh {
                    if let Some(found) = S::from_cached(entry.value.clone()) {
                        leader.land(entry.value);
                        return Ok(found);
                    }
                }
            }
        }
        self.load(key, ttl, loader, fallback, Some(leader)).await
    }

    /// L2, then the loader; stores what the loader found. With `leader`, hands the result to
    /// the callers queued on the key, or (on failure) the turn to the next one of them.
    async fn load<S, E, F, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        loader: F,
        fallback: Option<Fallback<V>>,
        leader: Option<Leader<V>>,
    ) -> Result<S, E>
    where
        S: Shape<V>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<S, E>>,
    {
        let land = |value: Option<V>| {
            if let Some(leader) = leader {
                leader.land(value);
            }
        };
        let refreshing = fallback.as_ref().is_some_and(|f| f.refreshing);
        let generation = self.generation.load(Ordering::Acquire);
        let full_key = self.full_key(key);
        let snapshot = match self.l2_call("read", self.l2.read(&full_key)).await {
            Ok(entry) => match self.usable::<S>(key, &entry, refreshing) {
                Some((value, found)) => {
                    bump(&self.counters.l2_hits);
                    self.fill_l1(
                        key,
                        value.clone(),
                        entry.version,
                        entry.ttl_left,
                        generation,
                    )
                    .await;
                    land(value);
                    return Ok(found);
                }
                None => {
                    bump(&self.counters.l2_misses);
                    Some(entry.version)
                }
            },
            Err(_) => None,
        };

        bump(&self.counters.loads);
        match loader().await {
            Ok(found) => {
                let value = found.cached().cloned();
                self.store_loaded(key, value.clone(), snapshot, ttl, generation)
                    .await;
                land(value);
                Ok(found)
            }
            Err(error) => {
                bump(&self.counters.load_errors);
                match fallback.and_then(|fallback| self.serve_fallback::<S>(fallback)) {
                    Some((value, found)) => {
                        land(value);
                        Ok(found)
                    }
                    // Dropping the leader hands the turn to the next caller in line.
                    None => Err(error),
                }
            }
        }
    }

    /// The L2 entry's value if this read may use it: present, decodable, of a shape the caller
    /// accepts, and (for a refresh) with more time left than the refresh window.
    fn usable<S: Shape<V>>(
        &self,
        key: &str,
        entry: &L2Entry,
        refreshing: bool,
    ) -> Option<(Option<V>, S)> {
        let stored = entry.stored.as_ref()?;
        if refreshing
            && self
                .config
                .refresh_ahead
                .is_some_and(|window| entry.ttl_left.is_some_and(|left| left <= window))
        {
            return None;
        }
        let value = match codec::decode::<V>(stored) {
            Ok(value) => value,
            Err(error) => {
                // Written by a build with another shape of V: reload and overwrite it.
                tracing::warn!(cache = %self.config.name, key, %error, "undecodable L2 value ignored");
                return None;
            }
        };
        let found = S::from_cached(value.clone())?;
        Some((value, found))
    }

    /// Stores a loaded value: in L2 only if the key was not written since it was read
    /// (`snapshot` is the version read then; `None` when L2 could not be read), in L1 unless
    /// that fill lost to a write.
    async fn store_loaded(
        &self,
        key: &str,
        value: Option<V>,
        snapshot: Option<u64>,
        ttl: Option<Duration>,
        generation: u64,
    ) {
        let l2_ttl = if value.is_some() {
            self.jittered(ttl.unwrap_or(self.config.l2_ttl))
        } else {
            self.config.negative_ttl
        };
        let stored = match (snapshot, codec::encode(key, value.as_ref())) {
            (Some(expected), Ok(stored)) => Some((expected, stored)),
            (_, Err(error)) => {
                tracing::warn!(cache = %self.config.name, %error, "loaded value kept out of L2");
                None
            }
            (None, Ok(_)) => None,
        };
        let (version, l2_ttl_left) = match stored {
            Some((expected, stored)) => {
                let full_key = self.full_key(key);
                match self
                    .l2_call("fill", self.l2.fill(&full_key, expected, &stored, l2_ttl))
                    .await
                {
                    Ok(FillOutcome::Filled { version }) => (version, Some(l2_ttl)),
                    Ok(FillOutcome::Conflict { .. }) => {
                        // Written while we loaded: our value may predate that write.
                        bump(&self.counters.l2_fill_conflicts);
                        return;
                    }
                    Err(_) => (0, None),
                }
            }
            None => (0, None),
        };
        self.fill_l1(key, value, version, l2_ttl_left, generation)
            .await;
    }

    /// A value's L2 TTL: `ttl` (clamped, see [`ttl::MAX_TTL`]) plus random jitter.
    pub(super) fn jittered(&self, ttl: Duration) -> Duration {
        let ttl = ttl::clamp(ttl);
        let jitter = self.config.l2_ttl_jitter;
        if jitter.is_zero() {
            return ttl;
        }
        let extra =
            rand::thread_rng().gen_range(0..=u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX));
        ttl::clamp(ttl.saturating_add(Duration::from_millis(extra)))
    }

    /// After a failed load: the entry still fresh (refresh) or within the fail-safe window.
    fn serve_fallback<S: Shape<V>>(&self, fallback: Fallback<V>) -> Option<(Option<V>, S)> {
        if fallback.refreshing {
            fallback.entry.release_refresh();
        } else {
            bump(&self.counters.stale_served);
        }
        let value = fallback.entry.value;
        let found = S::from_cached(value.clone())?;
        Some((value, found))
    }
}
