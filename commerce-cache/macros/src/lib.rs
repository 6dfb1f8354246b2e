//! Attribute macros for `commerce-cache`: `#[cached]`, `#[cache_put]` and `#[cache_evict]`.
//!
//! Use them through `commerce_cache`, which re-exports them; the generated code calls into
//! `::commerce_cache::__private` and needs no imports. See that crate for examples.
//!
//! Their grammar (key templates, durations, option rules) is shared with `#[redis_lock]`
//! through `commerce-macro-support`.

mod expand;
mod options;
mod signature;

use proc_macro::TokenStream;

use crate::expand::Kind;

/// Read-through caching of an `async fn` returning `Result<T, E>` or `Result<Option<T>, E>`.
///
/// `#[cached(cache = EXPR, key = "product:{id}", ttl = "60s")]`, each option at most once:
/// `cache` evaluates to a `TwoLevelCache<T>` (or anything that derefs to one); `key` is a
/// template over the arguments and their fields (`"{q.user_id}:{q.page}"`), each value
/// written with `Display` and escaped (`\` as `\\`, `:` as `\:`) so that different
/// arguments never share a key; two placeholders need a `:` between them, and a template
/// without placeholders is one constant key. `ttl` (optional) replaces the cache's L2 TTL
/// (`ms`, `s`, `m`, `h`). `Ok(None)` is cached for the negative TTL; errors are never cached.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(Kind::Cached, args.into(), &item.into()).into()
}

/// Write-through after a successful `async fn`: `Ok(value)` is put into the cache under
/// `key` (an `Ok(None)` evicts it). Cache failures are logged, never returned.
///
/// Once the body has returned `Ok`, the put runs to the end even if the caller's future is
/// dropped (it runs in a task of its own). Dropping the future *during* the body still stops
/// it wherever it is, so make the commit the body's last await.
///
/// `#[cache_put(cache = EXPR, key = "product:{product.id}", ttl = "10m")]`.
#[proc_macro_attribute]
pub fn cache_put(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(Kind::Put, args.into(), &item.into()).into()
}

/// Eviction after a successful `async fn`: on `Ok(_)` the key is removed from L2 and every
/// node's L1. Cache failures are logged, never returned.
///
/// Once the body has returned `Ok`, the evict runs to the end even if the caller's future is
/// dropped (it runs in a task of its own). Dropping the future *during* the body still stops
/// it wherever it is, so make the commit the body's last await.
///
/// `#[cache_evict(cache = EXPR, key = "product:{id}")]`.
#[proc_macro_attribute]
pub fn cache_evict(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(Kind::Evict, args.into(), &item.into()).into()
}
