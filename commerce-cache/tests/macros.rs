//! The attribute macros on an in-process cache (single node, no Redis needed).

mod common;

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
