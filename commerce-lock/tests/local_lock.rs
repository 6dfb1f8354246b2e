//! `LocalLock`: the same behaviour in-process.

mod common;

use std::time::Duration;

use commerce_lock::{DistributedLock, Error, LocalLock, LockOptions};
use commerce_testkit::TestDb;

use common::{behaviour, namespace, options, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_contenders_never_lose_an_update() {
    let lock = LocalLock::new();
    let counter = format!("{}:counter", namespace());
    behaviour::mutual_exclusion(lock.clone(), lock.clone(), "counter-lock", &counter, 1_000).await;
    lock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_releases() {
    behaviour::only_owner_releases(&LocalLock::new(), "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_keeps_a_long_hold_alive() {
    behaviour::watchdog_keeps_long_hold(&LocalLock::new(), "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_is_a_typed_error() {
    behaviour::wait_timeout_is_typed(&LocalLock::new(), "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_acquire_is_all_or_nothing() {
    behaviour::multi_key_all_or_nothing(&LocalLock::new(), "stock").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_grow_across_holders() {
    let _ = behaviour::fencing_tokens_grow(&LocalLock::new(), "k").await;
}

/// Review L4 for the in-process lock: its counters die with the process, so a restarted
/// process (here a second `LocalLock`) must still hand out greater tokens than the old one,
/// or a fenced store would take its writes as stale until reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_grow_across_lock_instances() {
    let last = behaviour::fencing_tokens_grow(&LocalLock::new(), "k").await;
    let restarted = LocalLock::new();
    let guard = restarted
        .acquire("k", options(0, 10_000))
        .await
        .expect("free key");
    let token = guard.fencing_token("k").expect("token");
    assert!(
        token > last,
        "a new lock table handed out {token}, not above the old one's {last}"
    );
    guard.release().await.expect("release");
}

/// Review L5, in-process; see the Redis twin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_max_as_wait_or_lease_never_panics() {
    let lock = LocalLock::new();
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
    behaviour::stale_fence_refused_by_postgres(&LocalLock::new(), db.pool(), "stock:1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_holder_is_freed_after_its_lease() {
    behaviour::dead_holder_freed_after_lease(LocalLock::new(), "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_is_woken_by_the_release() {
    behaviour::waiter_woken_by_release(LocalLock::new(), "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_guard_still_releases() {
    behaviour::dropped_guard_releases(&LocalLock::new(), "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_critical_section_releases() {
    behaviour::panic_releases(LocalLock::new(), "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_typed_errors() {
    behaviour::invalid_requests_rejected(&LocalLock::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fires_lost_and_refuses_new_locks() {
    let lock = LocalLock::new();
    let guard = lock
        .acquire("k", options(0, 10_000))
        .await
        .expect("free key");
    within(Duration::from_secs(10), lock.shutdown()).await;
    assert!(guard.is_lost());
    assert!(matches!(
        lock.acquire("k2", options(0, 1_000)).await,
        Err(Error::ShutDown)
    ));
}

/// Leases run on tokio's clock, so expiry can be tested without waiting.
#[tokio::test(start_paused = true)]
async fn lease_expiry_follows_the_paused_clock() {
    let lock = LocalLock::new();
    let guard = lock
        .acquire("k", options(0, 10_000).without_watchdog())
        .await
        .expect("free key");
    let waiter = lock.acquire("k", options(60_000, 10_000));
    // The waiter sleeps until the lease ends (no notice comes); the paused clock jumps there.
    let next = waiter.await.expect("lease expired on the virtual clock");
    assert!(next.fencing_token("k") > guard.fencing_token("k"));
    assert!(matches!(guard.release().await, Err(Error::LockLost { .. })));
    next.release().await.expect("release");
}
