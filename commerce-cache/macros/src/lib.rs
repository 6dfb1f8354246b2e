//! Attribute macros for `commerce-cache`: `#[cached]`, `#[cache_put]` and `#[cache_evict]`.
//!
//! Use them through `commerce_cache`, which re-exports them; the generated code calls into
//! `::commerce_cache::__private` and needs no imports. See that crate for examples.

mod duration;
mod expand;
mod options;
mod signature;
mod template;

use proc_macro::TokenStream;

use crate::expand::Kind;

/// Read-through caching of an `async fn` returning `Result<T, E>` or `Result<Option<T>, E>`.
///
/// `#[cached(cache = EXPR, key = "product:{id}", ttl = "60s")]`: `cache` evaluates to a
/// `TwoLevelCache<T>` (or anything that derefs to one); `key` is a template over the
/// arguments and their fields (`"{q.user_id}:{q.page}"`); `ttl` (optional) replaces the
/// cache's L2 TTL (`ms`, `s`, `m`, `h`). `Ok(None)` is cached for the negative TTL; errors
/// are never cached.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(Kind::Cached, args.into(), &item.into()).into()
}

/// Write-through after a successful `async fn`: `Ok(value)` is put into the cache under
/// `key` (an `Ok(None)` evicts it). Cache failures are logged, never returned.
///
/// `#[cache_put(cache = EXPR, key = "product:{product.id}", ttl = "10m")]`.
#[proc_macro_attribute]
pub fn cache_put(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(Kind::Put, args.into(), &item.into()).into()
}

/// Eviction after a successful `async fn`: on `Ok(_)` the key is removed from L2 and every
/// node's L1. Cache failures are logged, never returned.
///
/// `#[cache_evict(cache = EXPR, key = "product:{id}")]`.
#[proc_macro_attribute]
pub fn cache_evict(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(Kind::Evict, args.into(), &item.into()).into()
}
