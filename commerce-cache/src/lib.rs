//! A two-level cache for commerce-rs: L1 in each process ([moka]), L2 shared by every node
//! (Redis), kept consistent across nodes, with `#[cached]`, `#[cache_put]` and
//! `#[cache_evict]` attribute macros.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use commerce_cache::{cached, TwoLevelCache};
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct Product {
//!     id: i64,
//!     name: String,
//! }
//!
//! struct Catalog {
//!     products: TwoLevelCache<Product>,
//! }
//!
//! impl Catalog {
//!     /// Read-through: L1, then Redis, then this body; `None` is cached briefly too.
//!     #[cached(cache = self.products, key = "product:{id}", ttl = "5m")]
//!     async fn product(&self, id: i64) -> Result<Option<Product>, std::io::Error> {
//!         Ok(Some(Product { id, name: format!("product {id}") }))
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let products = TwoLevelCache::<Product>::builder("products")
//!     .redis(redis::Client::open("redis://127.0.0.1:6379")?)
//!     .l1_capacity(50_000)
//!     .l1_ttl(Duration::from_secs(30))
//!     .negative_ttl(Duration::from_secs(5))
//!     .build()
//!     .await?;
//! let catalog = Catalog { products };
//! let first = catalog.product(7).await?; // loads, fills Redis and L1
//! let again = catalog.product(7).await?; // L1 hit
//! assert_eq!(first.map(|p| p.id), again.map(|p| p.id));
//! # Ok(())
//! # }
//! ```
//!
//! # Policies
//!
//! - **Read** (`get_or_load`, `#[cached]`): L1; on a miss, one caller per key and node (single
//!   flight) reads L2 and fills L1 from it; on an L2 miss it runs the loader and fills L2 (only
//!   if the key was not written meanwhile) and L1. `None` is cached for the negative TTL;
//!   errors are never cached. An L1 entry never outlives the L2 entry it came from.
//! - **Write** (`put`, `#[cache_put]`): after the source of truth committed, write L2 (new
//!   version), then this node's L1, then publish `{key, version}`.
//! - **Delete** (`evict`, `#[cache_evict]`, the recommended write policy): after the commit,
//!   delete in L2 leaving a versioned tombstone, drop this node's L1 copy, publish.
//!
//! Other nodes drop L1 copies older than a published version and refuse to fill L1 with
//! anything older afterwards; a node that may have missed notices (bus reconnect) drops its
//! whole L1. Reads never fail because of the cache: when Redis is down they use L1 and the
//! loader, with one warning per outage. See `docs/cache.md` for the reasoning.
#![warn(missing_docs)]

pub mod backend;
mod builder;
pub mod bus;
mod cache;
mod codec;
mod error;
mod flight;
mod health;
mod l1;
mod metrics;
mod reconnect;
mod ttl;

#[doc(hidden)]
pub mod __private;

pub use commerce_cache_macros::{cache_evict, cache_put, cached};

pub use crate::builder::CacheBuilder;
pub use crate::cache::{CacheValue, TwoLevelCache};
pub use crate::error::{Error, Result};
pub use crate::metrics::{CacheMetrics, LevelMetrics};

/// The README's example, compiled as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
