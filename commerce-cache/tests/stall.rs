//! A slow Redis is not a lost subscription (review C8): the invalidation heartbeat has a
//! timeout of its own, so a stall of a few hundred ms does not make every node drop its L1.

mod common;

use std::time::Duration;

use commerce_cache::TwoLevelCache;
use commerce_testkit::{unique_name, PrivateRedis, TcpProxy};
use common::{eventually, LoadFailed, Product};

const KEYS: [&str; 3] = ["p:1", "p:2", "p:3"];

async fn node_at(url: &str, prefix: &str) -> TwoLevelCache<Product> {
    TwoLevelCache::<Product>::builder("products")
        .key_prefix(format!("{prefix}:"))
        .redis(redis::Client::open(url).expect("url"))
        .build()
        .await
        .expect("build")
}

async fn fill_l1(cache: &TwoLevelCache<Product>) {
    for key in KEYS {
        cache
            .get_or_load(key, || async {
                Ok::<_, LoadFailed>(Some(Product::new(1, key)))
            })
            .await
            .expect("read");
        assert!(cache.contains_local(key));
    }
}

fn assert_l1_kept(nodes: &[&TwoLevelCache<Product>]) {
    for (n, node) in nodes.iter().enumerate() {
        assert_eq!(node.metrics().resyncs, 0, "node {n} resynced");
        for key in KEYS {
            assert!(node.contains_local(key), "node {n} dropped {key} from L1");
        }
    }
}

// Every reply (heartbeat PINGs included) arrives 300 ms late for 3.5 s: longer than the L2
// timeout (200 ms), far shorter than a lost connection.
#[tokio::test]
async fn replies_300ms_late_do_not_flush_any_nodes_l1() {
    let redis = PrivateRedis::start().await;
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port())).await;
    let url = format!("redis://{}", proxy.address());
    let prefix = unique_name("cache-slow");
    let (a, b) = (node_at(&url, &prefix).await, node_at(&url, &prefix).await);
    fill_l1(&a).await;
    fill_l1(&b).await;

    proxy.delay_replies(Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    proxy.forward();
    // Long enough for a reconnect (and its resync) to have happened if the stall was taken
    // for a loss.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_l1_kept(&[&a, &b]);

    // The subscription is still the live one: a write still reaches the other node.
    a.evict("p:1").await.expect("evict");
    assert!(eventually(Duration::from_secs(1), || !b.contains_local("p:1")).await);
}

/// Blocks the whole server (every client) for `micros`, as a big `DEL`, a `KEYS` or a fork
/// for `BGSAVE` would. (`DEBUG SLEEP` is refused by a default `redis-server`.)
const STALL: &str = r"
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local start = now()
while now() - start < tonumber(ARGV[1]) do end
return 1
";

// One stall of the real server, longer than a heartbeat period, so a heartbeat certainly
// waits through most of it.
#[tokio::test]
async fn a_redis_stall_shorter_than_the_heartbeat_timeout_does_not_flush_l1() {
    let redis = PrivateRedis::start().await;
    let prefix = unique_name("cache-stall");
    let (a, b) = (
        node_at(&redis.url(), &prefix).await,
        node_at(&redis.url(), &prefix).await,
    );
    fill_l1(&a).await;
    fill_l1(&b).await;

    let client = redis::Client::open(redis.url()).expect("url");
    // The stall outlasts the client's default response timeout (500 ms).
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("redis");
    let stalled: i64 = redis::Script::new(STALL)
        .arg(1_500_000)
        .invoke_async(&mut connection)
        .await
        .expect("stall");
    assert_eq!(stalled, 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_l1_kept(&[&a, &b]);
}

// Two strikes do not hide a dead connection: a subscription that stops hearing anything (a
// network partition, no FIN) is still replaced, and the node resyncs once it is back.
#[tokio::test]
async fn a_silent_connection_is_still_given_up_after_two_missed_heartbeats() {
    let redis = PrivateRedis::start().await;
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port())).await;
    let cache = TwoLevelCache::<Product>::builder("products")
        .key_prefix(format!("{}:", unique_name("cache-silent")))
        .redis(redis::Client::open(format!("redis://{}", proxy.address())).expect("url"))
        .heartbeat_timeout(Duration::from_millis(300))
        .build()
        .await
        .expect("build");
    fill_l1(&cache).await;

    proxy.black_hole();
    // Two heartbeat periods plus two timeouts: 2.6 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.forward();
    assert!(
        eventually(Duration::from_secs(5), || cache.metrics().resyncs == 1).await,
        "the silent subscription was never replaced"
    );
    assert!(!cache.contains_local("p:1"), "and L1 was dropped");
}
