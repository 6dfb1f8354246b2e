//! Redis going away mid-test and coming back, on a private `redis-server`.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commerce_cache::TwoLevelCache;
use commerce_testkit::unique_name;
use commerce_testkit::PrivateRedis;
use common::{LoadFailed, Loads, Product};

/// Collects formatted log lines so the test can count warnings.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }

    fn text(&self) -> String {
        let bytes = self.0.lock().expect("logs").clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn private_node(redis_url: &str) -> TwoLevelCache<Product> {
    TwoLevelCache::<Product>::builder("products")
        .key_prefix(format!("{}:", unique_name("cache-down")))
        .redis(redis::Client::open(redis_url).expect("url"))
        .l2_timeout(Duration::from_millis(100))
        .l2_retry_after(Duration::from_millis(100))
        .build()
        .await
        .expect("build")
}

async fn read(
    cache: &TwoLevelCache<Product>,
    key: &str,
    loads: &Loads,
) -> Result<Option<Product>, LoadFailed> {
    cache
        .get_or_load(key, || async {
            loads.record();
            Ok(Some(Product::new(1, key)))
        })
        .await
}

// Single-threaded runtime: the thread-local log subscriber sees the listener task too. This
// must stay the only test in this binary: tracing caches per call site whether anyone
// listens, and a test on another thread hitting the same call sites while this one installs
// its subscriber can leave them switched off (no warning captured at all).
#[tokio::test]
async fn reads_survive_redis_going_down_and_l2_is_used_again_when_it_is_back() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _log_guard = tracing::subscriber::set_default(subscriber);

    let mut redis = PrivateRedis::start().await;
    let cache = private_node(&redis.url()).await;
    let loads = Loads::default();
    read(&cache, "p:1", &loads).await.expect("read");
    cache.evict_local("p:1").await;
    read(&cache, "p:1", &loads).await.expect("read");
    assert_eq!(
        (loads.count(), cache.metrics().l2.hits),
        (1, 1),
        "L2 works before the outage"
    );

    redis.stop();
    for round in 0..50 {
        read(&cache, "p:1", &loads).await.expect("L1 keeps serving");
        read(&cache, &format!("p:down:{round}"), &loads)
            .await
            .expect("the loader keeps serving");
    }
    assert!(
        cache.put("p:w", Product::new(2, "w")).await.is_err(),
        "writes report the outage"
    );
    assert!(cache.evict("p:1").await.is_err());
    let down = cache.metrics();
    assert!(!down.l2_healthy);
    assert!(down.l2_errors >= 1);
    assert!(
        down.l2_skipped >= 1,
        "most calls skip L2 instead of timing out"
    );
    assert_eq!(
        logs.count("cache L2 unavailable"),
        1,
        "one warning per outage; logged:\n{}",
        logs.text()
    );

    redis.restart().await;
    let hits_before = cache.metrics().l2.hits;
    let mut back = false;
    for round in 0..200 {
        let key = format!("p:up:{round}");
        read(&cache, &key, &loads).await.expect("read");
        cache.evict_local(&key).await;
        read(&cache, &key, &loads).await.expect("read");
        if cache.metrics().l2.hits > hits_before {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(back, "L2 is used again after Redis restarted");
    let up = cache.metrics();
    assert!(up.l2_healthy);
    assert_eq!(logs.count("cache L2 unavailable"), 1);
    assert_eq!(logs.count("cache L2 is back"), 1);
    // The subscription reconnects too, and drops L1 since notices may have been missed.
    assert!(common::eventually(Duration::from_secs(5), || cache.metrics().resyncs >= 1).await);
}
