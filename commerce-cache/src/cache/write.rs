//! The write paths: write-through `put`, `evict`, and repairing L2 after an outage.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{CacheValue, Inner};
use crate::bus::Invalidation;
use crate::metrics::bump;
use crate::{codec, Error, Result};

impl<V: CacheValue> Inner<V> {
    /// Order: L2 first (it hands out the new version), then this node's L1, then the notice.
    /// Other nodes drop older copies on the notice; a read racing with the write cannot put
    /// an older version back into any L1 (watermarks) or into L2 (conditional fills).
    pub(super) async fn put(
        &self,
        key: &str,
        value: Option<V>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let stored = match codec::encode(key, value.as_ref()) {
            Ok(stored) => stored,
            Err(error) => {
                // The source of truth already holds the new value: the old one must not stay
                // in L2 or any L1. Evict it, so the next read loads the new value (review C5).
                if let Err(evict_error) = self.evict(key).await {
                    tracing::warn!(
                        cache = %self.config.name,
                        key,
                        error = %evict_error,
                        "unencodable value not cached and the old one not evicted yet; evicted when L2 answers"
                    );
                }
                return Err(error);
            }
        };
        let l2_ttl = if value.is_some() {
            self.jittered(ttl.unwrap_or(self.config.l2_ttl))
        } else {
            self.config.negative_ttl
        };
        let full_key = self.full_key(key);
        match self
            .l2_call("write", self.l2.write(&full_key, &stored, l2_ttl))
            .await
        {
            Ok(version) => {
                let fresh = self.l1_fresh_ttl(value.is_none(), Some(l2_ttl));
                let entry = self.new_l1_entry(value, version, fresh);
                self.apply_version(key, version, Some(entry)).await;
                self.publish(key, version).await
            }
            Err(error) => {
                // This node serves the new value; L2 may still hold the old one: evict it
                // there once L2 answers.
                self.local_write_without_version(key).await;
                if let Some(l1) = &self.l1 {
                    let fresh = self.l1_fresh_ttl(value.is_none(), None);
                    l1.insert(key.to_owned(), self.new_l1_entry(value, 0, fresh))
                        .await;
                }
                self.queue_repair(key);
                Err(error)
            }
        }
    }

    pub(super) async fn evict(&self, key: &str) -> Result<()> {
        let full_key = self.full_key(key);
        match self
            .l2_call(
                "delete",
                self.l2.delete(&full_key, self.config.version_retention),
            )
            .await
        {
            Ok(version) => {
                bump(&self.counters.l2_evictions);
                self.apply_version(key, version, None).await;
                self.publish(key, version).await
            }
            Err(error) => {
                self.local_write_without_version(key).await;
                self.queue_repair(key);
                Err(error)
            }
        }
    }

    /// A local write L2 could not version: refuse every fill in flight (one of them may carry
    /// the old value) and drop the local copy.
    async fn local_write_without_version(&self, key: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(l1) = &self.l1 {
            l1.invalidate(key).await;
        }
    }

    async fn publish(&self, key: &str, version: u64) -> Result<()> {
        let notice = Invalidation {
            key: key.to_owned(),
            version,
        };
        let sent = tokio::time::timeout(
            self.config.l2_timeout,
            self.bus.publish(&self.channel, &notice),
        )
        .await
        .unwrap_or(Err(Error::Timeout {
            operation: "publish",
            timeout: self.config.l2_timeout,
        }));
        match sent {
            Ok(()) => {
                bump(&self.counters.invalidations_published);
                Ok(())
            }
            Err(error) => {
                // L2 has the new version, other nodes' L1 may not hear of it: evict again
                // (and notify) once the bus answers.
                tracing::warn!(cache = %self.config.name, key, %error, "cache invalidation not published");
                self.queue_repair(key);
                Err(error)
            }
        }
    }

    /// Evicts in L2 (and notifies) every key whose write could not reach L2 or the bus.
    /// Runs from the listener task, never on a request.
    pub(super) async fn repair(&self) {
        let keys: Vec<String> = {
            let mut repairs = self
                .repairs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            repairs.drain().collect()
        };
        if keys.is_empty() {
            return;
        }
        self.repairs_overflowed.store(false, Ordering::Relaxed);
        let mut done = 0_usize;
        let mut pending = keys.into_iter();
        while let Some(key) = pending.next() {
            // Straight to L2, past the circuit breaker: this is the probe that closes it.
            let full_key = self.full_key(&key);
            let deleted = tokio::time::timeout(
                self.config.l2_timeout,
                self.l2.delete(&full_key, self.config.version_retention),
            )
            .await;
            let Ok(Ok(version)) = deleted else {
                // Still down: keep every remaining key for the next attempt.
                self.queue_repair(&key);
                pending.for_each(|key| self.queue_repair(&key));
                break;
            };
            if self.health.succeeded() {
                tracing::info!(cache = %self.config.name, "cache L2 is back");
            }
            bump(&self.counters.l2_evictions);
            self.apply_version(&key, version, None).await;
            if self.publish(&key, version).await.is_ok() {
                done += 1;
            }
        }
        if done > 0 {
            tracing::info!(cache = %self.config.name, keys = done, "cache keys written during an L2 outage evicted");
        }
    }
}
