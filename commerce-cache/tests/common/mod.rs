//! Shared by the integration tests: nodes on the shared Redis, test values, load counters.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commerce_cache::{CacheBuilder, TwoLevelCache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: i64,
    pub name: String,
}

impl Product {
    pub fn new(id: i64, name: &str) -> Self {
        Self {
            id,
            name: name.to_owned(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct LoadFailed;

impl std::fmt::Display for LoadFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("load failed")
    }
}

impl std::error::Error for LoadFailed {}

/// A builder for one node of the cache `prefix` on the shared Redis.
pub fn node_builder(prefix: &str) -> CacheBuilder<Product> {
    let client = redis::Client::open(commerce_testkit::redis_url()).expect("REDIS_URL");
    TwoLevelCache::<Product>::builder("products")
        .key_prefix(format!("{prefix}:"))
        .redis(client)
        .l2_ttl_jitter(Duration::ZERO)
}

pub async fn node(prefix: &str) -> TwoLevelCache<Product> {
    node_builder(prefix).build().await.expect("build cache")
}

/// Counts loader calls.
#[derive(Clone, Default)]
pub struct Loads(Arc<AtomicUsize>);

impl Loads {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    pub fn record(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls a plain check until it holds or `within` passed; returns whether it held.
pub async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    commerce_testkit::eventually(within, || std::future::ready(condition())).await
}
