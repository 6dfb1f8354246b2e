//! Support for the code the macros generate. Not a public API: names and signatures may
//! change in any release.

use std::future::Future;

pub use std::time::Duration;

use crate::CacheValue;
pub use crate::TwoLevelCache;

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

/// `#[cache_put]` on `-> Result<T, E>`: puts `Ok` values.
pub async fn put_value<V: CacheValue, E>(
    cache: &TwoLevelCache<V>,
    key: &str,
    ttl: Option<Duration>,
    result: &Result<V, E>,
) {
    if let Ok(value) = result {
        let written = match ttl {
            Some(ttl) => cache.put_with_ttl(key, value.clone(), ttl).await,
            None => cache.put(key, value.clone()).await,
        };
        log_failure(cache, key, "put", written);
    }
}

/// `#[cache_put]` on `-> Result<Option<T>, E>`: puts `Ok(Some)`, evicts on `Ok(None)`.
pub async fn put_option<V: CacheValue, E>(
    cache: &TwoLevelCache<V>,
    key: &str,
    ttl: Option<Duration>,
    result: &Result<Option<V>, E>,
) {
    match result {
        Ok(Some(value)) => {
            let written = match ttl {
                Some(ttl) => cache.put_with_ttl(key, value.clone(), ttl).await,
                None => cache.put(key, value.clone()).await,
            };
            log_failure(cache, key, "put", written);
        }
        Ok(None) => log_failure(cache, key, "evict", cache.evict(key).await),
        Err(_) => {}
    }
}

/// `#[cache_evict]`: evicts after `Ok`.
pub async fn evict<V: CacheValue, T, E>(
    cache: &TwoLevelCache<V>,
    key: &str,
    result: &Result<T, E>,
) {
    if result.is_ok() {
        log_failure(cache, key, "evict", cache.evict(key).await);
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
