//! The attribute macros on an in-process cache (single node, no Redis needed).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use commerce_cache::backend::{FillOutcome, L2Backend, L2Entry, MemoryBackend, Stored};
use commerce_cache::{cache_evict, cache_put, cached, TwoLevelCache};
use common::{LoadFailed, Loads, Product};

#[derive(Debug, PartialEq, Eq)]
enum CatalogError {
    Missing,
    Load(LoadFailed),
}

impl From<LoadFailed> for CatalogError {
    fn from(error: LoadFailed) -> Self {
        Self::Load(error)
    }
}

struct PageQuery {
    user_id: u64,
    page: u32,
}

struct Catalog {
    products: TwoLevelCache<Product>,
    pages: TwoLevelCache<Vec<i64>>,
    carts: TwoLevelCache<String>,
    loads: Loads,
}

impl Catalog {
    async fn new() -> Self {
        Self {
            products: TwoLevelCache::builder("products")
                .build()
                .await
                .expect("build"),
            pages: TwoLevelCache::builder("pages")
                .build()
                .await
                .expect("build"),
            carts: TwoLevelCache::builder("carts")
                .build()
                .await
                .expect("build"),
            loads: Loads::default(),
        }
    }

    #[cached(cache = self.products, key = "product:{id}", ttl = "60s")]
    async fn product(&self, id: i64) -> Result<Option<Product>, LoadFailed> {
        self.loads.record();
        if id < 0 {
            return Err(LoadFailed);
        }
        Ok((id != 404).then(|| Product::new(id, "stored")))
    }

    /// `Result<T, E>` (no `Option`), `?` converting errors, a composite key over fields.
    #[cached(cache = self.pages, key = "orders:{q.user_id}:{q.page}")]
    async fn order_page(&self, q: &PageQuery) -> Result<Vec<i64>, CatalogError> {
        self.loads.record();
        if q.page == 0 {
            Err(LoadFailed)?;
        }
        Ok(vec![
            i64::from(q.page);
            usize::try_from(q.user_id).unwrap_or(0)
        ])
    }

    /// A constant key: one value for the whole catalog (a key need not have a placeholder).
    #[cached(cache = self.pages, key = "featured")]
    async fn featured(&self) -> Result<Vec<i64>, LoadFailed> {
        self.loads.record();
        Ok(vec![1, 2, 3])
    }

    /// Two free-text placeholders: the values may contain the separator themselves.
    #[cached(cache = self.carts, key = "cart:{user}:{name}")]
    async fn cart(&self, user: &str, name: &str) -> Result<String, LoadFailed> {
        self.loads.record();
        Ok(format!("{user}/{name}"))
    }

    #[cache_put(cache = self.products, key = "product:{product.id}")]
    async fn save(&self, product: Product) -> Result<Product, CatalogError> {
        if product.name.is_empty() {
            return Err(CatalogError::Missing);
        }
        Ok(product)
    }

    #[cache_evict(cache = self.products, key = "product:{id}")]
    async fn delete(&self, id: i64) -> Result<(), CatalogError> {
        if id == 0 {
            return Err(CatalogError::Missing);
        }
        Ok(())
    }
}

#[tokio::test]
async fn cached_reads_through_once_and_caches_not_found() {
    let catalog = Catalog::new().await;
    assert_eq!(
        catalog.product(1).await,
        Ok(Some(Product::new(1, "stored")))
    );
    assert_eq!(
        catalog.product(1).await,
        Ok(Some(Product::new(1, "stored")))
    );
    assert_eq!(catalog.product(404).await, Ok(None));
    assert_eq!(catalog.product(404).await, Ok(None));
    assert_eq!(catalog.loads.count(), 2);
    assert!(catalog.products.contains_local("product:1"));
}

#[tokio::test]
async fn cached_errors_are_returned_and_not_cached() {
    let catalog = Catalog::new().await;
    assert_eq!(catalog.product(-1).await, Err(LoadFailed));
    assert_eq!(catalog.product(-1).await, Err(LoadFailed));
    assert_eq!(catalog.loads.count(), 2);
}

#[tokio::test]
async fn composite_keys_tell_calls_apart() {
    let catalog = Catalog::new().await;
    let first = PageQuery {
        user_id: 2,
        page: 1,
    };
    let second = PageQuery {
        user_id: 2,
        page: 3,
    };
    assert_eq!(catalog.order_page(&first).await, Ok(vec![1, 1]));
    assert_eq!(catalog.order_page(&second).await, Ok(vec![3, 3]));
    assert_eq!(catalog.order_page(&first).await, Ok(vec![1, 1]));
    assert_eq!(catalog.loads.count(), 2);
    assert!(catalog.pages.contains_local("orders:2:3"));
    let bad = PageQuery {
        user_id: 2,
        page: 0,
    };
    assert_eq!(
        catalog.order_page(&bad).await,
        Err(CatalogError::Load(LoadFailed))
    );
}

#[tokio::test]
async fn put_writes_through_and_evict_removes() {
    let catalog = Catalog::new().await;
    let saved = catalog.save(Product::new(7, "renamed")).await;
    assert_eq!(saved, Ok(Product::new(7, "renamed")));
    assert_eq!(
        catalog.product(7).await,
        Ok(Some(Product::new(7, "renamed")))
    );
    assert_eq!(catalog.loads.count(), 0, "the put filled the cache");

    assert_eq!(
        catalog.save(Product::new(8, "")).await,
        Err(CatalogError::Missing)
    );
    assert!(
        !catalog.products.contains_local("product:8"),
        "failed calls write nothing"
    );

    assert_eq!(catalog.delete(7).await, Ok(()));
    assert!(!catalog.products.contains_local("product:7"));
    assert_eq!(
        catalog.product(7).await,
        Ok(Some(Product::new(7, "stored")))
    );
    assert_eq!(catalog.loads.count(), 1, "reloaded after the evict");

    assert_eq!(catalog.delete(0).await, Err(CatalogError::Missing));
}

#[tokio::test]
async fn a_constant_key_caches_one_value() {
    let catalog = Catalog::new().await;
    assert_eq!(catalog.featured().await, Ok(vec![1, 2, 3]));
    assert_eq!(catalog.featured().await, Ok(vec![1, 2, 3]));
    assert_eq!(catalog.loads.count(), 1);
    assert!(catalog.pages.contains_local("featured"));
}

/// `"{user}:{name}"` must not give ("alice:x", "y") and ("alice", "x:y") one key: that would
/// hand one user's cart to another.
#[tokio::test]
async fn composite_keys_escape_the_separator_in_values() {
    let catalog = Catalog::new().await;
    let first = catalog.cart("alice:x", "y").await;
    let second = catalog.cart("alice", "x:y").await;
    assert_eq!(first, Ok("alice:x/y".to_owned()));
    assert_eq!(
        second,
        Ok("alice/x:y".to_owned()),
        "served another call's value"
    );
    assert_eq!(catalog.loads.count(), 2);
    // The rule: `\` becomes `\\` and `:` becomes `\:` inside each placeholder's value.
    assert!(catalog.carts.contains_local(r"cart:alice\:x:y"));
    assert!(catalog.carts.contains_local(r"cart:alice:x\:y"));
    assert_eq!(
        catalog.cart(r"a\", "b").await,
        Ok(r"a\/b".to_owned()),
        "a backslash is escaped too"
    );
    assert!(catalog.carts.contains_local(r"cart:a\\:b"));
}

fn assert_send<T: Send>(value: T) -> T {
    value
}

/// Handlers of a multi-threaded server (axum) need `Send` futures: the generated code must not
/// hold anything across an await that would break that.
#[tokio::test]
async fn generated_futures_are_send() {
    let catalog = Catalog::new().await;
    let query = PageQuery {
        user_id: 1,
        page: 1,
    };
    assert_eq!(
        assert_send(catalog.product(3)).await,
        Ok(Some(Product::new(3, "stored")))
    );
    assert_eq!(assert_send(catalog.order_page(&query)).await, Ok(vec![1]));
    assert!(assert_send(catalog.save(Product::new(3, "x")))
        .await
        .is_ok());
    assert!(assert_send(catalog.delete(3)).await.is_ok());
}

/// An L2 whose writes and deletes take `delay`: long enough for a caller's timeout to fire
/// while the macro's cache work is under way.
struct SlowWrites {
    inner: MemoryBackend,
    delay: Duration,
}

#[async_trait]
impl L2Backend for SlowWrites {
    async fn read(&self, key: &str) -> commerce_cache::Result<L2Entry> {
        self.inner.read(key).await
    }

    async fn fill(
        &self,
        key: &str,
        expected_version: u64,
        stored: &Stored,
        ttl: Duration,
    ) -> commerce_cache::Result<FillOutcome> {
        self.inner.fill(key, expected_version, stored, ttl).await
    }

    async fn write(
        &self,
        key: &str,
        stored: &Stored,
        ttl: Duration,
    ) -> commerce_cache::Result<u64> {
        tokio::time::sleep(self.delay).await;
        self.inner.write(key, stored, ttl).await
    }

    async fn delete(&self, key: &str, tombstone_ttl: Duration) -> commerce_cache::Result<u64> {
        tokio::time::sleep(self.delay).await;
        self.inner.delete(key, tombstone_ttl).await
    }
}

const SLOW_L2: Duration = Duration::from_millis(300);
/// Shorter than `SLOW_L2`: the caller gives up after the body committed, mid cache write.
const CALLER_PATIENCE: Duration = Duration::from_millis(50);

/// A catalog whose "database" is a map, on a cache with a slow L2.
struct Shop {
    products: TwoLevelCache<Product>,
    db: Mutex<HashMap<i64, String>>,
}

impl Shop {
    async fn new() -> Self {
        let l2 = SlowWrites {
            inner: MemoryBackend::new(),
            delay: SLOW_L2,
        };
        Self {
            products: TwoLevelCache::builder("shop")
                .backend(Arc::new(l2))
                // Far above the slow L2, so the cache waits for it instead of giving up.
                .l2_timeout(Duration::from_secs(5))
                // Far above the test's patience: a stale L1 copy outlives the test.
                .l1_ttl(Duration::from_secs(600))
                .build()
                .await
                .expect("build"),
            db: Mutex::new(HashMap::new()),
        }
    }

    fn db(&self) -> std::sync::MutexGuard<'_, HashMap<i64, String>> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cached(cache = self.products, key = "product:{id}")]
    async fn product(&self, id: i64) -> Result<Option<Product>, LoadFailed> {
        Ok(self.db().get(&id).map(|name| Product::new(id, name)))
    }

    /// The commit (the map insert) is the body's last step, as the macro's docs ask.
    #[cache_evict(cache = self.products, key = "product:{id}")]
    async fn rename(&self, id: i64, name: &str) -> Result<(), LoadFailed> {
        self.db().insert(id, name.to_owned());
        Ok(())
    }

    #[cache_put(cache = self.products, key = "product:{product.id}")]
    async fn save(&self, product: Product) -> Result<Product, LoadFailed> {
        self.db().insert(product.id, product.name.clone());
        Ok(product)
    }

    /// Whether a read returns `name` for `id` within a few seconds.
    async fn eventually_reads(&self, id: i64, name: &str) -> bool {
        commerce_testkit::eventually(Duration::from_secs(3), || async move {
            self.product(id).await == Ok(Some(Product::new(id, name)))
        })
        .await
    }
}

/// Once the body returned `Ok` (the write committed), the evict completes even if the caller
/// drops the future, e.g. a client disconnect or a timeout around the handler.
///
/// The clock is paused (it jumps to the next timer when the runtime is idle), so the caller's
/// timeout always fires inside the slow delete, however loaded the machine is.
#[tokio::test(start_paused = true)]
async fn evict_finishes_after_the_caller_gives_up() {
    let shop = Shop::new().await;
    shop.db().insert(1, "old".to_owned());
    assert_eq!(shop.product(1).await, Ok(Some(Product::new(1, "old"))));

    let gave_up = tokio::time::timeout(CALLER_PATIENCE, shop.rename(1, "new")).await;
    assert!(gave_up.is_err(), "the caller should give up mid-evict");
    assert_eq!(shop.db().get(&1).map(String::as_str), Some("new"));

    assert!(
        shop.eventually_reads(1, "new").await,
        "the dropped evict left the old value cached"
    );
}

/// The same for `#[cache_put]`: the new value reaches the cache although the caller left.
#[tokio::test(start_paused = true)]
async fn put_finishes_after_the_caller_gives_up() {
    let shop = Shop::new().await;
    shop.db().insert(2, "old".to_owned());
    assert_eq!(shop.product(2).await, Ok(Some(Product::new(2, "old"))));

    let gave_up = tokio::time::timeout(CALLER_PATIENCE, shop.save(Product::new(2, "new"))).await;
    assert!(gave_up.is_err(), "the caller should give up mid-put");

    assert!(
        shop.eventually_reads(2, "new").await,
        "the dropped put left the old value cached"
    );
}

/// The write-back of a dropped caller is one of the cache's own tasks: `shutdown()` waits
/// for it, so a node going away still finishes the cache work of writes it committed.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_a_dropped_callers_write_back() {
    let shop = Shop::new().await;
    shop.db().insert(3, "old".to_owned());
    assert_eq!(shop.product(3).await, Ok(Some(Product::new(3, "old"))));

    let gave_up = tokio::time::timeout(CALLER_PATIENCE, shop.save(Product::new(3, "new"))).await;
    assert!(gave_up.is_err(), "the caller should give up mid-put");
    shop.products.shutdown().await;
    // No waiting after shutdown: the write-back is already done.
    assert_eq!(shop.product(3).await, Ok(Some(Product::new(3, "new"))));
}
