//! Input the cache must survive without panicking or keeping a stale value: values that
//! cannot be encoded (review C5) and extreme TTLs (review C10).

mod common;

use std::sync::Arc;
use std::time::Duration;

use commerce_cache::backend::{L2Backend, MemoryBackend, Stored};
use commerce_cache::bus::{InvalidationBus, MemoryBus};
use commerce_cache::{Error, TwoLevelCache};
use commerce_testkit::unique_name;
use common::{node_builder, LoadFailed, Loads, Product};
use serde::{Deserialize, Serialize, Serializer};

/// A value whose serialization fails when `poison` is set (as serde_json does for maps with
/// non-string keys, or a custom `Serialize` that rejects a state).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct Fragile {
    name: String,
    poison: bool,
}

impl Serialize for Fragile {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.poison {
            return Err(serde::ser::Error::custom("poisoned value"));
        }
        #[derive(Serialize)]
        struct Plain<'a> {
            name: &'a str,
            poison: bool,
        }
        Plain {
            name: &self.name,
            poison: false,
        }
        .serialize(serializer)
    }
}

fn fragile(name: &str, poison: bool) -> Fragile {
    Fragile {
        name: name.to_owned(),
        poison,
    }
}

async fn fragile_nodes() -> (TwoLevelCache<Fragile>, TwoLevelCache<Fragile>) {
    let prefix = unique_name("cache-encode");
    let node = || async {
        TwoLevelCache::<Fragile>::builder("fragile")
            .key_prefix(format!("{prefix}:"))
            .redis(redis::Client::open(commerce_testkit::redis_url()).expect("url"))
            .build()
            .await
            .expect("build")
    };
    (node().await, node().await)
}

#[tokio::test]
async fn a_put_that_cannot_be_encoded_evicts_the_old_value_everywhere() {
    let (a, b) = fragile_nodes().await;
    a.put("k", fragile("old", false)).await.expect("put");
    let seen = b
        .get_or_load("k", || async { Ok::<_, LoadFailed>(None) })
        .await;
    assert_eq!(
        seen,
        Ok(Some(fragile("old", false))),
        "b caches the old value"
    );

    let written = a.put("k", fragile("new", true)).await;
    assert!(
        matches!(written, Err(Error::Encode { .. })),
        "the caller learns the value was not written: {written:?}"
    );

    let loads = Loads::default();
    let load = || async {
        loads.record();
        Ok::<_, LoadFailed>(Some(fragile("from the database", false)))
    };
    assert_eq!(
        a.get_or_load("k", load).await,
        Ok(Some(fragile("from the database", false))),
        "the writer no longer serves the old value"
    );
    assert!(
        common::eventually(Duration::from_secs(1), || !b.contains_local("k")).await,
        "the other node dropped its old copy"
    );
    assert_eq!(
        b.get_or_load("k", load).await,
        Ok(Some(fragile("from the database", false)))
    );
    assert_eq!(
        loads.count(),
        1,
        "the second read found the reloaded value in L2"
    );
}

async fn pttl(key: &str) -> i64 {
    let client = redis::Client::open(commerce_testkit::redis_url()).expect("url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut connection)
        .await
        .expect("pttl")
}

#[tokio::test]
async fn extreme_ttls_neither_panic_nor_leave_a_redis_key_without_expiry() {
    let prefix = unique_name("cache-ttl");
    let cache = node_builder(&prefix)
        .l2_ttl_jitter(Duration::from_secs(30))
        .build()
        .await
        .expect("build");
    let value = Product::new(1, "v");
    let load = || async { Ok::<_, LoadFailed>(Some(Product::new(1, "v"))) };

    for (key, ttl) in [
        ("read:max", Duration::MAX),
        ("read:u64-ms", Duration::from_millis(u64::MAX)),
        (
            "read:i64-ms",
            Duration::from_millis(u64::try_from(i64::MAX).unwrap_or(u64::MAX)),
        ),
    ] {
        let read = cache.get_or_load_with_ttl(key, Some(ttl), load).await;
        assert_eq!(read, Ok(Some(value.clone())), "{key}");
        let left = pttl(&format!("{prefix}:{key}")).await;
        assert!(
            left > 0,
            "{key}: L2 entry must expire some day, PTTL = {left}"
        );
    }
    for (key, ttl) in [
        ("put:max", Duration::MAX),
        ("put:u64-ms", Duration::from_millis(u64::MAX)),
    ] {
        cache
            .put_with_ttl(key, value.clone(), ttl)
            .await
            .unwrap_or_else(|error| panic!("{key}: {error}"));
        let left = pttl(&format!("{prefix}:{key}")).await;
        assert!(
            left > 0,
            "{key}: L2 entry must expire some day, PTTL = {left}"
        );
    }
    let metrics = cache.metrics();
    assert!(metrics.l2_healthy, "a TTL is not an outage");
    assert_eq!(metrics.l2_errors, 0);
}

#[tokio::test]
async fn extreme_durations_in_the_builder_neither_panic_nor_fail_reads() {
    let cache = node_builder(&unique_name("cache-ttl-builder"))
        .l1_ttl(Duration::MAX)
        .l2_ttl(Duration::MAX)
        .l2_ttl_jitter(Duration::MAX)
        .negative_ttl(Duration::MAX)
        .fail_safe(Duration::MAX)
        .refresh_ahead(Duration::MAX)
        .version_retention(Duration::MAX)
        .l2_retry_after(Duration::MAX)
        .build()
        .await
        .expect("build");
    let loads = Loads::default();
    for key in ["p:1", "p:1", "p:404"] {
        cache
            .get_or_load(key, || async {
                loads.record();
                Ok::<_, LoadFailed>((key == "p:1").then(|| Product::new(1, "v")))
            })
            .await
            .expect("read");
    }
    assert_eq!(loads.count(), 2);
    cache.put("p:2", Product::new(2, "v")).await.expect("put");
    cache.evict("p:2").await.expect("evict");
}

#[tokio::test]
async fn the_in_process_backend_takes_extreme_ttls() {
    let backend = Arc::new(MemoryBackend::new());
    let value = Stored::Value(b"1".to_vec());
    backend
        .write("w", &value, Duration::MAX)
        .await
        .expect("write");
    backend
        .fill("f", 0, &value, Duration::MAX)
        .await
        .expect("fill");
    backend.delete("d", Duration::MAX).await.expect("delete");
    assert_eq!(backend.read("w").await.expect("read").stored, Some(value));

    let cache = TwoLevelCache::<Product>::builder("products")
        .backend(backend as Arc<dyn L2Backend>)
        .bus(Arc::new(MemoryBus::new()) as Arc<dyn InvalidationBus>)
        .build()
        .await
        .expect("build");
    cache
        .put_with_ttl("p:1", Product::new(1, "v"), Duration::MAX)
        .await
        .expect("put");
    let read = cache
        .get_or_load_with_ttl("p:2", Some(Duration::MAX), || async {
            Ok::<_, LoadFailed>(Some(Product::new(2, "v")))
        })
        .await;
    assert_eq!(read, Ok(Some(Product::new(2, "v"))));
}
