//! The in-process lock: the same semantics as [`RedisLock`](crate::RedisLock) for a single
//! node or embedded use, with leases measured on tokio's clock (pausable in tests).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{self, Attempt, Backend, ReleaseWatch};
use crate::deadline::{after, unix_micros};
use crate::signal::ReleaseSignal;
use crate::{DistributedLock, FencingToken, LockGuard, LockOptions, Result};

/// An in-process [`DistributedLock`]: owner tokens, leases, watchdog, fencing tokens,
/// multi-key all-or-nothing acquire and notice-driven waits, without a server.
///
/// Cheap to clone; clones share the same locks. Fencing tokens are
/// `max(previous + 1, wall-clock µs)` per key: they grow within one table, and a new table
/// (e.g. after a restart) starts above the old one's tokens unless the system clock went
/// back. The counter of every key ever locked is kept for the life of the value.
#[derive(Clone, Default)]
pub struct LocalLock {
    inner: Arc<LocalStore>,
}

impl std::fmt::Debug for LocalLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLock").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct LocalStore {
    slots: Mutex<HashMap<String, Slot>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

#[derive(Default)]
struct Slot {
    holder: Option<Holder>,
    fence: u64,
    released: Arc<ReleaseSignal>,
}

struct Holder {
    token: String,
    expires_at: Instant,
}

impl Slot {
    fn live_holder(&self, now: Instant) -> Option<&Holder> {
        self.holder.as_ref().filter(|h| h.expires_at > now)
    }

    fn owned_by(&self, token: &str, now: Instant) -> bool {
        self.live_holder(now).is_some_and(|h| h.token == token)
    }
}

impl LocalLock {
    /// An empty lock table.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops every watchdog (their guards see [`LockGuard::lost`]), refuses new acquires, and
    /// waits for background releases to finish.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl LocalStore {
    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding this mutex cannot leave a slot half-updated (each update is a
        // single assignment), so a poisoned table is still consistent.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Backend for LocalStore {
    async fn try_acquire(&self, keys: &[String], token: &str, lease: Duration) -> Result<Attempt> {
        let now = Instant::now();
        let mut slots = self.slots();
        for key in keys {
            if let Some(holder) = slots.get(key).and_then(|s| s.live_holder(now)) {
                return Ok(Attempt::Held {
                    key: key.clone(),
                    expires_in: Some(holder.expires_at - now),
                });
            }
        }
        let fences = keys
            .iter()
            .map(|key| {
                let slot = slots.entry(key.clone()).or_default();
                // Starting from the wall clock, a new table (a restarted process) still hands
                // out greater tokens than the old one did, unless the clock went back.
                slot.fence = slot.fence.saturating_add(1).max(unix_micros());
                slot.holder = Some(Holder {
                    token: token.to_owned(),
                    expires_at: after(now, lease),
                });
                FencingToken::new(slot.fence)
            })
            .collect();
        Ok(Attempt::Acquired(fences))
    }

    async fn watch(&self, keys: &[String]) -> Result<ReleaseWatch> {
        let mut slots = self.slots();
        let notifies = keys
            .iter()
            .map(|key| Arc::clone(&slots.entry(key.clone()).or_default().released))
            .collect();
        Ok(ReleaseWatch::new(notifies, None))
    }

    async fn renew(&self, keys: &[String], token: &str, lease: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut slots = self.slots();
        if !keys
            .iter()
            .all(|k| slots.get(k).is_some_and(|s| s.owned_by(token, now)))
        {
            return Ok(false);
        }
        for key in keys {
            if let Some(holder) = slots.get_mut(key).and_then(|s| s.holder.as_mut()) {
                holder.expires_at = after(now, lease);
            }
        }
        Ok(true)
    }

    async fn release(&self, keys: &[String], token: &str) -> Result<bool> {
        let now = Instant::now();
        let mut slots = self.slots();
        let mut all_owned = true;
        for key in keys {
            match slots.get_mut(key) {
                Some(slot) if slot.owned_by(token, now) => {
                    slot.holder = None;
                    slot.released.notify();
                }
                _ => all_owned = false,
            }
        }
        Ok(all_owned)
    }

    fn max_recheck(&self) -> Duration {
        // In-process notices cannot be lost; only lease expiry needs a timer, and the wait
        // loop already sleeps until the blocking lease ends.
        Duration::from_secs(3600)
    }

    fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}

#[async_trait]
impl DistributedLock for LocalLock {
    async fn acquire_many(&self, keys: &[&str], options: LockOptions) -> Result<LockGuard> {
        backend::acquire(self.inner.clone(), keys, options).await
    }
}
