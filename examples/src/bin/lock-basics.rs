//! The lock in five steps: acquire two stock keys at once, read the fencing tokens, watch for
//! a lost lease, release; then the same through `#[redis_lock]`.
//!
//! `cargo run -p commerce-examples --bin lock-basics` (Redis at `REDIS_URL`, default
//! `redis://127.0.0.1:6379`).

use std::time::Duration;

use commerce_lock::{redis_lock, DistributedLock, Error, LockOptions, RedisLock};

#[derive(Debug)]
enum ReserveError {
    Lock(Error),
}

impl From<Error> for ReserveError {
    fn from(error: Error) -> Self {
        Self::Lock(error)
    }
}

/// The body runs with `stock:<product_id>` held; `guard` gives it the fencing token.
#[redis_lock(key = "stock:{product_id}", wait = "2s", lease = "10s", guard = guard)]
async fn reserve(lock: &RedisLock, product_id: u64, quantity: u32) -> Result<u64, ReserveError> {
    let fence = guard
        .fencing_token(&format!("stock:{product_id}"))
        .map_or(0, commerce_lock::FencingToken::get);
    println!("reserving {quantity} of product {product_id} under fencing token {fence}");
    Ok(fence)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let lock = RedisLock::builder(url)
        .namespace("commerce-lock-example")
        .connect()
        .await?;
    let options = LockOptions::new(Duration::from_secs(2), Duration::from_secs(10));

    // A two-line order locks both products, in sorted order, all or nothing.
    let guard = lock.acquire_many(&["stock:7", "stock:1"], options).await?;
    for (key, token) in guard.fencing_tokens() {
        println!("holding {key} with fencing token {token}");
    }

    // Someone else gives up after a bounded wait, with a typed error.
    match lock
        .acquire("stock:7", options.with_wait(Duration::from_millis(100)))
        .await
    {
        Err(Error::WaitTimeout { key, waited }) => println!("{key} busy, gave up after {waited:?}"),
        other => println!("unexpected: {other:?}"),
    }

    // Work races the lost-lease signal: if the watchdog cannot renew, stop writing.
    tokio::select! {
        () = guard.lost() => println!("lock lost: abandon the work"),
        () = tokio::time::sleep(Duration::from_millis(50)) => println!("work done under the lock"),
    }
    guard.release().await?;

    let fence = reserve(&lock, 7, 2)
        .await
        .map_err(|ReserveError::Lock(e)| e)?;
    println!("macro-protected reservation done (token {fence})");
    lock.shutdown().await;
    Ok(())
}
