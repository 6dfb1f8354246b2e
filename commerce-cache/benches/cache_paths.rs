//! L1 hit (through `#[cached]` and bare moka), L2 hit and loader path, side by side.
//!
//! Needs the local Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`). Run:
//! `cargo bench -p commerce-cache --bench cache_paths`. After criterion's groups it prints
//! per-request percentiles of the L2 hit and loader paths (criterion reports means of batches).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use commerce_cache::{cached, TwoLevelCache};
use criterion::{black_box, Criterion};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: i64,
    sku: String,
    name: String,
    price_cents: i64,
    stock: i32,
}

fn product(id: i64) -> Product {
    Product {
        id,
        sku: format!("SKU-{id:08}"),
        name: "Ceramic pour-over coffee dripper, white".to_owned(),
        price_cents: 2_490,
        stock: 120,
    }
}

#[derive(Debug)]
struct NotFound;

struct Catalog {
    products: TwoLevelCache<Product>,
}

impl Catalog {
    #[cached(cache = self.products, key = "product:{id}")]
    async fn product(&self, id: i64) -> Result<Option<Product>, NotFound> {
        Ok(Some(product(id)))
    }
}

fn redis_client() -> redis::Client {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    redis::Client::open(url).expect("REDIS_URL")
}

fn prefix(path: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("bench:{path}:{nanos}:")
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    catalog: Catalog,
    bare: moka::future::Cache<String, Product>,
    l2_only: TwoLevelCache<Product>,
    miss_counter: AtomicU64,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (catalog, bare, l2_only) = runtime.block_on(async {
            let products = TwoLevelCache::builder("bench-products")
                .key_prefix(prefix("l1"))
                .redis(redis_client())
                .build()
                .await
                .expect("cache");
            let catalog = Catalog { products };
            catalog.product(1).await.expect("warm");
            let bare = moka::future::Cache::new(10_000);
            bare.insert("product:1".to_owned(), product(1)).await;
            // L1 off: every read is an L2 read.
            let l2_only = TwoLevelCache::builder("bench-l2")
                .key_prefix(prefix("l2"))
                .redis(redis_client())
                .l1_capacity(0)
                .l2_ttl(Duration::from_secs(120))
                .l2_ttl_jitter(Duration::ZERO)
                .build()
                .await
                .expect("cache");
            l2_only.put("product:1", product(1)).await.expect("put");
            (catalog, bare, l2_only)
        });
        Self {
            runtime,
            catalog,
            bare,
            l2_only,
            miss_counter: AtomicU64::new(0),
        }
    }

    async fn l2_hit(&self) -> Option<Product> {
        self.l2_only
            .get_or_load("product:1", || async {
                Err::<Option<Product>, _>(NotFound)
            })
            .await
            .expect("L2 hit")
    }

    /// A key never read before: L2 read (miss), loader, conditional L2 fill.
    async fn loader_path(&self) -> Option<Product> {
        let n = self.miss_counter.fetch_add(1, Ordering::Relaxed);
        self.l2_only
            .get_or_load(&format!("miss:{n}"), || async {
                Ok::<_, NotFound>(Some(product(2)))
            })
            .await
            .expect("loader")
    }
}

fn cache_paths(c: &mut Criterion) {
    let fixture = Fixture::new();
    let mut group = c.benchmark_group("cache_paths");
    group.bench_function("l1_hit_macro", |b| {
        b.to_async(&fixture.runtime)
            .iter(|| async { black_box(fixture.catalog.product(black_box(1)).await) });
    });
    group.bench_function("l1_hit_bare_moka_get", |b| {
        let key = "product:1".to_owned();
        b.to_async(&fixture.runtime)
            .iter(|| async { black_box(fixture.bare.get(black_box(&key)).await) });
    });
    group.bench_function("l2_hit", |b| {
        b.to_async(&fixture.runtime)
            .iter(|| async { black_box(fixture.l2_hit().await) });
    });
    group.bench_function("loader_path", |b| {
        b.to_async(&fixture.runtime)
            .iter(|| async { black_box(fixture.loader_path().await) });
    });
    group.finish();
    percentiles(&fixture);
}

/// Per-request latency percentiles, which criterion's batch means do not show.
fn percentiles(fixture: &Fixture) {
    const REQUESTS: usize = 20_000;
    fixture.runtime.block_on(async {
        for (name, loader) in [("l2_hit", false), ("loader_path", true)] {
            let mut samples = Vec::with_capacity(REQUESTS);
            for _ in 0..REQUESTS {
                let start = Instant::now();
                if loader {
                    black_box(fixture.loader_path().await);
                } else {
                    black_box(fixture.l2_hit().await);
                }
                samples.push(start.elapsed());
            }
            samples.sort_unstable();
            let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
            println!(
                "cache_paths/{name} per request over {REQUESTS}: p50 {:?}  p90 {:?}  p99 {:?}",
                at(0.50),
                at(0.90),
                at(0.99)
            );
        }
    });
}

/// Runs the benchmarks, then prints criterion's summary.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    cache_paths(&mut criterion);
    criterion.final_summary();
}
