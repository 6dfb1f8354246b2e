//! What a lock store must provide, and the acquire loop both stores share.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::deadline::after;
use crate::guard::{release_in_background, BackgroundRelease, LockGuard};
pub(crate) use crate::signal::ReleaseWatch;
use crate::{Error, FencingToken, LockOptions, Result};

/// The outcome of one all-or-nothing attempt on a sorted key set.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Every key was free: one fencing token per key, in key order.
    Acquired(Vec<FencingToken>),
    /// `key` is held; its lease ends in `expires_in` (`None` when unknown).
    Held {
        key: String,
        expires_in: Option<Duration>,
    },
}

/// A lock store: Redis or in-process. Keys given here are sorted and unique.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// Takes every key for `token` with `lease`, or none of them.
    async fn try_acquire(&self, keys: &[String], token: &str, lease: Duration) -> Result<Attempt>;
    /// Registers for release notices on `keys`; returns once registered.
    async fn watch(&self, keys: &[String]) -> Result<ReleaseWatch>;
    /// Extends every key's lease if `token` still owns all of them; `false` if it does not.
    async fn renew(&self, keys: &[String], token: &str, lease: Duration) -> Result<bool>;
    /// Frees the keys `token` still owns and notifies waiters; `false` if some key was no
    /// longer owned by `token`.
    async fn release(&self, keys: &[String], token: &str) -> Result<bool>;
    /// Longest sleep between two checks while waiting, in case a notice is lost.
    fn max_recheck(&self) -> Duration;
    /// Owner of watchdogs and background releases.
    fn tasks(&self) -> &TaskTracker;
    /// Cancelled when the client shuts down.
    fn shutdown(&self) -> &CancellationToken;
}

/// Sorts, dedups and checks the requested keys.
fn normalise(keys: &[&str]) -> Result<Vec<String>> {
    if keys.is_empty() {
        return Err(Error::invalid("no key to lock"));
    }
    if keys.iter().any(|k| k.is_empty()) {
        return Err(Error::invalid("empty lock key"));
    }
    let mut keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    // Sorted order makes multi-key locking deadlock-free and the script's key order stable.
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

fn check_options(options: &LockOptions) -> Result<()> {
    if options.lease < Duration::from_millis(1) {
        return Err(Error::invalid("lease must be at least 1 ms"));
    }
    Ok(())
}

/// Takes every key in `keys`, waiting up to `options.wait`: first a plain attempt (one round
/// trip when free), then register for notices, retry, and sleep until a notice, the
/// blocking lease's end, or the re-check bound, whichever comes first.
pub(crate) async fn acquire(
    backend: Arc<dyn Backend>,
    keys: &[&str],
    options: LockOptions,
) -> Result<LockGuard> {
    let keys = normalise(keys)?;
    check_options(&options)?;
    if backend.shutdown().is_cancelled() {
        return Err(Error::ShutDown);
    }
    let token = Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let deadline = after(started, options.wait);
    let mut watch: Option<ReleaseWatch> = None;
    loop {
        let sent = Instant::now();
        let in_flight = InFlight {
            backend: &backend,
            keys: &keys,
            token: &token,
            settled: false,
        };
        let attempt = backend.try_acquire(&keys, &token, options.lease).await;
        let (key, expires_in) = match attempt? {
            Attempt::Acquired(fences) => {
                in_flight.settle();
                return Ok(LockGuard::start(
                    backend, keys, fences, token, options, sent,
                ));
            }
            Attempt::Held { key, expires_in } => {
                in_flight.settle();
                (key, expires_in)
            }
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::WaitTimeout {
                key,
                waited: now - started,
            });
        }
        let Some(registered) = watch.as_mut() else {
            // Registered before the retry: a release between here and the wait is caught.
            watch = Some(backend.watch(&keys).await?);
            continue;
        };
        // Lease expiry publishes nothing: wake when the blocking lease ends at the latest.
        let nap = expires_in
            .unwrap_or(backend.max_recheck())
            .min(backend.max_recheck())
            .min(deadline - now)
            .max(Duration::from_millis(1));
        tokio::select! {
            () = registered.notified() => {}
            () = tokio::time::sleep(nap) => {}
            () = backend.shutdown().cancelled() => return Err(Error::ShutDown),
        }
    }
}

/// One acquire attempt whose outcome is not known yet. Dropped unsettled (the caller's future
/// was dropped while the script was in flight, or the attempt failed, e.g. its reply timed
/// out), it releases whatever the attempt may have taken: otherwise a key taken for a token
/// nobody holds would stay locked for the whole lease.
struct InFlight<'a> {
    backend: &'a Arc<dyn Backend>,
    keys: &'a [String],
    token: &'a str,
    settled: bool,
}

impl InFlight<'_> {
    /// The outcome is known: the keys were taken (a guard owns them now) or none were.
    fn settle(mut self) {
        self.settled = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.settled {
            // Queued on the client's connection behind the acquire, so it runs after the
            // script did (if the connection was replaced meanwhile, the lease frees the key).
            release_in_background(
                Arc::clone(self.backend),
                self.keys.to_vec(),
                self.token.to_owned(),
                BackgroundRelease::UncertainAcquire,
            );
        }
    }
}
