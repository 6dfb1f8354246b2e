//! The in-process L2 and bus: an embedded single node, or nodes sharing one process.

mod common;

use std::sync::Arc;
use std::time::Duration;

use commerce_cache::backend::{L2Backend, MemoryBackend};
use commerce_cache::bus::{InvalidationBus, MemoryBus};
use commerce_cache::TwoLevelCache;
use common::{eventually, LoadFailed, Loads, Product};

async fn node(backend: &Arc<MemoryBackend>, bus: &Arc<MemoryBus>) -> TwoLevelCache<Product> {
    TwoLevelCache::builder("products")
        .backend(Arc::clone(backend) as Arc<dyn L2Backend>)
        .bus(Arc::clone(bus) as Arc<dyn InvalidationBus>)
        .build()
        .await
        .expect("build")
}

#[tokio::test]
async fn nodes_sharing_the_in_process_backend_stay_consistent() {
    let (backend, bus) = (Arc::new(MemoryBackend::new()), Arc::new(MemoryBus::new()));
    let (a, b) = (node(&backend, &bus).await, node(&backend, &bus).await);
    let loads = Loads::default();
    let load = |name: &'static str| {
        let loads = loads.clone();
        move || async move {
            loads.record();
            Ok::<_, LoadFailed>(Some(Product::new(1, name)))
        }
    };
    assert_eq!(
        a.get_or_load("p:1", load("v1")).await,
        Ok(Some(Product::new(1, "v1")))
    );
    assert_eq!(
        b.get_or_load("p:1", load("x")).await,
        Ok(Some(Product::new(1, "v1")))
    );
    assert_eq!(loads.count(), 1);

    a.put("p:1", Product::new(1, "v2")).await.expect("put");
    assert!(eventually(Duration::from_millis(100), || !b.contains_local("p:1")).await);
    assert_eq!(
        b.get_or_load("p:1", load("x")).await,
        Ok(Some(Product::new(1, "v2")))
    );

    b.evict("p:1").await.expect("evict");
    assert!(eventually(Duration::from_millis(100), || !a.contains_local("p:1")).await);
    assert_eq!(
        a.get_or_load("p:1", load("v3")).await,
        Ok(Some(Product::new(1, "v3")))
    );
    assert_eq!(loads.count(), 2);
}

#[tokio::test]
async fn a_disabled_l1_reads_every_time_from_l2() {
    let cache = TwoLevelCache::<Product>::builder("products")
        .l1_capacity(0)
        .build()
        .await
        .expect("build");
    for _ in 0..3 {
        let read = cache
            .get_or_load("p:1", || async {
                Ok::<_, LoadFailed>(Some(Product::new(1, "v")))
            })
            .await;
        assert_eq!(read, Ok(Some(Product::new(1, "v"))));
    }
    let metrics = cache.metrics();
    assert_eq!((metrics.loads, metrics.l2.hits, metrics.l1.hits), (1, 2, 0));
}

#[tokio::test]
async fn zero_ttls_are_rejected() {
    let built = TwoLevelCache::<Product>::builder("products")
        .negative_ttl(Duration::ZERO)
        .build()
        .await;
    assert!(matches!(built, Err(commerce_cache::Error::Config(_))));
}
