//! Single flight when the leader's load fails or the leader goes away (review C2): one waiter
//! takes over, the others keep waiting, and the value loaded is cached.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commerce_cache::backend::{L2Backend, MemoryBackend};
use commerce_cache::bus::{InvalidationBus, MemoryBus};
use commerce_cache::TwoLevelCache;
use common::{LoadFailed, Loads, Product};
use tokio::sync::{Barrier, Notify};

const WAITERS: usize = 100;
const LOAD_TIME: Duration = Duration::from_millis(100);

async fn in_process_node() -> TwoLevelCache<Product> {
    TwoLevelCache::builder("products")
        .backend(Arc::new(MemoryBackend::new()) as Arc<dyn L2Backend>)
        .bus(Arc::new(MemoryBus::new()) as Arc<dyn InvalidationBus>)
        .build()
        .await
        .expect("build")
}

/// After the test, the key is cached: another read does not load.
async fn assert_cached(cache: &TwoLevelCache<Product>, loads: &Loads) {
    let before = loads.count();
    let again = cache
        .get_or_load("p:1", || async {
            loads.record();
            Ok::<_, LoadFailed>(Some(Product::new(1, "reloaded")))
        })
        .await;
    assert_eq!(again, Ok(Some(Product::new(1, "one"))));
    assert_eq!(
        loads.count(),
        before,
        "the value loaded by a waiter was cached"
    );
    cache.evict_local("p:1").await;
    let from_l2 = cache
        .get_or_load("p:1", || async {
            loads.record();
            Ok::<_, LoadFailed>(Some(Product::new(1, "reloaded")))
        })
        .await;
    assert_eq!(from_l2, Ok(Some(Product::new(1, "one"))));
    assert_eq!(loads.count(), before, "and stored in L2 too");
}

// Paused clock: the leader's load fails only once every caller is waiting for it.
#[tokio::test(start_paused = true)]
async fn when_the_leaders_load_fails_one_waiter_loads_for_the_others() {
    let cache = in_process_node().await;
    let loads = Loads::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(WAITERS));
    let tasks: Vec<_> = (0..WAITERS)
        .map(|_| {
            let (cache, loads, calls, barrier) = (
                cache.clone(),
                loads.clone(),
                Arc::clone(&calls),
                Arc::clone(&barrier),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get_or_load("p:1", || async move {
                        loads.record();
                        let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                        tokio::time::sleep(LOAD_TIME).await;
                        if first {
                            Err(LoadFailed)
                        } else {
                            Ok(Some(Product::new(1, "one")))
                        }
                    })
                    .await
            })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        match task.await.expect("join") {
            Ok(value) => assert_eq!(value, Some(Product::new(1, "one"))),
            Err(LoadFailed) => failed += 1,
        }
    }
    assert_eq!(
        failed, 1,
        "only the caller whose own load failed sees the error"
    );
    assert_eq!(
        loads.count(),
        2,
        "the failed load and one takeover, not one load per waiter"
    );
    assert_cached(&cache, &loads).await;
}

#[tokio::test(start_paused = true)]
async fn when_the_leader_is_cancelled_one_waiter_loads_for_the_others() {
    let cache = in_process_node().await;
    let loads = Loads::default();
    let leader_loading = Arc::new(Notify::new());
    let load = {
        let loads = loads.clone();
        move || {
            let loads = loads.clone();
            move || async move {
                loads.record();
                tokio::time::sleep(LOAD_TIME).await;
                Ok::<_, LoadFailed>(Some(Product::new(1, "one")))
            }
        }
    };

    // The leader's caller gives up (a client disconnect, a request timeout) mid-load.
    let leader = {
        let (cache, loading, load) = (cache.clone(), Arc::clone(&leader_loading), load.clone());
        tokio::spawn(async move {
            let loader = load();
            tokio::time::timeout(
                LOAD_TIME / 2,
                cache.get_or_load("p:1", || async move {
                    loading.notify_one();
                    loader().await
                }),
            )
            .await
        })
    };
    leader_loading.notified().await;
    let waiters: Vec<_> = (0..WAITERS - 1)
        .map(|_| {
            let (cache, load) = (cache.clone(), load.clone());
            tokio::spawn(async move { cache.get_or_load("p:1", load()).await })
        })
        .collect();
    assert!(
        leader.await.expect("join").is_err(),
        "the leader was cancelled"
    );
    for waiter in waiters {
        assert_eq!(
            waiter.await.expect("join"),
            Ok(Some(Product::new(1, "one")))
        );
    }
    assert_eq!(
        loads.count(),
        2,
        "the cancelled load and one takeover, not one load per waiter"
    );
    assert_cached(&cache, &loads).await;
}

// A load that keeps failing: waiters take over one at a time, so the backend never sees
// more than one load of the key at once, and every caller still gets its own error.
#[tokio::test(start_paused = true)]
async fn a_load_that_keeps_failing_is_never_run_concurrently() {
    let cache = in_process_node().await;
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(10));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (cache, running, most, barrier) = (
                cache.clone(),
                Arc::clone(&running),
                Arc::clone(&most),
                Arc::clone(&barrier),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get_or_load("p:1", || async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(LOAD_TIME).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        Err::<Option<Product>, _>(LoadFailed)
                    })
                    .await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("join"), Err(LoadFailed));
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "loads ran one at a time");
    assert_eq!(cache.metrics().load_errors, 10);
}
