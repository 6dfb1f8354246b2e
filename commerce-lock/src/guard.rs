//! The held lock: fencing tokens, the lost-lease signal, and release on every path.

use std::fmt;
use std::sync::Arc;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::backend::Backend;
use crate::{watchdog, Error, FencingToken, LockOptions, Result};

/// Proof of holding one or more keys; returned by
/// [`DistributedLock::acquire`](crate::DistributedLock::acquire) and
/// [`DistributedLock::acquire_many`](crate::DistributedLock::acquire_many).
///
/// Release it with [`LockGuard::release`] to learn whether the lock was still held. If it is
/// dropped instead (early return, `?`, panic, cancelled future), the release runs on a task
/// spawned onto the current tokio runtime and owned by the lock client (its `shutdown` waits
/// for it). Dropped outside any runtime, nothing can run: the watchdog stops and the lease
/// expires on its own.
pub struct LockGuard {
    backend: Arc<dyn Backend>,
    keys: Vec<String>,
    fences: Vec<FencingToken>,
    token: String,
    lost: CancellationToken,
    stop_watchdog: CancellationToken,
    released: bool,
}

impl LockGuard {
    pub(crate) fn start(
        backend: Arc<dyn Backend>,
        keys: Vec<String>,
        fences: Vec<FencingToken>,
        token: String,
        options: LockOptions,
    ) -> Self {
        let guard = Self {
            backend,
            keys,
            fences,
            token,
            lost: CancellationToken::new(),
            stop_watchdog: CancellationToken::new(),
            released: false,
        };
        if options.watchdog {
            watchdog::spawn(watchdog::Watchdog {
                backend: Arc::clone(&guard.backend),
                keys: guard.keys.clone(),
                token: guard.token.clone(),
                options,
                lost: guard.lost.clone(),
                stop: guard.stop_watchdog.clone(),
            });
        }
        guard
    }

    /// The held keys, sorted and without duplicates.
    #[must_use]
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The fencing token handed out for `key` by this acquisition; `None` if `key` is not
    /// one of this guard's keys.
    #[must_use]
    pub fn fencing_token(&self, key: &str) -> Option<FencingToken> {
        self.keys
            .binary_search_by(|k| k.as_str().cmp(key))
            .ok()
            .map(|i| self.fences[i])
    }

    /// Every `(key, fencing token)` pair, in key order.
    pub fn fencing_tokens(&self) -> impl Iterator<Item = (&str, FencingToken)> + '_ {
        self.keys
            .iter()
            .map(String::as_str)
            .zip(self.fences.iter().copied())
    }

    /// The random owner token stored in the keys: only it can renew or release them.
    #[must_use]
    pub fn owner_token(&self) -> &str {
        &self.token
    }

    /// Resolves once the lock is known to be lost: a renewal found a key gone or owned by
    /// someone else, renewals kept failing until the lease could have run out, or the lock
    /// client shut down. Never resolves while the lock is held.
    pub fn lost(&self) -> WaitForCancellationFuture<'_> {
        self.lost.cancelled()
    }

    /// Whether [`LockGuard::lost`] has fired.
    #[must_use]
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// A clonable handle on the lost signal, for a task that outlives a borrow of the guard.
    #[must_use]
    pub fn lost_signal(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Stops the watchdog for good, then deletes every key this guard still owns and
    /// notifies waiters.
    ///
    /// # Errors
    /// [`Error::LockLost`] if some key was no longer owned (its lease expired or it was
    /// deleted: the work under the lock may have overlapped another holder);
    /// [`Error::Unavailable`] if Redis could not be reached (the lease then frees the keys).
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        self.stop_watchdog.cancel();
        // The watchdog renews only while the stored token is ours, so a renewal still in
        // flight can never bring a deleted key back.
        let owned = self.backend.release(&self.keys, &self.token).await?;
        if owned {
            Ok(())
        } else {
            self.lost.cancel();
            Err(Error::LockLost {
                keys: std::mem::take(&mut self.keys),
            })
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.stop_watchdog.cancel();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(keys = ?self.keys, "lock guard dropped outside a tokio runtime; the lease will free it");
            return;
        };
        let backend = Arc::clone(&self.backend);
        let keys = std::mem::take(&mut self.keys);
        let token = std::mem::take(&mut self.token);
        let tasks = backend.tasks().clone();
        tasks.spawn_on(
            async move {
                match backend.release(&keys, &token).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(?keys, "dropped lock guard had already lost its lock"),
                    Err(error) => tracing::warn!(?keys, %error, "release of a dropped lock guard failed; the lease will free it"),
                }
            },
            &runtime,
        );
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("keys", &self.keys)
            .field("fences", &self.fences)
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}
