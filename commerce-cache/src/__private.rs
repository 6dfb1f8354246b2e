//! Support for the code the macros generate. Not a public API: names and signatures may
//! change in any release.

use std::future::Future;

pub use std::time::Duration;
use tokio::task::JoinHandle;

use crate::CacheValue;
pub use crate::TwoLevelCache;
pub use commerce_macro_support::KeyPart;

/// `#[cached]` on `-> Result<Option<T>, E>`.
pub async fn cached_option<V, E, F, Fut>(
    cache: &TwoLevelCache<V>,
    key: &str,
    ttl: Option<Duration>,
    loader: F,
) -> Result<Option<V>, E>
where
    V: CacheValue,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<V>, E>>,
{
    cache.get_or_load_with_ttl(key, ttl, loader).await
}

/// `#[cached]` on `-> Result<T, E>`.
pub async fn cached_value<V, E, F, Fut>(
    cache: &TwoLevelCache<V>,
    key: &str,
    ttl: Option<Duration>,
    loader: F,
) -> Result<V, E>
where
    V: CacheValue,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<V, E>>,
{
    cache.get_value_or_load(key, ttl, loader).await
}

/// `#[cache_put]` on `-> Result<T, E>`: puts an `Ok` value.
///
/// Called the moment the body returned, it starts the cache work in a task of its own and
/// returns a future that waits for it: a caller dropped from then on (a timeout, a client
/// disconnect) no longer stops the work halfway, which would leave the value the committed
/// write replaced in L2 and in every L1.
pub fn put_value<V: CacheValue, E>(
    cache: &TwoLevelCache<V>,
    key: String,
    ttl: Option<Duration>,
    result: &Result<V, E>,
) -> impl Future<Output = ()> {
    let work = match result {
        Ok(value) => Some(spawn(cache, key, Write::Put(value.clone(), ttl))),
        Err(_) => None,
    };
    finish(work)
}

/// `#[cache_put]` on `-> Result<Option<T>, E>`: puts `Ok(Some)`, evicts on `Ok(None)`; the
/// work runs in its own task, as for [`put_value`].
pub fn put_option<V: CacheValue, E>(
    cache: &TwoLevelCache<V>,
    key: String,
    ttl: Option<Duration>,
    result: &Result<Option<V>, E>,
) -> impl Future<Output = ()> {
    let work = match result {
        Ok(Some(value)) => Some(spawn(cache, key, Write::Put(value.clone(), ttl))),
        Ok(None) => Some(spawn(cache, key, Write::Evict)),
        Err(_) => None,
    };
    finish(work)
}

/// `#[cache_evict]`: evicts after `Ok`; the work runs in its own task, as for [`put_value`].
pub fn evict<V: CacheValue, T, E>(
    cache: &TwoLevelCache<V>,
    key: String,
    result: &Result<T, E>,
) -> impl Future<Output = ()> {
    let work = result.is_ok().then(|| spawn(cache, key, Write::Evict));
    finish(work)
}

/// The cache work after a committed call.
enum Write<V> {
    Put(V, Option<Duration>),
    Evict,
}

/// Runs `write` on a clone of `cache` (clones share everything) as one of the cache's own
/// tasks, which `shutdown()` waits for. The task owns all it needs, so it outlives the
/// caller; each of its L2 and bus calls is bounded by the cache's `l2_timeout`, so it cannot
/// linger.
fn spawn<V: CacheValue>(cache: &TwoLevelCache<V>, key: String, write: Write<V>) -> JoinHandle<()> {
    let owner = cache.clone();
    let cache = cache.clone();
    owner.spawn_owned(async move {
        match write {
            Write::Put(value, ttl) => {
                let written = match ttl {
                    Some(ttl) => cache.put_with_ttl(&key, value, ttl).await,
                    None => cache.put(&key, value).await,
                };
                log_failure(&cache, &key, "put", written);
            }
            Write::Evict => {
                let evicted = cache.evict(&key).await;
                log_failure(&cache, &key, "evict", evicted);
            }
        }
    })
}

/// Waits for the cache work, so a caller that stays sees it done when the call returns
/// (read-your-writes on this node). A panic in the work is the caller's, as it was before the
/// work moved into a task.
async fn finish(work: Option<JoinHandle<()>>) {
    if let Some(work) = work {
        if let Err(error) = work.await {
            if error.is_panic() {
                std::panic::resume_unwind(error.into_panic());
            }
        }
    }
}

/// The annotated call already succeeded (its write is committed): a cache failure must not
/// turn it into an error. The cache re-evicts the key in L2 when it can.
fn log_failure<V: CacheValue>(
    cache: &TwoLevelCache<V>,
    key: &str,
    operation: &str,
    result: crate::Result<()>,
) {
    if let Err(error) = result {
        tracing::warn!(
            cache = cache.name(),
            key,
            operation,
            %error,
            "cache write after a successful call incomplete; other nodes may serve the old value until their L1 TTL"
        );
    }
}
