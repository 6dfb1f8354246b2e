//! The held lock: fencing tokens, the lost-lease signal, and release on every path.

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::backend::Backend;
use crate::{watchdog, Error, FencingToken, LockOptions, Result};

/// Proof of holding one or more keys; returned by
/// [`DistributedLock::acquire`](crate::DistributedLock::acquire) and
/// [`DistributedLock::acquire_many`](crate::DistributedLock::acquire_many).
///
/// Release it with [`LockGuard::release`] to learn whether the lock was still held. If it is
/// dropped instead (early return, `?`, panic, cancelled future, including a cancelled
/// `release()`), the release runs on a task spawned onto the current tokio runtime and owned
/// by the lock client (its `shutdown` waits for it). Dropped outside any runtime, nothing can
/// run: the watchdog stops and the lease expires on its own.
pub struct LockGuard {
    backend: Arc<dyn Backend>,
    keys: Vec<String>,
    fences: Vec<FencingToken>,
    token: String,
    lost: CancellationToken,
    stop_watchdog: CancellationToken,
    state: State,
}

/// How far the release has come: decides what `Drop` still has to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Held,
    /// `release()` started but has not finished: if its future is dropped, the release
    /// script may never have been sent.
    Releasing,
    Released,
}

impl LockGuard {
    /// Takes over keys just acquired and starts their lease keeper (renewals if
    /// `options.watchdog`, and the lost signal at the lease's end in any case).
    /// `acquire_sent` is when the acquire request that took them was sent.
    pub(crate) fn start(
        backend: Arc<dyn Backend>,
        keys: Vec<String>,
        fences: Vec<FencingToken>,
        token: String,
        options: LockOptions,
        acquire_sent: Instant,
    ) -> Self {
        let guard = Self {
            backend,
            keys,
            fences,
            token,
            lost: CancellationToken::new(),
            stop_watchdog: CancellationToken::new(),
            state: State::Held,
        };
        watchdog::spawn(watchdog::Watchdog {
            backend: Arc::clone(&guard.backend),
            keys: guard.keys.clone(),
            token: guard.token.clone(),
            options,
            acquire_sent,
            lost: guard.lost.clone(),
            stop: guard.stop_watchdog.clone(),
        });
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

    /// Resolves once the lock must be considered lost: a renewal found a key gone or owned
    /// by someone else, renewals kept failing (or hanging) until the lease could run out,
    /// the lease is about to end without a watchdog, or the lock client shut down.
    ///
    /// It fires *before* the store can drop the key: the lease is counted from when the
    /// acquire (or the last successful renewal) was sent, less a tenth for clock drift and
    /// for the holder to stop. Never resolves while the lock is held.
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
        self.stop_watchdog.cancel();
        // If this future is dropped before the script ran, `Drop` sends it again.
        self.state = State::Releasing;
        // The watchdog renews only while the stored token is ours, so a renewal still in
        // flight can never bring a deleted key back.
        let owned = self.backend.release(&self.keys, &self.token).await;
        self.state = State::Released;
        if owned? {
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
        let why = match self.state {
            State::Released => return,
            State::Held => BackgroundRelease::DroppedGuard,
            State::Releasing => BackgroundRelease::CancelledRelease,
        };
        self.stop_watchdog.cancel();
        release_in_background(
            Arc::clone(&self.backend),
            std::mem::take(&mut self.keys),
            std::mem::take(&mut self.token),
            why,
        );
    }
}

/// Why a release runs on its own task: decides what its outcome means.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BackgroundRelease {
    /// A guard dropped without `release()`: the keys should still be ours.
    DroppedGuard,
    /// A `release()` whose future was dropped: its own script may already have run.
    CancelledRelease,
    /// An acquire whose outcome is unknown (its future was dropped while the script was in
    /// flight, or its reply never came): the keys may or may not have been taken.
    UncertainAcquire,
}

/// Releases, on a task of the lock client's tracker, whatever `token` holds of `keys`. The
/// release script is owner-checked, so this is safe whatever the keys' state. Outside a
/// tokio runtime nothing can run, and the lease frees the keys.
pub(crate) fn release_in_background(
    backend: Arc<dyn Backend>,
    keys: Vec<String>,
    token: String,
    why: BackgroundRelease,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            ?keys,
            "lock released outside a tokio runtime; the lease will free it"
        );
        return;
    };
    let tasks = backend.tasks().clone();
    tasks.spawn_on(
        async move {
            let outcome = backend.release(&keys, &token).await;
            match (why, outcome) {
                (_, Ok(true))
                | (BackgroundRelease::CancelledRelease | BackgroundRelease::UncertainAcquire, Ok(false)) => {
                    tracing::debug!(?keys, ?why, "background release done");
                }
                (BackgroundRelease::DroppedGuard, Ok(false)) => {
                    tracing::warn!(?keys, "dropped lock guard had already lost its lock");
                }
                // Typical while the store is down: every failed acquire lands here.
                (BackgroundRelease::UncertainAcquire, Err(error)) => {
                    tracing::debug!(?keys, %error, "release after an uncertain acquire failed; the lease will free any key it took");
                }
                (_, Err(error)) => {
                    tracing::warn!(?keys, ?why, %error, "background release failed; the lease will free the keys");
                }
            }
        },
        &runtime,
    );
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
