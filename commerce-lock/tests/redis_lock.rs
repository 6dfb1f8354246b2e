//! `RedisLock` against the real Redis (and private servers for outages).

mod common;

use std::time::Duration;

use commerce_lock::{DistributedLock, Error, LockOptions, RedisLock};
use commerce_testkit::{redis_url, TestDb};
use redis::AsyncCommands;

use commerce_testkit::{free_port, PrivateRedis};
use common::{behaviour, namespace, options, plain_connection, redis_lock, within};

/// A client whose waiters never re-check on a timer within a test's lifetime: anything that
/// wakes them early is a release notice.
async fn notice_only_lock(namespace: &str) -> RedisLock {
    RedisLock::builder(redis_url())
        .namespace(namespace)
        .max_recheck(Duration::from_secs(600))
        .connect()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_contenders_on_two_clients_never_lose_an_update() {
    let ns = namespace();
    let (a, b) = (redis_lock(&ns).await, redis_lock(&ns).await);
    behaviour::mutual_exclusion(
        a.clone(),
        b.clone(),
        "counter-lock",
        &format!("{ns}:counter"),
        1_000,
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_releases() {
    behaviour::only_owner_releases(&redis_lock(&namespace()).await, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_keeps_a_long_hold_alive() {
    behaviour::watchdog_keeps_long_hold(&redis_lock(&namespace()).await, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_stops_the_watchdog_for_good() {
    let lock = redis_lock(&namespace()).await;
    let mut redis = plain_connection().await;
    let guard = lock.acquire("k", options(0, 150)).await.expect("free key");
    tokio::time::sleep(Duration::from_millis(400)).await; // a few renewals
    guard.release().await.expect("release");
    let key = lock.redis_key("k");
    let exists: bool = redis.exists(&key).await.expect("EXISTS");
    assert!(!exists, "key still there after release");
    tokio::time::sleep(Duration::from_millis(500)).await; // longer than several renew periods
    let exists: bool = redis.exists(&key).await.expect("EXISTS");
    assert!(!exists, "a renewal resurrected the released key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_is_a_typed_error() {
    behaviour::wait_timeout_is_typed(&redis_lock(&namespace()).await, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_acquire_is_all_or_nothing() {
    behaviour::multi_key_all_or_nothing(&redis_lock(&namespace()).await, "stock").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_grow_across_holders_and_clients() {
    let ns = namespace();
    let last = behaviour::fencing_tokens_grow(&redis_lock(&ns).await, "k").await;
    // A second client continues the same sequence.
    let other = redis_lock(&ns).await;
    let guard = other
        .acquire("k", options(0, 10_000))
        .await
        .expect("free key");
    assert!(guard.fencing_token("k").expect("token") > last);
    guard.release().await.expect("release");
}

/// Review L4: the fence counter comes back lower than the last token handed out (a restart
/// without persistence, a failover to a replica that missed the last INCRs, an eviction).
/// The next holder must still get a greater token, or two holders would carry the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_grow_after_the_counter_is_partly_or_wholly_lost() {
    let ns = namespace();
    let lock = redis_lock(&ns).await;
    let mut redis = plain_connection().await;
    let fence_key = format!("{ns}:fence:k");
    let first = lock
        .acquire("k", options(0, 10_000))
        .await
        .expect("free key");
    let first_token = first.fencing_token("k").expect("token");
    first.release().await.expect("release");

    let () = redis
        .set(&fence_key, first_token.get() - 1)
        .await
        .expect("SET the counter back");
    let second = lock
        .acquire("k", options(0, 10_000))
        .await
        .expect("free key");
    let second_token = second.fencing_token("k").expect("token");
    assert!(
        second_token > first_token,
        "token {second_token} re-issued after partial counter loss (first holder had {first_token})"
    );
    second.release().await.expect("release");

    let () = redis.del(&fence_key).await.expect("DEL the counter");
    let third = lock
        .acquire("k", options(0, 10_000))
        .await
        .expect("free key");
    let third_token = third.fencing_token("k").expect("token");
    assert!(
        third_token > second_token,
        "token {third_token} after the counter was lost, below the earlier {second_token}"
    );
    third.release().await.expect("release");
}

/// Review L5, on Redis. The guard's watchdog must also survive a lease of `Duration::MAX`:
/// if its task died, shutdown would not fire `lost()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_max_as_wait_or_lease_never_panics() {
    let lock = redis_lock(&namespace()).await;
    behaviour::extreme_durations(lock.clone(), "k").await;
    let forever = LockOptions::new(Duration::MAX, Duration::MAX);
    let guard = lock.acquire("held", forever).await.expect("free key");
    let unwatched = lock
        .acquire("held-too", forever.without_watchdog())
        .await
        .expect("free key");
    tokio::time::sleep(Duration::from_millis(50)).await;
    within(Duration::from_secs(10), lock.shutdown()).await;
    assert!(guard.is_lost(), "the watchdog task died");
    assert!(unwatched.is_lost(), "the lease timer task died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_fencing_token_is_refused_by_postgres() {
    let db = TestDb::new(&[]).await;
    behaviour::stale_fence_refused_by_postgres(
        &redis_lock(&namespace()).await,
        db.pool(),
        "stock:1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_fencing_token_is_refused_by_redis_write() {
    let ns = namespace();
    let lock = redis_lock(&ns).await;
    let resource = format!("{ns}:stock:1");
    let paused = lock
        .acquire("stock:1", options(0, 200).without_watchdog())
        .await
        .expect("free");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let current = lock
        .acquire("stock:1", options(5_000, 10_000))
        .await
        .expect("lease expired");
    let (old, new) = (
        paused.fencing_token("stock:1").expect("token"),
        current.fencing_token("stock:1").expect("token"),
    );
    lock.write_fenced(&resource, "9", new)
        .await
        .expect("current holder writes");
    match lock.write_fenced(&resource, "stale", old).await {
        Err(Error::StaleFencingToken { token, newest, .. }) => {
            assert_eq!((token, newest), (old.get(), new.get()));
        }
        other => panic!("stale write accepted: {other:?}"),
    }
    let stored: String = plain_connection().await.get(&resource).await.expect("GET");
    assert_eq!(stored, "9");
    current.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_holder_is_freed_after_its_lease() {
    behaviour::dead_holder_freed_after_lease(redis_lock(&namespace()).await, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_is_woken_by_the_release_notice() {
    let ns = namespace();
    behaviour::waiter_woken_by_release(notice_only_lock(&ns).await, "k").await;
    // Across clients too: the notice goes through Redis pub/sub.
    let (holder_lock, waiter_lock) = (notice_only_lock(&ns).await, notice_only_lock(&ns).await);
    let holder = holder_lock
        .acquire("k2", options(0, 60_000))
        .await
        .expect("free key");
    let waiter =
        tokio::spawn(async move { waiter_lock.acquire("k2", options(30_000, 60_000)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.release().await.expect("release");
    within(Duration::from_secs(10), waiter)
        .await
        .expect("task")
        .expect("woken")
        .release()
        .await
        .expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_guard_still_releases() {
    behaviour::dropped_guard_releases(&notice_only_lock(&namespace()).await, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_critical_section_releases() {
    behaviour::panic_releases(notice_only_lock(&namespace()).await, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_typed_errors() {
    behaviour::invalid_requests_rejected(&redis_lock(&namespace()).await).await;
    let bad_url = RedisLock::connect("not a url").await;
    assert!(matches!(bad_url, Err(Error::Invalid { .. })), "{bad_url:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_key_fires_the_lost_signal() {
    let lock = redis_lock(&namespace()).await;
    let guard = lock.acquire("k", options(0, 300)).await.expect("free key");
    let () = plain_connection()
        .await
        .del(lock.redis_key("k"))
        .await
        .expect("DEL");
    within(Duration::from_secs(10), guard.lost()).await;
    assert!(matches!(guard.release().await, Err(Error::LockLost { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_fails_fast_with_a_typed_error() {
    let closed = format!("redis://127.0.0.1:{}", free_port());
    match within(Duration::from_secs(10), RedisLock::connect(closed)).await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_down_fails_closed() {
    let mut server = PrivateRedis::start().await;
    let lock = RedisLock::builder(server.url())
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .expect("connect to the private server");
    let held = lock
        .acquire("held", options(0, 900))
        .await
        .expect("free key");
    server.stop();
    match within(
        Duration::from_secs(10),
        lock.acquire("other", options(1_000, 1_000)),
    )
    .await
    {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // The watchdog cannot renew: the holder is told before the lease could have run out.
    within(Duration::from_secs(10), held.lost()).await;
    assert!(within(Duration::from_secs(10), held.release())
        .await
        .is_err());
    within(Duration::from_secs(10), lock.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fires_lost_and_refuses_new_locks() {
    let lock = redis_lock(&namespace()).await;
    let guard = lock
        .acquire("k", options(0, 10_000))
        .await
        .expect("free key");
    lock.shutdown().await;
    assert!(guard.is_lost());
    assert!(matches!(
        lock.acquire("k2", options(0, 1_000)).await,
        Err(Error::ShutDown)
    ));
}
