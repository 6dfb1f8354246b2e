//! Read-through behaviour against the real Redis: single flight, negative caching, errors.

mod common;

use std::sync::Arc;
use std::time::Duration;

use commerce_testkit::unique_name;
use common::{node, node_builder, LoadFailed, Loads, Product};
use tokio::sync::Barrier;

#[tokio::test]
async fn a_thousand_concurrent_misses_call_the_loader_once() {
    let cache = node(&unique_name("cache-flight")).await;
    let loads = Loads::default();
    let barrier = Arc::new(Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (cache, loads, barrier) = (cache.clone(), loads.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get_or_load("p:1", || async {
                        loads.record();
                        // Long enough that every caller arrives while the load runs.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok::<_, LoadFailed>(Some(Product::new(1, "one")))
                    })
                    .await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("join"), Ok(Some(Product::new(1, "one"))));
    }
    assert_eq!(loads.count(), 1);
    let metrics = cache.metrics();
    assert_eq!(metrics.loads, 1);
    assert_eq!(metrics.l2.misses, 1, "only the leader asked L2");
}

#[tokio::test]
async fn none_is_cached_and_expires_on_its_own_ttl() {
    let prefix = unique_name("cache-negative");
    let cache = node_builder(&prefix)
        .negative_ttl(Duration::from_millis(300))
        .l1_ttl(Duration::from_secs(60))
        .l2_ttl(Duration::from_secs(60))
        .build()
        .await
        .expect("build");
    let other_node = node(&prefix).await;
    let loads = Loads::default();
    let load_none = || async {
        loads.record();
        Ok::<Option<Product>, LoadFailed>(None)
    };
    assert_eq!(cache.get_or_load("p:404", load_none).await, Ok(None));
    assert_eq!(cache.get_or_load("p:404", load_none).await, Ok(None));
    assert_eq!(
        other_node.get_or_load("p:404", load_none).await,
        Ok(None),
        "shared via L2"
    );
    assert_eq!(loads.count(), 1, "not found is cached in both levels");

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cache.get_or_load("p:404", load_none).await, Ok(None));
    assert_eq!(
        loads.count(),
        2,
        "not found expired after the negative TTL, long before the value TTL"
    );
}

#[tokio::test]
async fn errors_are_never_cached() {
    let cache = node(&unique_name("cache-errors")).await;
    let loads = Loads::default();
    let failing = || async {
        loads.record();
        Err::<Option<Product>, _>(LoadFailed)
    };
    assert_eq!(cache.get_or_load("p:1", failing).await, Err(LoadFailed));
    assert_eq!(cache.get_or_load("p:1", failing).await, Err(LoadFailed));
    assert_eq!(loads.count(), 2, "the second read tried again");
    let value = cache
        .get_or_load("p:1", || async {
            Ok::<_, LoadFailed>(Some(Product::new(1, "back")))
        })
        .await;
    assert_eq!(value, Ok(Some(Product::new(1, "back"))));
    let metrics = cache.metrics();
    assert_eq!((metrics.loads, metrics.load_errors), (3, 2));
}

#[tokio::test]
async fn fail_safe_serves_a_recently_expired_value_when_the_loader_fails() {
    let cache = node_builder(&unique_name("cache-failsafe"))
        .l1_ttl(Duration::from_millis(100))
        .l2_ttl(Duration::from_millis(100))
        .fail_safe(Duration::from_secs(30))
        .build()
        .await
        .expect("build");
    let loaded = cache
        .get_or_load("p:1", || async {
            Ok::<_, LoadFailed>(Some(Product::new(1, "v1")))
        })
        .await;
    assert_eq!(loaded, Ok(Some(Product::new(1, "v1"))));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let served = cache
        .get_or_load("p:1", || async { Err::<Option<Product>, _>(LoadFailed) })
        .await;
    assert_eq!(
        served,
        Ok(Some(Product::new(1, "v1"))),
        "stale value instead of the error"
    );
    assert_eq!(cache.metrics().stale_served, 1);

    // An evicted key is gone for good: the fail-safe never resurrects it.
    cache.evict("p:1").await.expect("evict");
    let after_evict = cache
        .get_or_load("p:1", || async { Err::<Option<Product>, _>(LoadFailed) })
        .await;
    assert_eq!(after_evict, Err(LoadFailed));
}

#[tokio::test]
async fn refresh_ahead_reloads_a_hot_key_before_it_expires() {
    let cache = node_builder(&unique_name("cache-refresh"))
        .l1_ttl(Duration::from_millis(400))
        .l2_ttl(Duration::from_millis(400))
        .refresh_ahead(Duration::from_millis(300))
        .build()
        .await
        .expect("build");
    let loads = Loads::default();
    let load = |name: &'static str| {
        let loads = loads.clone();
        move || async move {
            loads.record();
            Ok::<_, LoadFailed>(Some(Product::new(1, name)))
        }
    };
    assert_eq!(
        cache.get_or_load("p:1", load("v1")).await,
        Ok(Some(Product::new(1, "v1")))
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Inside the refresh window: this read reloads (L2 has no more time left than L1).
    assert_eq!(
        cache.get_or_load("p:1", load("v2")).await,
        Ok(Some(Product::new(1, "v2")))
    );
    assert_eq!(loads.count(), 2);
    assert_eq!(cache.metrics().refreshes, 1);
    assert_eq!(
        cache.metrics().l1.misses,
        1,
        "the key never missed after the first load"
    );
}

#[tokio::test]
async fn undecodable_l2_values_are_reloaded_and_overwritten() {
    let prefix = unique_name("cache-decode");
    let cache = node(&prefix).await;
    let client = redis::Client::open(commerce_testkit::redis_url()).expect("url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:p:1"))
        .arg("ver")
        .arg("1")
        .arg("val")
        .arg("{\"not\":\"a product\"}")
        .query_async(&mut connection)
        .await
        .expect("hset");
    let loads = Loads::default();
    let load = || async {
        loads.record();
        Ok::<_, LoadFailed>(Some(Product::new(1, "good")))
    };
    assert_eq!(
        cache.get_or_load("p:1", load).await,
        Ok(Some(Product::new(1, "good")))
    );
    cache.evict_local("p:1").await;
    assert_eq!(
        cache.get_or_load("p:1", load).await,
        Ok(Some(Product::new(1, "good")))
    );
    assert_eq!(
        loads.count(),
        1,
        "the second read found the rewritten value in L2"
    );
}
