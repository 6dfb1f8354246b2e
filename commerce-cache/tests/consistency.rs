//! Two cache instances on the real Redis acting as two nodes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use commerce_cache::backend::{FillOutcome, L2Backend, L2Entry, RedisBackend, Stored};
use commerce_testkit::unique_name;
use common::{eventually, node, node_builder, LoadFailed, Loads, Product};
use tokio::sync::{oneshot, Notify};

async fn read(
    cache: &commerce_cache::TwoLevelCache<Product>,
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
        .expect("loader does not fail")
}

#[tokio::test]
async fn evict_on_one_node_is_seen_by_the_other_within_100ms() {
    let prefix = unique_name("cache-evict");
    let (a, b) = (node(&prefix).await, node(&prefix).await);
    let loads = Loads::default();
    read(&a, "p:1", Product::new(1, "v1"), &loads).await;
    read(&b, "p:1", Product::new(1, "v1"), &loads).await;
    assert_eq!(loads.count(), 1, "b filled its L1 from L2");
    assert!(b.contains_local("p:1"));

    a.evict("p:1").await.expect("evict");
    assert!(
        eventually(Duration::from_millis(100), || !b.contains_local("p:1")).await,
        "b still holds the evicted key after 100 ms"
    );
    let after = read(&b, "p:1", Product::new(1, "v2"), &loads).await;
    assert_eq!(
        after,
        Some(Product::new(1, "v2")),
        "b reloads after the evict"
    );
    assert_eq!(b.metrics().invalidations_received, 1);
}

#[tokio::test]
async fn put_on_one_node_is_read_by_the_other() {
    let prefix = unique_name("cache-put");
    let (a, b) = (node(&prefix).await, node(&prefix).await);
    let loads = Loads::default();

    // b has no copy: it reads a's value from L2 without loading.
    a.put("p:1", Product::new(1, "v1")).await.expect("put");
    assert_eq!(
        read(&b, "p:1", Product::new(1, "loaded"), &loads).await,
        Some(Product::new(1, "v1"))
    );
    assert_eq!(loads.count(), 0);

    // b has a copy: a's next put replaces it there within 100 ms.
    a.put("p:1", Product::new(1, "v2")).await.expect("put");
    let mut seen = None;
    for _ in 0..20 {
        seen = read(&b, "p:1", Product::new(1, "loaded"), &loads).await;
        if seen == Some(Product::new(1, "v2")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen, Some(Product::new(1, "v2")));
    assert_eq!(loads.count(), 0);
    // a keeps its own write: its own notice carries the version it already holds.
    assert!(a.contains_local("p:1"));
}

#[tokio::test]
async fn reads_never_publish() {
    let prefix = unique_name("cache-quiet");
    let (a, b) = (node(&prefix).await, node(&prefix).await);
    let loads = Loads::default();
    for id in 0..20 {
        read(&a, &format!("p:{id}"), Product::new(id, "v"), &loads).await;
        read(&b, &format!("p:{id}"), Product::new(id, "v"), &loads).await;
    }
    a.put("p:x", Product::new(0, "x")).await.expect("put");
    assert!(
        eventually(Duration::from_secs(1), || b
            .metrics()
            .invalidations_received
            == 1)
        .await
    );
    assert_eq!(
        a.metrics().invalidations_published,
        1,
        "only the put published"
    );
    assert_eq!(b.metrics().invalidations_published, 0);
}

#[tokio::test]
async fn a_load_that_raced_with_a_write_does_not_put_the_old_value_back() {
    let prefix = unique_name("cache-race-load");
    let (a, b) = (node(&prefix).await, node(&prefix).await);
    let (release, released) = oneshot::channel::<()>();
    let started = Arc::new(Notify::new());

    // b misses, reads L2 (empty) and loads the old row slowly.
    let slow_read = {
        let b = b.clone();
        let started = Arc::clone(&started);
        tokio::spawn(async move {
            b.get_or_load("p:1", || async move {
                started.notify_one();
                let _ = released.await;
                Ok::<_, LoadFailed>(Some(Product::new(1, "old")))
            })
            .await
        })
    };
    started.notified().await;
    // Meanwhile the row is updated and a evicts, as the write policy says.
    a.evict("p:1").await.expect("evict");
    release.send(()).expect("loader waits");
    let old = slow_read.await.expect("join").expect("load");
    assert_eq!(
        old,
        Some(Product::new(1, "old")),
        "the racing caller gets what it loaded"
    );

    assert_eq!(
        b.metrics().l2_fill_conflicts,
        1,
        "the fill lost to the evict"
    );
    assert!(!b.contains_local("p:1"), "the old value is not in b's L1");
    let loads = Loads::default();
    let fresh = read(&a, "p:1", Product::new(1, "new"), &loads).await;
    assert_eq!(fresh, Some(Product::new(1, "new")), "nor in L2");
    assert_eq!(loads.count(), 1);
}

/// A Redis backend whose next read waits for a signal after Redis answered.
struct GatedReads {
    inner: RedisBackend,
    answered: Notify,
    gate: Notify,
}

#[async_trait]
impl L2Backend for GatedReads {
    async fn read(&self, key: &str) -> commerce_cache::Result<L2Entry> {
        let entry = self.inner.read(key).await?;
        self.answered.notify_one();
        self.gate.notified().await;
        Ok(entry)
    }

    async fn fill(
        &self,
        key: &str,
        expected: u64,
        stored: &Stored,
        ttl: Duration,
    ) -> commerce_cache::Result<FillOutcome> {
        self.inner.fill(key, expected, stored, ttl).await
    }

    async fn write(
        &self,
        key: &str,
        stored: &Stored,
        ttl: Duration,
    ) -> commerce_cache::Result<u64> {
        self.inner.write(key, stored, ttl).await
    }

    async fn delete(&self, key: &str, ttl: Duration) -> commerce_cache::Result<u64> {
        self.inner.delete(key, ttl).await
    }
}

#[tokio::test]
async fn an_l2_value_read_before_an_evict_is_not_put_into_l1_after_it() {
    let prefix = unique_name("cache-race-read");
    let a = node(&prefix).await;
    let client = redis::Client::open(commerce_testkit::redis_url()).expect("url");
    let gated = Arc::new(GatedReads {
        inner: RedisBackend::new(client, Duration::from_secs(1)).expect("backend"),
        answered: Notify::new(),
        gate: Notify::new(),
    });
    let b = node_builder(&prefix)
        .backend(Arc::clone(&gated) as Arc<dyn L2Backend>)
        .l2_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("build");
    a.put("p:1", Product::new(1, "old")).await.expect("put");
    assert!(
        eventually(Duration::from_secs(1), || b
            .metrics()
            .invalidations_received
            == 1)
        .await
    );

    let slow_read = {
        let b = b.clone();
        tokio::spawn(async move {
            b.get_or_load("p:1", || async { Err::<Option<Product>, _>(LoadFailed) })
                .await
        })
    };
    gated.answered.notified().await; // b holds "old" from L2, not yet in its L1
    a.evict("p:1").await.expect("evict");
    assert!(
        eventually(Duration::from_secs(1), || b
            .metrics()
            .invalidations_received
            == 2)
        .await
    );
    gated.gate.notify_one();
    let old = slow_read.await.expect("join").expect("read");
    assert_eq!(
        old,
        Some(Product::new(1, "old")),
        "the read overlapped the evict"
    );
    assert!(
        !b.contains_local("p:1"),
        "but its value did not reach L1 after the evict"
    );
}

#[tokio::test]
async fn an_l1_copy_never_outlives_the_l2_entry_it_came_from() {
    let prefix = unique_name("cache-l1-ttl");
    let a = node(&prefix).await;
    let b = node_builder(&prefix)
        .l1_ttl(Duration::from_secs(60))
        .build()
        .await
        .expect("build");
    a.put_with_ttl("p:1", Product::new(1, "short"), Duration::from_millis(300))
        .await
        .expect("put");
    let loads = Loads::default();
    assert_eq!(
        read(&b, "p:1", Product::new(1, "loaded"), &loads).await,
        Some(Product::new(1, "short"))
    );
    assert!(b.contains_local("p:1"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !b.contains_local("p:1"),
        "L1 copy expired with its L2 entry, not after 60 s"
    );
    assert_eq!(
        read(&b, "p:1", Product::new(1, "loaded"), &loads).await,
        Some(Product::new(1, "loaded"))
    );
    assert_eq!(loads.count(), 1);
}
