//! The lost-lease signal fires before the lease can have run out on the server, whatever the
//! renewal is doing (a black-holed network) and with no watchdog at all, and
//! `#[redis_lock(watchdog = false)]` cancels its body before a second holder gets in.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use commerce_lock::{redis_lock, DistributedLock, Error, LocalLock, LockGuard, RedisLock};
use commerce_testkit::{PrivateRedis, TcpProxy};
use redis::AsyncCommands;
use tokio::time::Instant;

use common::{behaviour, namespace, options, redis_lock, within};

/// A private server, a proxy in front of it, a lock client going through the proxy, and a
/// direct connection that sees the server's truth.
struct Partitioned {
    _server: PrivateRedis,
    proxy: TcpProxy,
    lock: RedisLock,
    direct: redis::aio::MultiplexedConnection,
}

impl Partitioned {
    async fn start() -> Self {
        let server = PrivateRedis::start().await;
        let proxy = TcpProxy::start(format!("127.0.0.1:{}", server.port())).await;
        let lock = RedisLock::builder(format!("redis://{}", proxy.address()))
            .namespace(namespace())
            .connect_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1))
            .connect()
            .await
            .expect("connect through the proxy");
        let direct = redis::Client::open(server.url())
            .expect("private server URL")
            .get_multiplexed_async_connection()
            .await
            .expect("direct connection");
        Self {
            _server: server,
            proxy,
            lock,
            direct,
        }
    }

    /// When the server dropped `key`, polled every 10 ms on the direct connection.
    fn expiry(&self, key: &str) -> tokio::task::JoinHandle<Instant> {
        let mut direct = self.direct.clone();
        let redis_key = self.lock.redis_key(key);
        tokio::spawn(async move {
            loop {
                let exists: bool = direct.exists(&redis_key).await.expect("EXISTS");
                if !exists {
                    return Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    }
}

/// Review L1: a renewal that hangs (no reply, no reset) must not delay the lost signal past
/// the server-side expiry. The renewal's own timeouts (1 s connect + 1 s response) are longer
/// than the whole lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_before_the_server_expires_the_key_when_renewals_hang() {
    let setup = Partitioned::start().await;
    let guard = setup
        .lock
        .acquire("k", options(0, 900))
        .await
        .expect("free key");
    setup.proxy.black_hole();
    let expired = setup.expiry("k");
    within(Duration::from_secs(10), guard.lost()).await;
    let t_lost = Instant::now();
    let t_expired = within(Duration::from_secs(10), expired)
        .await
        .expect("expiry poller");
    assert!(
        t_lost < t_expired,
        "lost() fired {:?} after the key expired on the server",
        t_lost - t_expired
    );
    setup.proxy.forward();
    drop(guard);
    within(Duration::from_secs(10), setup.lock.shutdown()).await;
}

/// Review L2, on the guard: without a watchdog nobody renews, so the lease's end is the loss,
/// and the holder must hear of it before the server drops the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_at_the_end_of_the_lease_without_a_watchdog() {
    let setup = Partitioned::start().await;
    let guard = setup
        .lock
        .acquire("k", options(0, 900).without_watchdog())
        .await
        .expect("free key");
    let expired = setup.expiry("k");
    within(Duration::from_secs(10), guard.lost()).await;
    let t_lost = Instant::now();
    let t_expired = within(Duration::from_secs(10), expired)
        .await
        .expect("expiry poller");
    assert!(
        t_lost < t_expired,
        "lost() fired {:?} after the key expired on the server",
        t_lost - t_expired
    );
    assert!(matches!(guard.release().await, Err(Error::LockLost { .. })));
    within(Duration::from_secs(10), setup.lock.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_guard_without_watchdog_is_told_of_lease_end_and_shutdown() {
    let lock = redis_lock(&namespace()).await;
    behaviour::lost_without_watchdog(&lock, "k").await;
    let guard = lock
        .acquire("held", options(0, 60_000).without_watchdog())
        .await
        .expect("free key");
    within(Duration::from_secs(10), lock.shutdown()).await;
    assert!(guard.is_lost(), "shutdown did not fire lost()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_guard_without_watchdog_is_told_of_lease_end_and_shutdown() {
    let lock = LocalLock::new();
    behaviour::lost_without_watchdog(&lock, "k").await;
    let guard = lock
        .acquire("held", options(0, 60_000).without_watchdog())
        .await
        .expect("free key");
    within(Duration::from_secs(10), lock.shutdown()).await;
    assert!(guard.is_lost(), "shutdown did not fire lost()");
}

#[derive(Debug)]
enum JobError {
    Lock(Error),
}

impl From<Error> for JobError {
    fn from(error: Error) -> Self {
        Self::Lock(error)
    }
}

/// Records when the body future is dropped (cancelled), i.e. when it stopped running.
struct StoppedAt<'a>(&'a Mutex<Option<Instant>>);

impl Drop for StoppedAt<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }
}

/// Outlives its 300 ms lease; with the default `on_lost = "cancel"` it must be cancelled
/// before the lease ends.
#[redis_lock(key = "job:{id}", lease = "300ms", watchdog = false)]
async fn slow_job(
    lock: &impl DistributedLock,
    id: u32,
    stopped_at: &Mutex<Option<Instant>>,
    finished: &AtomicBool,
) -> Result<(), JobError> {
    let _stopped = StoppedAt(stopped_at);
    tokio::time::sleep(Duration::from_secs(3)).await;
    finished.store(true, Ordering::SeqCst);
    Ok(())
}

/// Review L2, through the macro: a second caller waiting for the key must not get it while
/// the first body still runs.
async fn body_stops_before_the_next_holder_gets_in<L: DistributedLock + Clone + 'static>(lock: L) {
    let stopped_at = Arc::new(Mutex::new(None));
    let finished = Arc::new(AtomicBool::new(false));
    let first = {
        let (lock, stopped_at, finished) = (lock.clone(), stopped_at.clone(), finished.clone());
        tokio::spawn(async move { slow_job(&lock, 1, &stopped_at, &finished).await })
    };
    // Let the first call take the key before the second starts waiting for it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second: LockGuard = within(
        Duration::from_secs(10),
        lock.acquire("job:1", options(5_000, 10_000)),
    )
    .await
    .expect("the key is free after the first lease");
    let second_acquired = Instant::now();
    let outcome = within(Duration::from_secs(10), first)
        .await
        .expect("first call's task");
    let stopped_at = stopped_at
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .expect("the body ran and stopped");
    assert!(
        matches!(outcome, Err(JobError::Lock(Error::LockLost { .. }))),
        "the first call should report the lost lock, got {outcome:?}"
    );
    assert!(
        !finished.load(Ordering::SeqCst),
        "the body ran to its end past its lease"
    );
    assert!(
        stopped_at < second_acquired,
        "the first body still ran {:?} after the second holder got the key",
        stopped_at - second_acquired
    );
    second.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn macro_without_watchdog_cancels_the_body_before_a_second_redis_holder() {
    body_stops_before_the_next_holder_gets_in(redis_lock(&namespace()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn macro_without_watchdog_cancels_the_body_before_a_second_local_holder() {
    body_stops_before_the_next_holder_gets_in(LocalLock::new()).await;
}
