//! In-process L2 for embedded single-node use and for tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{FillOutcome, L2Backend, L2Entry, Stored};
use crate::{ttl, Result};

/// Expired slots are swept once the map holds this many more than after the last sweep.
const SWEEP_GROWTH: usize = 1024;

/// An [`L2Backend`] in this process's memory.
///
/// Share one `Arc<MemoryBackend>` between several caches to simulate several nodes in one
/// process. Time comes from `tokio::time`, so tests can pause and advance it.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    slots: Mutex<Slots>,
    /// One counter for all keys keeps versions increasing even after a slot expires.
    next_version: AtomicU64,
}

#[derive(Debug, Default)]
struct Slots {
    map: HashMap<String, Slot>,
    size_after_sweep: usize,
}

#[derive(Debug, Clone)]
struct Slot {
    version: u64,
    stored: Option<Stored>,
    expires_at: Instant,
}

impl MemoryBackend {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn bump(&self) -> u64 {
        self.next_version.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn with_slots<T>(&self, f: impl FnOnce(&mut Slots, Instant) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-operation on a map whose
        // every operation leaves it consistent, so the data is still good.
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if slots.map.len() > slots.size_after_sweep + SWEEP_GROWTH {
            slots.map.retain(|_, slot| slot.expires_at > now);
            slots.size_after_sweep = slots.map.len();
        }
        f(&mut slots, now)
    }
}

/// When an entry written at `now` for `ttl` expires; TTLs over 100 years count as 100 years
/// instead of overflowing the clock.
fn expiry(now: Instant, ttl: Duration) -> Instant {
    now + ttl::clamp(ttl)
}

impl Slots {
    fn live(&self, key: &str, now: Instant) -> Option<&Slot> {
        self.map.get(key).filter(|slot| slot.expires_at > now)
    }
}

#[async_trait]
impl L2Backend for MemoryBackend {
    async fn read(&self, key: &str) -> Result<L2Entry> {
        Ok(self.with_slots(|slots, now| match slots.live(key, now) {
            Some(slot) => L2Entry {
                version: slot.version,
                stored: slot.stored.clone(),
                ttl_left: Some(slot.expires_at - now),
            },
            None => L2Entry {
                version: 0,
                stored: None,
                ttl_left: None,
            },
        }))
    }

    async fn fill(
        &self,
        key: &str,
        expected_version: u64,
        stored: &Stored,
        ttl: Duration,
    ) -> Result<FillOutcome> {
        Ok(self.with_slots(|slots, now| {
            let current = slots.live(key, now).map_or(0, |slot| slot.version);
            if current != expected_version {
                return FillOutcome::Conflict { current };
            }
            let expires_at = expiry(now, ttl);
            let version = if current == 0 { self.bump() } else { current };
            slots.map.insert(
                key.to_owned(),
                Slot {
                    version,
                    stored: Some(stored.clone()),
                    expires_at,
                },
            );
            FillOutcome::Filled { version }
        }))
    }

    async fn write(&self, key: &str, stored: &Stored, ttl: Duration) -> Result<u64> {
        Ok(self.with_slots(|slots, now| {
            let expires_at = expiry(now, ttl);
            let version = self.bump();
            slots.map.insert(
                key.to_owned(),
                Slot {
                    version,
                    stored: Some(stored.clone()),
                    expires_at,
                },
            );
            version
        }))
    }

    async fn delete(&self, key: &str, tombstone_ttl: Duration) -> Result<u64> {
        Ok(self.with_slots(|slots, now| {
            let expires_at = expiry(now, tombstone_ttl);
            let version = self.bump();
            slots.map.insert(
                key.to_owned(),
                Slot {
                    version,
                    stored: None,
                    expires_at,
                },
            );
            version
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn fill_succeeds_only_at_the_version_read() {
        let backend = MemoryBackend::new();
        let read = backend.read("k").await.unwrap();
        assert_eq!(read.version, 0);
        let value = Stored::Value(b"1".to_vec());
        let FillOutcome::Filled { version } = backend.fill("k", 0, &value, TTL).await.unwrap()
        else {
            panic!("first fill must succeed");
        };
        assert!(version > 0);
        // A second fill based on the old read conflicts: the key now has a version.
        assert_eq!(
            backend.fill("k", 0, &value, TTL).await.unwrap(),
            FillOutcome::Conflict { current: version }
        );
    }

    #[tokio::test]
    async fn delete_leaves_a_newer_tombstone_that_blocks_older_fills() {
        let backend = MemoryBackend::new();
        let value = Stored::Value(b"1".to_vec());
        let written = backend.write("k", &value, TTL).await.unwrap();
        let deleted = backend.delete("k", TTL).await.unwrap();
        assert!(deleted > written);
        let read = backend.read("k").await.unwrap();
        assert_eq!((read.version, read.stored), (deleted, None));
        assert!(matches!(
            backend.fill("k", written, &value, TTL).await.unwrap(),
            FillOutcome::Conflict { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_versions_keep_growing() {
        let backend = MemoryBackend::new();
        let value = Stored::Value(b"1".to_vec());
        let first = backend
            .write("k", &value, Duration::from_secs(1))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        let read = backend.read("k").await.unwrap();
        assert_eq!((read.version, read.stored), (0, None));
        let FillOutcome::Filled { version } = backend.fill("k", 0, &value, TTL).await.unwrap()
        else {
            panic!("fill of an expired key must succeed");
        };
        assert!(version > first);
    }
}
