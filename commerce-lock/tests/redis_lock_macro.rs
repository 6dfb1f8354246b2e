//! `#[redis_lock]` on real locks: key templates, client lookup, release on every exit path,
//! guard access and the `on_lost` choices.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commerce_lock::{redis_lock, DistributedLock, Error, LocalLock, LockGuard, RedisLock};
use commerce_testkit::redis_url;
use redis::AsyncCommands;

use common::{namespace, options, plain_connection, redis_lock, within};

#[derive(Debug)]
enum AppError {
    Lock(Error),
    OutOfStock,
}

impl From<Error> for AppError {
    fn from(error: Error) -> Self {
        Self::Lock(error)
    }
}

struct Order {
    user_id: u64,
    lines: (u64, u32),
}

#[redis_lock(key = "cart:{order.user_id}:{order.lines.0}", guard = g)]
async fn keys_of(lock: &RedisLock, order: &Order) -> Result<Vec<String>, AppError> {
    assert!(g.fencing_token(&g.keys()[0]).is_some());
    Ok(g.keys().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_template_reads_arguments_and_fields() {
    let lock = redis_lock(&namespace()).await;
    let order = Order {
        user_id: 42,
        lines: (7, 1),
    };
    let keys = keys_of(&lock, &order).await.expect("locked");
    assert_eq!(keys, vec!["cart:42:7".to_owned()]);
    assert_eq!(order.lines.1, 1);
}

/// The textbook lost update: read, yield, write. Only the lock keeps it exact.
#[redis_lock(key = "counter:{name}", wait = "60s", lease = "10s")]
async fn increment(
    lock: &impl DistributedLock,
    name: &str,
    counter: &AtomicU64,
) -> Result<(), AppError> {
    let seen = counter.load(Ordering::SeqCst);
    tokio::task::yield_now().await;
    counter.store(seen + 1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_are_mutually_exclusive() {
    let lock = redis_lock(&namespace()).await;
    let counter = Arc::new(AtomicU64::new(0));
    let calls = (0..300).map(|_| {
        let (lock, counter) = (lock.clone(), Arc::clone(&counter));
        tokio::spawn(async move { increment(&lock, "hits", &counter).await })
    });
    for call in futures::future::join_all(calls).await {
        call.expect("task").expect("locked call");
    }
    assert_eq!(counter.load(Ordering::SeqCst), 300);
}

#[redis_lock(key = "stock:{product_id}", wait = "0s", lease = "60s")]
async fn fail_inside(lock: &RedisLock, product_id: u32) -> Result<(), AppError> {
    let _ = product_id;
    Err(AppError::OutOfStock)
}

#[redis_lock(key = "stock:{product_id}", wait = "0s", lease = "60s")]
async fn panic_inside(lock: Arc<dyn DistributedLock>, product_id: u32) -> Result<(), AppError> {
    panic!("boom in product {product_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_after_an_error_and_after_a_panic() {
    let lock = RedisLock::builder(redis_url())
        .namespace(namespace())
        .max_recheck(Duration::from_secs(600))
        .connect()
        .await
        .expect("connect");
    assert!(matches!(
        fail_inside(&lock, 1).await,
        Err(AppError::OutOfStock)
    ));
    let after_error = lock.acquire("stock:1", options(0, 1_000)).await;
    assert!(
        after_error.is_ok(),
        "error path kept the lock: {after_error:?}"
    );
    after_error
        .expect("checked")
        .release()
        .await
        .expect("release");

    let shared: Arc<dyn DistributedLock> = Arc::new(lock.clone());
    let panicked = tokio::spawn(panic_inside(shared, 2)).await;
    assert!(panicked.is_err_and(|e| e.is_panic()));
    // The guard's drop releases in the background; the notice wakes this waiter.
    let after_panic = within(
        Duration::from_secs(10),
        lock.acquire("stock:2", options(30_000, 1_000)),
    )
    .await;
    after_panic
        .expect("panic path released")
        .release()
        .await
        .expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_reaches_the_caller_through_from() {
    let lock = redis_lock(&namespace()).await;
    let holder = lock
        .acquire("stock:3", options(0, 10_000))
        .await
        .expect("free key");
    match fail_inside(&lock, 3).await {
        Err(AppError::Lock(Error::WaitTimeout { key, .. })) => assert_eq!(key, "stock:3"),
        other => panic!("expected a wait timeout, got {other:?}"),
    }
    holder.release().await.expect("release");
}

#[redis_lock(key = "job:{id}", lease = "300ms", guard = g)]
async fn long_job_cancelled(
    lock: &RedisLock,
    id: u32,
    reached_end: &AtomicU64,
) -> Result<(), AppError> {
    let _ = g.owner_token();
    tokio::time::sleep(Duration::from_secs(30)).await;
    reached_end.store(id.into(), Ordering::SeqCst);
    Ok(())
}

#[redis_lock(key = "job:{id}", lease = "300ms", guard = g, on_lost = "signal")]
async fn long_job_signalled(lock: &RedisLock, id: u32) -> Result<bool, AppError> {
    tokio::select! {
        () = g.lost() => Ok(g.is_lost()),
        () = tokio::time::sleep(Duration::from_secs(30)) => Ok(false),
    }
}

async fn delete_soon(lock: &RedisLock, key: &str) {
    let redis_key = lock.redis_key(key);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let () = plain_connection().await.del(redis_key).await.expect("DEL");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lock_cancels_the_body_by_default() {
    let lock = redis_lock(&namespace()).await;
    let reached_end = AtomicU64::new(0);
    delete_soon(&lock, "job:5").await;
    match within(
        Duration::from_secs(10),
        long_job_cancelled(&lock, 5, &reached_end),
    )
    .await
    {
        Err(AppError::Lock(Error::LockLost { keys })) => assert_eq!(keys, vec!["job:5".to_owned()]),
        other => panic!("expected LockLost, got {other:?}"),
    }
    assert_eq!(
        reached_end.load(Ordering::SeqCst),
        0,
        "the body ran on after the loss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lock_only_signals_when_asked() {
    let lock = redis_lock(&namespace()).await;
    delete_soon(&lock, "job:6").await;
    let saw_loss = within(Duration::from_secs(10), long_job_signalled(&lock, 6))
        .await
        .expect("body result returned");
    assert!(saw_loss);
}

struct Inventory {
    locks: LocalLock,
    warehouse: &'static str,
}

impl Inventory {
    #[redis_lock(key = "{self.warehouse}:{sku}", lock = self.locks, guard = g)]
    async fn reserve(&self, sku: &str) -> Result<String, AppError> {
        Ok(g.keys()[0].clone())
    }
}

#[tokio::test]
async fn methods_name_an_injected_client() {
    let inventory = Inventory {
        locks: LocalLock::new(),
        warehouse: "north",
    };
    assert_eq!(
        inventory.reserve("sku-1").await.expect("locked"),
        "north:sku-1"
    );
    // Released on return.
    let guard: LockGuard = inventory
        .locks
        .acquire("north:sku-1", options(0, 1_000))
        .await
        .expect("free");
    guard.release().await.expect("release");
}

#[redis_lock(key = "cart:{user}:{name}", guard = g)]
async fn cart_key(lock: &LocalLock, user: &str, name: &str) -> Result<String, AppError> {
    Ok(g.keys()[0].clone())
}

/// `"{user}:{name}"` must not give ("alice:x", "y") and ("alice", "x:y") one key: the values
/// are escaped (`\` as `\\`, `:` as `\:`) so that every argument tuple has its own key.
#[tokio::test]
async fn composite_keys_escape_the_separator_in_values() {
    let lock = LocalLock::new();
    let first = cart_key(&lock, "alice:x", "y").await.expect("locked");
    let second = cart_key(&lock, "alice", "x:y").await.expect("locked");
    assert_ne!(first, second, "two argument pairs share one lock key");
    assert_eq!(first, r"cart:alice\:x:y");
    assert_eq!(second, r"cart:alice:x\:y");
    assert_eq!(
        cart_key(&lock, r"a\", "b").await.expect("locked"),
        r"cart:a\\:b"
    );
}

/// The lock client may be called `key`: the macro's own bindings must not shadow it.
#[redis_lock(key = "k:{id}", guard = g)]
async fn client_named_key(key: &LocalLock, id: u32) -> Result<String, AppError> {
    Ok(g.keys()[0].clone())
}

#[tokio::test]
async fn an_argument_named_key_is_not_shadowed() {
    let lock = LocalLock::new();
    assert_eq!(client_named_key(&lock, 7).await.expect("locked"), "k:7");
}

/// A constant key: a lock for a singleton job (a key need not have a placeholder).
#[redis_lock(key = "nightly-report", wait = "0s", guard = g)]
async fn nightly_report(lock: &LocalLock) -> Result<String, AppError> {
    Ok(g.keys()[0].clone())
}

#[tokio::test]
async fn a_constant_key_locks_a_singleton_job() {
    let lock = LocalLock::new();
    assert_eq!(
        nightly_report(&lock).await.expect("locked"),
        "nightly-report"
    );
    let holder = lock
        .acquire("nightly-report", options(0, 10_000))
        .await
        .expect("released after the first run");
    match nightly_report(&lock).await {
        Err(AppError::Lock(Error::WaitTimeout { key, .. })) => assert_eq!(key, "nightly-report"),
        other => panic!("a second run while one holds the job's lock: {other:?}"),
    }
    holder.release().await.expect("release");
}
