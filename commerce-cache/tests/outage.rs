//! A Redis outage of several seconds, on a private `redis-server`, with default settings:
//! the invalidation subscription and the pooled connections must come back by themselves.

mod common;

use std::time::Duration;

use commerce_cache::bus::{BusEvent, InvalidationBus, RedisBus};
use commerce_cache::TwoLevelCache;
use commerce_testkit::{unique_name, within, PrivateRedis};
use common::{eventually, LoadFailed, Loads, Product};

/// One node with every setting at its default (`l2_retry_after` 1 s above all).
async fn default_node(redis: &PrivateRedis, prefix: &str) -> TwoLevelCache<Product> {
    TwoLevelCache::<Product>::builder("products")
        .key_prefix(format!("{prefix}:"))
        .redis(redis::Client::open(redis.url()).expect("url"))
        .build()
        .await
        .expect("build")
}

async fn read(
    cache: &TwoLevelCache<Product>,
    key: &str,
    value: Product,
    loads: &Loads,
) -> Option<Product> {
    cache
        .get_or_load(key, || async {
            loads.record();
            Ok::<_, LoadFailed>(Some(value))
        })
        .await
        .expect("the loader does not fail")
}

// Review C1: the listener's repair tick (1 s) cancelled the subscription's reconnect backoff
// sleep (1.6 s, then 2 s) every time, so after an outage of about 2 s or more it never
// reconnected: no resync, and no invalidation ever again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_the_other_node_again_after_a_five_second_outage() {
    let mut redis = PrivateRedis::start().await;
    let prefix = unique_name("cache-outage");
    let (a, b) = (
        default_node(&redis, &prefix).await,
        default_node(&redis, &prefix).await,
    );
    let loads = Loads::default();
    read(&b, "p:1", Product::new(1, "v1"), &loads).await;
    assert!(b.contains_local("p:1"));

    redis.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    redis.restart().await;

    // Backoff is at most 2 s, so the subscription is back well within 6 s.
    assert!(
        eventually(Duration::from_secs(6), || b.metrics().resyncs >= 1).await,
        "b never resubscribed after the outage (resyncs = {})",
        b.metrics().resyncs
    );
    assert!(
        eventually(Duration::from_secs(6), || a.metrics().resyncs >= 1).await,
        "a never resubscribed after the outage"
    );
    assert!(!b.contains_local("p:1"), "the resync dropped b's L1");

    // b caches v1 again (Redis restarted empty), then a writes v2.
    read(&b, "p:1", Product::new(1, "v1"), &loads).await;
    assert!(b.contains_local("p:1"));
    a.put("p:1", Product::new(1, "v2"))
        .await
        .expect("a's first write after the outage succeeds");
    assert!(
        eventually(Duration::from_secs(1), || !b.contains_local("p:1")).await,
        "a's write did not reach b's L1 within a second"
    );
    assert_eq!(
        read(&b, "p:1", Product::new(1, "loaded"), &loads).await,
        Some(Product::new(1, "v2"))
    );
}

// The same defect at the bus level: a subscription polled the way the listener polls it
// (its `next()` dropped every 500 ms) must still reconnect once Redis is back.
#[tokio::test]
async fn a_subscription_whose_next_is_cancelled_repeatedly_still_reconnects() {
    let mut redis = PrivateRedis::start().await;
    redis.stop();
    let client = redis::Client::open(redis.url()).expect("url");
    let bus = RedisBus::new(client, Duration::from_millis(200)).expect("bus");
    let mut subscription = bus.subscribe(&unique_name("cache-bus")).await;

    let started = tokio::time::Instant::now();
    let mut restarted = false;
    let event = loop {
        if !restarted && started.elapsed() >= Duration::from_secs(3) {
            redis.restart().await;
            restarted = true;
        }
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "no resync 9 s after Redis came back"
        );
        tokio::select! {
            event = subscription.next() => break event,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    };
    assert!(restarted, "nothing can arrive while Redis is down");
    assert_eq!(event, Some(BusEvent::Resync));
}

// After an outage the pooled connection is dead (broken pipe) or its last reconnect failed;
// the first command must replace it and run again, not fail and open the circuit breaker.
#[tokio::test]
async fn the_first_write_after_redis_came_back_succeeds_and_keeps_l2_healthy() {
    let mut redis = PrivateRedis::start().await;
    let prefix = unique_name("cache-pipe");
    let cache = default_node(&redis, &prefix).await;
    let loads = Loads::default();
    // Both pooled connections (L2 and publisher) are open before the outage.
    read(&cache, "p:1", Product::new(1, "v1"), &loads).await;
    cache.put("p:2", Product::new(2, "v1")).await.expect("put");

    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().await;
    // Redis has been back for a while when the next write comes.
    tokio::time::sleep(Duration::from_secs(2)).await;

    within(
        Duration::from_secs(5),
        cache.put("p:1", Product::new(1, "v2")),
    )
    .await
    .expect("the first write after the outage");
    within(Duration::from_secs(5), cache.evict("p:2"))
        .await
        .expect("the first evict after the outage");
    let metrics = cache.metrics();
    assert!(
        metrics.l2_healthy,
        "a dead pooled connection is not an outage"
    );
    assert_eq!(metrics.l2_errors, 0);
    cache.evict_local("p:1").await;
    assert_eq!(
        read(&cache, "p:1", Product::new(1, "loaded"), &loads).await,
        Some(Product::new(1, "v2")),
        "the write reached L2"
    );
    assert_eq!(loads.count(), 1);
}

// A node that had not used L2 during the outage and one whose reconnect attempts failed
// while Redis was down behave the same: reads after the outage use L2 at once.
#[tokio::test]
async fn a_read_that_failed_during_the_outage_does_not_make_the_next_one_fail() {
    let mut redis = PrivateRedis::start().await;
    let prefix = unique_name("cache-pipe-read");
    let cache = TwoLevelCache::<Product>::builder("products")
        .key_prefix(format!("{prefix}:"))
        .redis(redis::Client::open(redis.url()).expect("url"))
        // The probe after the outage is allowed at once, so only the connection is tested.
        .l2_retry_after(Duration::from_millis(1))
        .build()
        .await
        .expect("build");
    let loads = Loads::default();
    read(&cache, "p:1", Product::new(1, "v1"), &loads).await;

    redis.stop();
    cache.evict_local("p:1").await;
    read(&cache, "p:1", Product::new(1, "down"), &loads).await;
    assert!(!cache.metrics().l2_healthy, "the outage was noticed");
    redis.restart().await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let errors = cache.metrics().l2_errors;
    cache
        .put("p:1", Product::new(1, "v2"))
        .await
        .expect("the first write after the outage");
    assert_eq!(cache.metrics().l2_errors, errors);
    assert!(cache.metrics().l2_healthy);
}

// Moved from `resilience.rs`, whose log-capturing test must run alone in its binary.
#[tokio::test]
async fn a_cache_built_while_redis_is_down_serves_from_the_loader() {
    let mut redis = PrivateRedis::start().await;
    redis.stop();
    let cache = default_node(&redis, &unique_name("cache-built-down")).await;
    let loads = Loads::default();
    for _ in 0..3 {
        assert_eq!(
            read(&cache, "p:1", Product::new(1, "p:1"), &loads).await,
            Some(Product::new(1, "p:1"))
        );
    }
    assert_eq!(loads.count(), 1, "L1 still caches");
    cache.shutdown().await;
}
