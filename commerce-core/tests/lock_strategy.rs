//! The distributed-lock strategy (the Redisson-style design) under the flash-sale concurrency
//! test, with the Redis lock and with the in-process lock.

mod common;

use std::time::Duration;

use commerce_core::{DistributedLockStrategy, Error, NewOrder, ProductId};
use commerce_lock::{DistributedLock, LocalLock, LockOptions, RedisLock};
use common::{flash_sale, product, setup_with_strategy};

/// 10,000 contenders queue on one key: the wait must outlast the whole queue.
fn options() -> LockOptions {
    LockOptions::new(Duration::from_secs(300), Duration::from_secs(10))
}

async fn redis_strategy() -> DistributedLockStrategy {
    // 10,000 acquires in flight share one connection: give replies time to come back.
    let lock = RedisLock::builder(commerce_testkit::redis_url())
        .response_timeout(Duration::from_secs(60))
        .connect()
        .await
        .expect("redis");
    DistributedLockStrategy::new(lock)
        .options(options())
        .key_prefix(format!(
            "{}:stock:",
            commerce_testkit::unique_name("core-lock")
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lock_ten_thousand_attempts_on_one_product() {
    let (_db, commerce) = setup_with_strategy(40, redis_strategy().await).await;
    flash_sale::ten_thousand_attempts_on_one_product(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lock_ten_thousand_multi_line_attempts() {
    let (_db, commerce) = setup_with_strategy(40, redis_strategy().await).await;
    flash_sale::ten_thousand_multi_line_attempts(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_lock_ten_thousand_attempts_on_one_product() {
    let strategy = DistributedLockStrategy::new(LocalLock::new()).options(options());
    let (_db, commerce) = setup_with_strategy(40, strategy).await;
    flash_sale::ten_thousand_attempts_on_one_product(&commerce).await;
}

#[tokio::test]
async fn an_unreachable_lock_service_fails_the_order_and_writes_nothing() {
    let builder = RedisLock::builder("redis://127.0.0.1:1")
        .connect_timeout(Duration::from_millis(200))
        .response_timeout(Duration::from_millis(200));
    // Fail closed: either the client cannot even connect, or the order fails without writes.
    let Ok(lock) = builder.connect().await else {
        return;
    };
    let (_db, commerce) = setup_with_strategy(5, DistributedLockStrategy::new(lock)).await;
    product(&commerce, 1, 5).await;
    let err = commerce
        .place_order(NewOrder::new("u").line(1, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Strategy(_)) && err.is_retryable(),
        "{err:?}"
    );
    assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 5);
}

#[tokio::test]
async fn a_lock_held_elsewhere_times_out_as_a_typed_error_and_writes_nothing() {
    let lock = LocalLock::new();
    let strategy = DistributedLockStrategy::from_arc(std::sync::Arc::new(lock.clone())).options(
        LockOptions::new(Duration::from_millis(100), Duration::from_secs(10)),
    );
    let (_db, commerce) = setup_with_strategy(5, strategy).await;
    product(&commerce, 1, 5).await;
    let held = lock
        .acquire("stock:1", LockOptions::default())
        .await
        .unwrap();
    let err = commerce
        .place_order(NewOrder::new("u").line(1, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Strategy(_)), "{err:?}");
    held.release().await.unwrap();
    commerce
        .place_order(NewOrder::new("u").line(1, 1))
        .await
        .unwrap();
    assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 4);
    common::assert_consistent(&commerce).await;
}

#[tokio::test]
async fn a_fenced_write_from_an_older_lock_holder_is_refused() {
    let strategy = DistributedLockStrategy::new(LocalLock::new()).fencing(true);
    let (_db, commerce) = setup_with_strategy(5, strategy).await;
    product(&commerce, 1, 5).await;
    // The first fenced write records its token on the product row.
    commerce
        .place_order(NewOrder::new("u").line(1, 1))
        .await
        .unwrap();
    let fence: i64 = sqlx::query_scalar("SELECT lock_fence FROM commerce.products WHERE id = 1")
        .fetch_one(commerce.pool())
        .await
        .unwrap();
    assert!(fence > 0, "the write recorded its fencing token");
    // A newer holder (token far ahead) wrote meanwhile: this holder's token is now stale.
    sqlx::query("UPDATE commerce.products SET lock_fence = 9223372036854775807 WHERE id = 1")
        .execute(commerce.pool())
        .await
        .unwrap();
    let err = commerce
        .place_order(NewOrder::new("u").line(1, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StockChanged { .. }), "{err:?}");
    assert_eq!(
        commerce.stock(ProductId(1)).await.unwrap().available,
        4,
        "nothing written"
    );
    common::assert_consistent(&commerce).await;
}

/// Holds every transaction that places an order for 300 ms before commit.
struct SlowCommit;

#[async_trait::async_trait]
impl commerce_core::TransactionHook for SlowCommit {
    async fn before_commit(
        &self,
        _conn: &mut sqlx::PgConnection,
        events: &[commerce_core::CoreEvent],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if events
            .iter()
            .any(|e| matches!(e, commerce_core::CoreEvent::OrderPlaced { .. }))
        {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(())
    }
}

/// Review finding M1, deterministic under the lock: the repeat waits for the lock while the
/// first request commits the last units, and must then get that order, not "out of stock".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeat_waiting_for_the_lock_gets_the_order_that_took_the_last_units() {
    let db = commerce_testkit::TestDb::with_pool_size(&[&commerce_core::MIGRATOR], 10).await;
    let strategy = DistributedLockStrategy::new(LocalLock::new()).options(LockOptions::new(
        Duration::from_secs(10),
        Duration::from_secs(30),
    ));
    let commerce = commerce_core::Commerce::builder(db.pool().clone())
        .strategy(strategy)
        .hook(SlowCommit)
        .build();
    product(&commerce, 1, 3).await;
    let request = NewOrder::new("erin").line(1, 3).idempotency_key("k");
    let first = tokio::spawn({
        let (commerce, request) = (commerce.clone(), request.clone());
        async move { commerce.place_order(request).await }
    });
    // The first request holds stock:1 and sleeps in its hook before commit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let repeat = commerce
        .place_order(request)
        .await
        .expect("a repeat must return the first order");
    let first = first.await.unwrap().unwrap();
    assert!(repeat.replayed);
    assert_eq!(repeat.order.id, first.order.id);
    common::assert_consistent(&commerce).await;
}

/// Review finding K1: receipts (which do not take the distributed lock) landing between the
/// strategy's read and its compare-and-set must not fail orders while stock is ample.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_under_the_lock_survive_concurrent_receipts() {
    let strategy = DistributedLockStrategy::new(LocalLock::new()).options(options());
    let (_db, commerce) = setup_with_strategy(20, strategy).await;
    product(&commerce, 1, 1_000).await;
    let orders: Vec<_> = (0..200)
        .map(|n| {
            let commerce = commerce.clone();
            tokio::spawn(async move {
                commerce
                    .place_order(NewOrder::new(format!("u{n}")).line(1, 1))
                    .await
            })
        })
        .collect();
    let receipts = tokio::spawn({
        let commerce = commerce.clone();
        async move {
            for _ in 0..200 {
                commerce.receive_stock(ProductId(1), 1, None).await.unwrap();
            }
        }
    });
    let mut failed = Vec::new();
    for order in orders {
        if let Err(e) = order.await.unwrap() {
            failed.push(e.to_string());
        }
    }
    receipts.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} orders failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 1_000);
    common::assert_consistent(&commerce).await;
}

/// Review finding L5 in commerce-core: an unbounded wait is a valid setting, not a panic.
#[tokio::test]
async fn an_unbounded_wait_does_not_panic() {
    let strategy = DistributedLockStrategy::new(LocalLock::new())
        .options(LockOptions::new(Duration::MAX, Duration::from_secs(10)));
    let (_db, commerce) = setup_with_strategy(5, strategy).await;
    product(&commerce, 1, 5).await;
    commerce
        .place_order(NewOrder::new("u").line(1, 1))
        .await
        .unwrap();
    assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 4);
}

/// The per-user limit scenarios (tests/common/user_limits.rs) under the lock strategy.
mod user_limits {
    use super::*;
    use common::setup_with_limits;
    use common::user_limits::{self as scenario, backordered_units, open_orders};

    fn local() -> DistributedLockStrategy {
        DistributedLockStrategy::new(LocalLock::new())
            .options(options())
            .fencing(true)
    }

    #[tokio::test]
    async fn backordered_units_are_capped() {
        let (_db, commerce) = setup_with_limits(10, local(), backordered_units()).await;
        scenario::backordered_units_are_capped(&commerce).await;
    }

    #[tokio::test]
    async fn open_orders_are_capped() {
        let (_db, commerce) = setup_with_limits(10, local(), open_orders()).await;
        scenario::open_orders_are_capped(&commerce).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_backorders_stay_within_the_limit() {
        let strategy = redis_strategy().await;
        let (_db, commerce) = setup_with_limits(20, strategy, backordered_units()).await;
        scenario::concurrent_backorders_stay_within_the_limit(&commerce).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_orders_stay_within_the_open_limit() {
        let (_db, commerce) = setup_with_limits(20, local(), open_orders()).await;
        scenario::concurrent_orders_stay_within_the_open_limit(&commerce).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn repeats_of_a_keyed_request_at_the_limit_get_the_first_order() {
        let (_db, commerce) = setup_with_limits(20, local(), open_orders()).await;
        scenario::repeats_of_a_keyed_request_at_the_limit_get_the_first_order(&commerce).await;
    }
}
