//! The cache's background work has an owner and a shutdown path: `shutdown()` waits for the
//! invalidation listener to end, and dropping the last clone stops it too.

mod common;

use std::time::Duration;

use commerce_cache::TwoLevelCache;
use commerce_testkit::{unique_name, within};
use common::{node, LoadFailed, Product};

/// Subscribers of the cache's invalidation channel on the shared Redis.
async fn subscribers(cache_prefix: &str) -> i64 {
    let client = redis::Client::open(commerce_testkit::redis_url()).expect("url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let (_, count): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("{cache_prefix}:__invalidations"))
        .query_async(&mut connection)
        .await
        .expect("pubsub numsub");
    count
}

async fn until_subscribers(prefix: &str, expected: i64) -> bool {
    commerce_testkit::eventually(Duration::from_secs(2), || async {
        subscribers(prefix).await == expected
    })
    .await
}

async fn read(cache: &TwoLevelCache<Product>) -> Option<Product> {
    cache
        .get_or_load("p:1", || async {
            Ok::<_, LoadFailed>(Some(Product::new(1, "v")))
        })
        .await
        .expect("read")
}

#[tokio::test]
async fn shutdown_ends_the_listener_and_the_cache_keeps_serving() {
    let prefix = unique_name("cache-shutdown");
    let cache = node(&prefix).await;
    assert!(
        until_subscribers(&prefix, 1).await,
        "the listener subscribed"
    );

    within(Duration::from_secs(2), cache.shutdown()).await;
    assert!(
        until_subscribers(&prefix, 0).await,
        "the listener unsubscribed"
    );
    // A second call (another clone's owner shutting down too) returns at once.
    within(Duration::from_secs(1), cache.clone().shutdown()).await;

    assert_eq!(read(&cache).await, Some(Product::new(1, "v")));
    cache.put("p:1", Product::new(1, "w")).await.expect("put");
    assert_eq!(read(&cache).await, Some(Product::new(1, "w")));
}

#[tokio::test]
async fn dropping_the_last_clone_ends_the_listener() {
    let prefix = unique_name("cache-drop");
    let cache = node(&prefix).await;
    let clone = cache.clone();
    assert!(until_subscribers(&prefix, 1).await);
    drop(cache);
    assert_eq!(
        subscribers(&prefix).await,
        1,
        "a clone still lives: the listener keeps running"
    );
    drop(clone);
    assert!(
        until_subscribers(&prefix, 0).await,
        "the listener ended with the last clone"
    );
}
