//! The catalogue: product reads through the two-level cache, and product creation under the
//! store's own ids.
//!
//! Catalogue facts (name) are read far more often than they change, and the same on every
//! instance: they go through [`TwoLevelCache`] (moka L1 per instance, Redis L2 shared when
//! `REDIS_URL` is set). Stock is not cached: it changes with every order and must be exact.

use std::time::Duration;

use commerce_cache::{cache_evict, cached, CacheMetrics, TwoLevelCache};
use commerce_core::{Commerce, NewProduct, Product, ProductId, StockLevel};

/// The product catalogue, read through the cache, evicted on every write.
#[derive(Debug, Clone)]
pub struct Catalog {
    commerce: Commerce,
    products: TwoLevelCache<Product>,
}

impl Catalog {
    /// A catalogue over `commerce`; `redis` shares L2 and invalidations between instances,
    /// `None` keeps both in-process (one instance). `prefix` namespaces the keys.
    ///
    /// # Errors
    /// When the cache cannot be built.
    pub async fn new(
        commerce: Commerce,
        redis: Option<redis::Client>,
        prefix: &str,
    ) -> commerce_cache::Result<Self> {
        let mut builder = TwoLevelCache::<Product>::builder("products")
            .key_prefix(format!("{prefix}:cache:products:"))
            .l1_capacity(100_000)
            .l1_ttl(Duration::from_secs(60))
            .l2_ttl(Duration::from_secs(600))
            // Unknown ids are remembered briefly: a scan of made-up ids stays off the database.
            .negative_ttl(Duration::from_secs(10));
        if let Some(client) = redis {
            builder = builder.redis(client);
        }
        Ok(Self {
            commerce,
            products: builder.build().await?,
        })
    }

    /// The product, or `None` for an unknown id (cached too).
    ///
    /// # Errors
    /// Database errors (never cached).
    #[cached(cache = self.products, key = "product:{id}", ttl = "5m")]
    pub async fn product(&self, id: ProductId) -> Result<Option<Product>, commerce_core::Error> {
        self.commerce.product(id).await
    }

    /// Creates a product under the next id of the store's own sequence (`store.product_ids`),
    /// with its initial stock; an id already taken (a product created outside this service)
    /// is skipped.
    ///
    /// # Errors
    /// [`commerce_core::Error::SkuAlreadyExists`], bad input, database errors; a conflict
    /// when five ids in a row were taken.
    pub async fn create_with_new_id(
        &self,
        name: &str,
        sku: &str,
        price: i64,
        initial_stock: i64,
    ) -> Result<(ProductId, StockLevel), commerce_core::Error> {
        for _ in 0..5 {
            let id = ProductId(
                sqlx::query_scalar("SELECT nextval('store.product_ids')")
                    .fetch_one(self.commerce.pool())
                    .await?,
            );
            let new = NewProduct::new(id, name)
                .sku(sku)
                .price(price)
                .stock(initial_stock);
            match self.create(new).await {
                Ok(stock) => return Ok((id, stock)),
                Err(commerce_core::Error::ProductAlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(commerce_core::Error::Conflict(
            "five product ids in a row were already taken".into(),
        ))
    }

    /// Creates the product, then evicts its id on every instance (a lookup of the id before
    /// it existed may have cached "not found").
    ///
    /// # Errors
    /// [`commerce_core::Error::ProductAlreadyExists`], `SkuAlreadyExists`, bad input, database
    /// errors.
    pub async fn create(&self, product: NewProduct) -> Result<StockLevel, commerce_core::Error> {
        self.create_and_evict(product.id, product).await
    }

    #[cache_evict(cache = self.products, key = "product:{id}")]
    async fn create_and_evict(
        &self,
        id: ProductId,
        product: NewProduct,
    ) -> Result<StockLevel, commerce_core::Error> {
        debug_assert_eq!(id, product.id);
        self.commerce.create_product(product).await
    }

    /// Renames the product, then evicts it on every instance.
    ///
    /// # Errors
    /// [`commerce_core::Error::ProductNotFound`], bad input, database errors.
    #[cache_evict(cache = self.products, key = "product:{id}")]
    pub async fn rename(&self, id: ProductId, name: &str) -> Result<Product, commerce_core::Error> {
        self.commerce.rename_product(id, name).await
    }

    /// The inventory and orders behind the catalogue.
    #[must_use]
    pub fn commerce(&self) -> &Commerce {
        &self.commerce
    }

    /// The cache's counters.
    #[must_use]
    pub fn metrics(&self) -> CacheMetrics {
        self.products.metrics()
    }

    /// Stops the cache's background tasks.
    pub async fn shutdown(&self) {
        self.products.shutdown().await;
    }
}
