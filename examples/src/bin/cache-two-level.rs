//! Two nodes of one product cache on the local Redis: read-through, a write on one node seen by
//! the other, not-found caching, and the metrics.
//!
//! Run: `cargo run -p commerce-examples --bin cache-two-level` (needs Redis; `REDIS_URL` overrides
//! `redis://127.0.0.1:6379`).

use std::time::Duration;

use commerce_cache::{cache_evict, cached, TwoLevelCache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: i64,
    name: String,
}

#[derive(Debug)]
struct DbError;

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("database unavailable")
    }
}

impl std::error::Error for DbError {}

/// One application node: its own L1, Redis shared with the other node.
struct Node {
    name: &'static str,
    products: TwoLevelCache<Product>,
}

impl Node {
    /// Stands in for `SELECT ... FROM products WHERE id = $1`.
    #[cached(cache = self.products, key = "product:{id}", ttl = "10m")]
    async fn product(&self, id: i64) -> Result<Option<Product>, DbError> {
        println!("  [{}] loading product {id} from the database", self.name);
        Ok((id < 100).then(|| Product {
            id,
            name: format!("product {id}"),
        }))
    }

    /// Stands in for `UPDATE products ...`: evicts after the update committed.
    #[cache_evict(cache = self.products, key = "product:{id}")]
    async fn rename(&self, id: i64, name: &str) -> Result<(), DbError> {
        println!(
            "  [{}] renaming product {id} to {name:?} in the database",
            self.name
        );
        Ok(())
    }
}

async fn node(name: &'static str, prefix: &str) -> Result<Node, commerce_cache::Error> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let client = redis::Client::open(url).map_err(|source| commerce_cache::Error::Backend {
        operation: "connect",
        source,
    })?;
    let products = TwoLevelCache::builder("products")
        .key_prefix(prefix)
        .redis(client)
        .l1_ttl(Duration::from_secs(30))
        .negative_ttl(Duration::from_secs(5))
        .build()
        .await?;
    Ok(Node { name, products })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prefix = format!("example:products:{}:", std::process::id());
    let (a, b) = (node("a", &prefix).await?, node("b", &prefix).await?);

    println!("a reads product 7 (miss everywhere: loads)");
    a.product(7).await?;
    println!("b reads product 7 (L2 hit: no load)");
    b.product(7).await?;
    println!("b reads it again (L1 hit)");
    b.product(7).await?;

    println!("a renames product 7 and evicts it everywhere");
    a.rename(7, "renamed").await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    println!(
        "b still holds product 7 in L1: {}",
        b.products.contains_local("product:7")
    );
    println!("b reads product 7 (loads the new row)");
    b.product(7).await?;

    println!("a reads product 404 twice (not found is cached: one load)");
    assert!(a.product(404).await?.is_none());
    assert!(a.product(404).await?.is_none());

    for node in [&a, &b] {
        let m = node.products.metrics();
        println!(
            "node {}: L1 hits {} misses {}, L2 hits {} misses {}, loads {}, invalidations received {}",
            node.name, m.l1.hits, m.l1.misses, m.l2.hits, m.l2.misses, m.loads, m.invalidations_received
        );
    }
    a.products.shutdown().await;
    b.products.shutdown().await;
    Ok(())
}
