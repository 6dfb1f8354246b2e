//! Helpers and behaviour tests shared by the Redis and in-process lock tests.
#![allow(dead_code)] // each test crate uses a different subset

pub(crate) mod behaviour;

use std::time::Duration;

use commerce_lock::{LockOptions, RedisLock};
pub(crate) use commerce_testkit::within;
use commerce_testkit::{redis_url, unique_name};

/// A lock client on the shared Redis, isolated under a unique namespace.
pub(crate) async fn redis_lock(namespace: &str) -> RedisLock {
    RedisLock::builder(redis_url())
        .namespace(namespace)
        .connect()
        .await
        .expect("connect to the shared Redis")
}

/// A fresh namespace for one test.
pub(crate) fn namespace() -> String {
    unique_name("lock-test")
}

/// A plain Redis connection for inspecting keys and keeping counters.
pub(crate) async fn plain_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("REDIS_URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the shared Redis")
}

/// Options with millisecond wait and lease.
pub(crate) fn options(wait_ms: u64, lease_ms: u64) -> LockOptions {
    LockOptions::new(
        Duration::from_millis(wait_ms),
        Duration::from_millis(lease_ms),
    )
}
