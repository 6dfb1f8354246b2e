//! Behaviour every `DistributedLock` must show, written once and run against each one.

use std::sync::Arc;
use std::time::Duration;

use commerce_lock::{DistributedLock, Error, FencingToken, LockOptions};
use redis::AsyncCommands;
use tokio::sync::Barrier;
use tokio::time::Instant;

use super::{options, plain_connection, within};

/// `contenders` tasks, alternating between two clients, each add one to a Redis counter with
/// a read, a yield and a write: without mutual exclusion increments are lost.
pub(crate) async fn mutual_exclusion<L: DistributedLock + Clone + 'static>(
    a: L,
    b: L,
    key: &str,
    counter: &str,
    contenders: usize,
) {
    let barrier = Arc::new(Barrier::new(contenders));
    // One multiplexed connection for all: a thousand simultaneous connects time out on a busy
    // machine, and the GETs and SETs of different tasks still interleave on it.
    let redis = plain_connection().await;
    let mut tasks = Vec::with_capacity(contenders);
    for i in 0..contenders {
        let lock = if i % 2 == 0 { a.clone() } else { b.clone() };
        let barrier = Arc::clone(&barrier);
        let (key, counter) = (key.to_owned(), counter.to_owned());
        let mut redis = redis.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let guard = lock
                .acquire(
                    &key,
                    LockOptions::new(Duration::from_secs(120), Duration::from_secs(10)),
                )
                .await
                .expect("acquire within the wait");
            let seen: Option<u64> = redis.get(&counter).await.expect("GET counter");
            tokio::task::yield_now().await;
            let () = redis
                .set(&counter, seen.unwrap_or(0) + 1)
                .await
                .expect("SET counter");
            guard.release().await.expect("still held at release");
        }));
    }
    within(Duration::from_secs(300), async {
        for task in tasks {
            task.await.expect("contender panicked");
        }
    })
    .await;
    let mut redis = redis;
    let total: u64 = redis.get(counter).await.expect("GET counter");
    assert_eq!(
        total, contenders as u64,
        "lost updates: the lock let two holders in"
    );
}

/// A holder whose lease ran out cannot release the lock a newer holder took.
pub(crate) async fn only_owner_releases<L: DistributedLock>(lock: &L, key: &str) {
    let stale = lock
        .acquire(key, options(0, 200).without_watchdog())
        .await
        .expect("free key");
    let current = lock
        .acquire(key, options(5_000, 10_000))
        .await
        .expect("taken after the lease");
    match stale.release().await {
        Err(Error::LockLost { keys }) => assert_eq!(keys, vec![key.to_owned()]),
        other => panic!("stale release must report the lost lock, got {other:?}"),
    }
    let busy = lock.acquire(key, options(0, 10_000)).await;
    assert!(
        matches!(busy, Err(Error::WaitTimeout { .. })),
        "the stale release freed the new holder's lock: {busy:?}"
    );
    current.release().await.expect("the owner releases");
}

/// The watchdog keeps a hold alive over several leases; release then frees it.
pub(crate) async fn watchdog_keeps_long_hold<L: DistributedLock>(lock: &L, key: &str) {
    let guard = lock.acquire(key, options(0, 300)).await.expect("free key");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(!guard.is_lost(), "the watchdog let the lease lapse");
    let other = lock.acquire(key, options(0, 300)).await;
    assert!(matches!(other, Err(Error::WaitTimeout { .. })), "{other:?}");
    guard.release().await.expect("still held after four leases");
    let again = lock
        .acquire(key, options(0, 300))
        .await
        .expect("free after release");
    again.release().await.expect("release");
}

/// Without a watchdog nobody renews: the lease's end is the loss, and `lost()` fires for it
/// (not before most of the lease has run).
pub(crate) async fn lost_without_watchdog<L: DistributedLock>(lock: &L, key: &str) {
    let started = Instant::now();
    let guard = lock
        .acquire(key, options(0, 300).without_watchdog())
        .await
        .expect("free key");
    within(Duration::from_secs(10), guard.lost()).await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "lost() fired long before the lease ended: {:?}",
        started.elapsed()
    );
    // lost() fires a little before the store drops the key, so this release may still find
    // it: either outcome is fine here.
    let _ = guard.release().await;
}

/// A bounded wait ends in a typed error naming the key.
pub(crate) async fn wait_timeout_is_typed<L: DistributedLock>(lock: &L, key: &str) {
    let holder = lock
        .acquire(key, options(0, 10_000))
        .await
        .expect("free key");
    let started = Instant::now();
    match within(
        Duration::from_secs(10),
        lock.acquire(key, options(200, 10_000)),
    )
    .await
    {
        Err(Error::WaitTimeout {
            key: blocked,
            waited,
        }) => {
            assert_eq!(blocked, key);
            assert!(
                waited >= Duration::from_millis(200),
                "gave up early: {waited:?}"
            );
        }
        other => panic!("expected WaitTimeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    holder.release().await.expect("release");
}

/// Multi-key acquire takes every key or none, and hands out a fencing token per key.
pub(crate) async fn multi_key_all_or_nothing<L: DistributedLock>(lock: &L, prefix: &str) {
    let (k1, k2, k3) = (
        format!("{prefix}:1"),
        format!("{prefix}:2"),
        format!("{prefix}:3"),
    );
    let middle = lock
        .acquire(&k2, options(0, 10_000))
        .await
        .expect("free key");
    match lock
        .acquire_many(&[&k3, &k1, &k2], options(0, 10_000))
        .await
    {
        Err(Error::WaitTimeout { key, .. }) => assert_eq!(key, k2),
        other => panic!("expected WaitTimeout on {k2}, got {other:?}"),
    }
    // Nothing was taken by the failed attempt.
    let outer = lock
        .acquire_many(&[&k1, &k3], options(0, 10_000))
        .await
        .expect("k1 and k3 stayed free");
    outer.release().await.expect("release");
    middle.release().await.expect("release");

    let all = lock
        .acquire_many(&[&k3, &k1, &k2, &k1], options(0, 10_000))
        .await
        .expect("all free");
    assert_eq!(
        all.keys(),
        [k1.clone(), k2.clone(), k3.clone()],
        "sorted, deduplicated"
    );
    for key in [&k1, &k2, &k3] {
        assert!(
            all.fencing_token(key).is_some(),
            "no fencing token for {key}"
        );
    }
    assert!(all.fencing_token("not-held").is_none());
    all.release().await.expect("release");
}

/// Fencing tokens grow per key across holders; returns the last one handed out.
pub(crate) async fn fencing_tokens_grow<L: DistributedLock>(lock: &L, key: &str) -> FencingToken {
    let first = lock
        .acquire(key, options(0, 10_000))
        .await
        .expect("free key");
    let first_token = first.fencing_token(key).expect("token");
    first.release().await.expect("release");
    let second = lock
        .acquire(key, options(0, 10_000))
        .await
        .expect("free key");
    let second_token = second.fencing_token(key).expect("token");
    assert!(second_token > first_token);
    second.release().await.expect("release");
    second_token
}

/// A holder paused past its lease writes with an old fencing token; the documented Postgres
/// pattern refuses it after the newer holder wrote.
pub(crate) async fn stale_fence_refused_by_postgres<L: DistributedLock>(
    lock: &L,
    pool: &sqlx::PgPool,
    key: &str,
) {
    sqlx::query(
        "CREATE TABLE product_stock (product_id BIGINT PRIMARY KEY, quantity INT NOT NULL, lock_fence BIGINT NOT NULL DEFAULT 0)",
    )
    .execute(pool)
    .await
    .expect("create table");
    sqlx::query("INSERT INTO product_stock (product_id, quantity) VALUES (1, 10)")
        .execute(pool)
        .await
        .expect("seed");
    let write = |fence: i64| {
        sqlx::query(
            "UPDATE product_stock SET quantity = quantity - 1, lock_fence = $1 WHERE product_id = 1 AND lock_fence <= $1",
        )
        .bind(fence)
        .execute(pool)
    };

    let paused = lock
        .acquire(key, options(0, 200).without_watchdog())
        .await
        .expect("free key");
    let paused_fence = paused.fencing_token(key).expect("token").as_i64();
    tokio::time::sleep(Duration::from_millis(400)).await; // the "GC pause"
    let current = lock
        .acquire(key, options(5_000, 10_000))
        .await
        .expect("lease expired");
    let current_fence = current.fencing_token(key).expect("token").as_i64();
    assert!(current_fence > paused_fence);
    assert_eq!(
        write(current_fence).await.expect("update").rows_affected(),
        1
    );
    assert_eq!(
        write(current_fence).await.expect("update").rows_affected(),
        1,
        "same holder writes twice"
    );
    assert_eq!(
        write(paused_fence).await.expect("update").rows_affected(),
        0,
        "the stale holder's write went through"
    );
    let quantity: i32 =
        sqlx::query_scalar("SELECT quantity FROM product_stock WHERE product_id = 1")
            .fetch_one(pool)
            .await
            .expect("select");
    assert_eq!(quantity, 8);
    current.release().await.expect("release");
    assert!(matches!(
        paused.release().await,
        Err(Error::LockLost { .. })
    ));
}

/// A holder that dies (its runtime, hence its watchdog, is gone; its guard never released)
/// frees the key once the lease runs out.
pub(crate) async fn dead_holder_freed_after_lease<L: DistributedLock + Clone + 'static>(
    lock: L,
    key: &str,
) {
    let holder = lock.clone();
    let held_key = key.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("holder runtime");
        runtime.block_on(async {
            let guard = holder
                .acquire(&held_key, options(0, 500))
                .await
                .expect("free key");
            std::mem::forget(guard);
        });
        // Dropping the runtime kills the watchdog, like a crashed process.
    })
    .join()
    .expect("holder thread");
    let busy = lock.acquire(key, options(0, 10_000)).await;
    assert!(matches!(busy, Err(Error::WaitTimeout { .. })), "{busy:?}");
    let guard = within(
        Duration::from_secs(10),
        lock.acquire(key, options(5_000, 10_000)),
    )
    .await
    .expect("freed after the dead holder's lease");
    guard.release().await.expect("release");
}

/// A waiter is woken by the release itself: its only timers (lease, re-check) are far longer
/// than the wait it gets to observe.
pub(crate) async fn waiter_woken_by_release<L: DistributedLock + Clone + 'static>(
    lock: L,
    key: &str,
) {
    let holder = lock
        .acquire(key, options(0, 60_000))
        .await
        .expect("free key");
    let waiter_lock = lock.clone();
    let waiter_key = key.to_owned();
    let waiter = tokio::spawn(async move {
        waiter_lock
            .acquire(&waiter_key, options(30_000, 60_000))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.release().await.expect("release");
    let guard = within(Duration::from_secs(10), waiter)
        .await
        .expect("waiter task")
        .expect("waiter acquires");
    guard.release().await.expect("release");
}

/// A guard dropped without `release` still frees the key (released in the background).
pub(crate) async fn dropped_guard_releases<L: DistributedLock>(lock: &L, key: &str) {
    {
        let _guard = lock
            .acquire(key, options(0, 60_000))
            .await
            .expect("free key");
    }
    let guard = within(
        Duration::from_secs(10),
        lock.acquire(key, options(30_000, 60_000)),
    )
    .await
    .expect("freed by the dropped guard");
    guard.release().await.expect("release");
}

/// A panic in the critical section still frees the key.
pub(crate) async fn panic_releases<L: DistributedLock + Clone + 'static>(lock: L, key: &str) {
    let panicking = lock.clone();
    let panicking_key = key.to_owned();
    let outcome = tokio::spawn(async move {
        let _guard = panicking
            .acquire(&panicking_key, options(0, 60_000))
            .await
            .expect("free key");
        panic!("boom inside the critical section");
    })
    .await;
    assert!(outcome.is_err_and(|e| e.is_panic()));
    let guard = within(
        Duration::from_secs(10),
        lock.acquire(key, options(30_000, 60_000)),
    )
    .await
    .expect("freed after the panic");
    guard.release().await.expect("release");
}

/// Bad requests are typed errors, not panics.
pub(crate) async fn invalid_requests_rejected<L: DistributedLock>(lock: &L) {
    assert!(matches!(
        lock.acquire_many(&[], options(0, 1_000)).await,
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        lock.acquire("", options(0, 1_000)).await,
        Err(Error::Invalid { .. })
    ));
    let zero_lease = LockOptions::new(Duration::ZERO, Duration::ZERO);
    assert!(matches!(
        lock.acquire("k", zero_lease).await,
        Err(Error::Invalid { .. })
    ));
}

/// `Duration::MAX` ("forever") as wait or lease is accepted, never a panic: on a free key,
/// on a contended key, with and without a watchdog.
pub(crate) async fn extreme_durations<L: DistributedLock + Clone + 'static>(lock: L, key: &str) {
    let forever = Duration::MAX;
    for lease_options in [
        LockOptions::new(forever, forever),
        LockOptions::new(forever, forever).without_watchdog(),
    ] {
        let guard = within(Duration::from_secs(10), lock.acquire(key, lease_options))
            .await
            .expect("a free key is taken at once");
        assert!(guard.fencing_token(key).is_some());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !guard.is_lost(),
            "a lease of Duration::MAX was lost at once"
        );
        guard.release().await.expect("release");
    }
    let holder = lock
        .acquire(key, options(0, 60_000))
        .await
        .expect("free key");
    let waiter_lock = lock.clone();
    let waiter_key = key.to_owned();
    let waiter = tokio::spawn(async move {
        waiter_lock
            .acquire(&waiter_key, LockOptions::new(forever, forever))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    holder.release().await.expect("release");
    within(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter did not panic")
        .expect("the waiter takes the released key")
        .release()
        .await
        .expect("release");
}
