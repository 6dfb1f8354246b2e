//! Calls whose outcome the caller never learns (a future dropped mid-flight, a reply that
//! comes too late) must not leave the key held for the whole lease.

mod common;

use std::time::Duration;

use commerce_lock::{DistributedLock, Error, RedisLock};
use commerce_testkit::{eventually, PrivateRedis, TcpProxy};
use redis::AsyncCommands;

use common::{namespace, options, within};

/// The lease of every lock taken here: far longer than any test waits, so a key that goes
/// away was released, not expired.
const LONG_LEASE_MS: u64 = 60_000;

/// A private server behind a proxy that can slow its replies, a lock client through the
/// proxy, and a direct connection.
struct SlowReplies {
    _server: PrivateRedis,
    namespace: String,
    proxy: TcpProxy,
    lock: RedisLock,
    direct: redis::aio::MultiplexedConnection,
}

impl SlowReplies {
    async fn start(response_timeout: Duration) -> Self {
        let server = PrivateRedis::start().await;
        let proxy = TcpProxy::start(format!("127.0.0.1:{}", server.port())).await;
        let namespace = namespace();
        let lock = RedisLock::builder(format!("redis://{}", proxy.address()))
            .namespace(&namespace)
            .connect_timeout(Duration::from_secs(1))
            .response_timeout(response_timeout)
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
            namespace,
            proxy,
            lock,
            direct,
        }
    }

    /// Loads the acquire and release scripts, so the next acquire runs on its first request
    /// (a fresh server would answer NOSCRIPT first, and the script would only run later).
    async fn load_scripts(&self) {
        self.lock
            .acquire("warm-up", options(0, LONG_LEASE_MS))
            .await
            .expect("free key")
            .release()
            .await
            .expect("release");
    }

    async fn exists(&self, key: &str) -> bool {
        let mut direct = self.direct.clone();
        direct
            .exists(self.lock.redis_key(key))
            .await
            .expect("EXISTS")
    }

    /// Whether an acquire script ran for `key`: it leaves the fence counter behind.
    async fn fenced(&self, key: &str) -> bool {
        let mut direct = self.direct.clone();
        direct
            .exists(format!("{}:fence:{key}", self.namespace))
            .await
            .expect("EXISTS")
    }

    /// Whether `key` disappears within a few seconds (well before its lease ends).
    async fn freed_soon(&self, key: &str) -> bool {
        eventually(Duration::from_secs(5), || async { !self.exists(key).await }).await
    }
}

/// Review L3: the caller gives up (here a timeout; in production a client disconnect)
/// after the acquire script ran but before its reply arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_dropped_in_flight_does_not_keep_the_key() {
    let setup = SlowReplies::start(Duration::from_secs(5)).await;
    setup.load_scripts().await;
    setup.proxy.delay_replies(Duration::from_millis(500));
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        setup.lock.acquire("k", options(0, LONG_LEASE_MS)),
    )
    .await;
    assert!(gave_up.is_err(), "the acquire should still be in flight");
    assert!(
        eventually(Duration::from_secs(5), || setup.fenced("k")).await,
        "the acquire script did not run"
    );
    assert!(
        setup.freed_soon("k").await,
        "the dropped acquire's key is held for the whole lease"
    );
    setup.proxy.forward();
    let again = within(
        Duration::from_secs(10),
        setup.lock.acquire("k", options(0, LONG_LEASE_MS)),
    )
    .await
    .expect("free again");
    again.release().await.expect("release");
    within(Duration::from_secs(10), setup.lock.shutdown()).await;
}

/// Review L3: the reply comes after the response timeout; the caller gets `Unavailable`, but
/// the script ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_whose_reply_timed_out_does_not_keep_the_key() {
    let setup = SlowReplies::start(Duration::from_millis(300)).await;
    setup.load_scripts().await;
    setup.proxy.delay_replies(Duration::from_millis(1_500));
    let outcome = within(
        Duration::from_secs(10),
        setup.lock.acquire("k", options(0, LONG_LEASE_MS)),
    )
    .await;
    assert!(
        matches!(outcome, Err(Error::Unavailable { .. })),
        "expected Unavailable, got {outcome:?}"
    );
    assert!(
        setup.freed_soon("k").await,
        "the timed-out acquire's key is held for the whole lease"
    );
    setup.proxy.forward();
    within(Duration::from_secs(10), setup.lock.shutdown()).await;
}

/// Review L7: a `release()` cancelled before its script ran must still release. Here the
/// release script is not loaded yet (as after a Redis restart), so the first request only
/// gets NOSCRIPT, and the cancelled future never sends the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_dropped_before_its_script_ran_still_releases() {
    let setup = SlowReplies::start(Duration::from_secs(5)).await;
    let guard = setup
        .lock
        .acquire("k", options(0, LONG_LEASE_MS))
        .await
        .expect("free key");
    setup.proxy.delay_replies(Duration::from_millis(300));
    let gave_up = tokio::time::timeout(Duration::from_millis(50), guard.release()).await;
    assert!(gave_up.is_err(), "the release should still be in flight");
    assert!(
        setup.freed_soon("k").await,
        "the cancelled release left the key held for the whole lease"
    );
    setup.proxy.forward();
    within(Duration::from_secs(10), setup.lock.shutdown()).await;
}
