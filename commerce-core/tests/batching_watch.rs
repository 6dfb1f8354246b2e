//! The batching strategy's sold-out fast path is never wrong for long (review
//! `batching.md`, findings C1 and M1): a listener that went silent, a listener whose runtime
//! ended, and stock raised through the very same `Commerce` never keep a product that has
//! stock again turned away from memory.

mod common;

use std::time::Duration;

use commerce_core::strategy::{BatchSettings, Batching};
use commerce_core::{Commerce, Error, NewOrder, OrderStatus, ProductId, MIGRATOR};
use commerce_testkit::{eventually, within, TcpProxy, TestDb};
use common::{assert_consistent, product};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Connections of every pool a `Commerce` under test is built on.
const POOL: u32 = 3;

fn batching(settings: BatchSettings) -> Batching {
    Batching::with_settings(settings)
}

fn order(user: &str, product: ProductId) -> NewOrder {
    NewOrder::new(user).line(product, 1)
}

/// Whether a placement under a timeout was a confident "sold out" (as the fast path says).
fn is_sold_out_answer<T>(
    answer: &Result<commerce_core::Result<T>, tokio::time::error::Elapsed>,
) -> bool {
    matches!(
        answer,
        Ok(Err(Error::InsufficientStock { available: 0, .. }))
    )
}

/// Places one order for `product` (taking its last unit, or turned away) and waits until the fast path answers for it: a
/// rejection while every connection of `pool` (`POOL` of them) is held needed no database.
/// The stock listener starts with the first order, so this may take a few rounds.
async fn sell_out_and_wait_for_the_fast_path(
    commerce: &Commerce,
    pool: &PgPool,
    product: ProductId,
) {
    let _ = commerce.place_order(order("first", product)).await;
    let fast = eventually(Duration::from_secs(10), || async {
        // A batch reads the product again (a probe that gives up below is dropped before its
        // batch reads anything, so it would not).
        let _ = commerce.place_order(order("refresh", product)).await;
        let mut held = Vec::new();
        for _ in 0..POOL {
            held.push(pool.acquire().await.unwrap());
        }
        let answer = tokio::time::timeout(
            Duration::from_millis(200),
            commerce.place_order(order("probe", product)),
        )
        .await;
        is_sold_out_answer(&answer)
    })
    .await;
    assert!(fast, "the sold-out fast path never engaged");
}

/// A `Commerce` on a pool that goes through `proxy`.
async fn through(proxy: &TcpProxy, db: &TestDb, strategy: Batching) -> (PgPool, Commerce) {
    let pool = PgPoolOptions::new()
        .max_connections(POOL)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(db.connect_options().port(proxy.port()))
        .await
        .unwrap();
    let commerce = Commerce::builder(pool.clone()).strategy(strategy).build();
    (pool, commerce)
}

/// C1 through a network partition of the instance (its pool and its stock listener): the
/// product is sold out, the partition starts, another instance receives stock. Once `bound`
/// has passed, the partitioned instance must not answer a confident "sold out" from memory
/// any more (an order may hang or fail: it cannot reach the database); when the partition
/// heals it sells the units.
async fn a_partitioned_instance_stops_trusting_its_figures(
    settings: BatchSettings,
    bound: Duration,
) {
    let db = TestDb::with_pool_size(&[&MIGRATOR], POOL).await;
    let direct = Commerce::builder(db.pool().clone()).build();
    let hot = product(&direct, 1, 1).await;
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", db.connect_options().get_port())).await;
    let (pool, commerce) = through(&proxy, &db, batching(settings)).await;
    sell_out_and_wait_for_the_fast_path(&commerce, &pool, hot).await;

    proxy.black_hole();
    direct.receive_stock(hot, 5, Some("restock")).await.unwrap();
    tokio::time::sleep(bound).await;
    let answer = tokio::time::timeout(
        Duration::from_millis(300),
        commerce.place_order(order("late", hot)),
    )
    .await;
    assert!(
        !is_sold_out_answer(&answer),
        "{bound:?} after the partition began the product is still sold out from memory \
         while the database holds 5 units: {answer:?}"
    );

    proxy.forward();
    let sold = eventually(Duration::from_secs(15), || async {
        commerce.place_order(order("healed", hot)).await.is_ok()
    })
    .await;
    assert!(
        sold,
        "the restocked units were not sold after the partition healed"
    );
    assert_consistent(&direct).await;
}

/// The listener's connection goes silent (half-open): its heartbeat finds out, although
/// the age limit is far away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_listener_is_found_out_by_its_heartbeat() {
    let settings = BatchSettings {
        listener_heartbeat: Duration::from_millis(100),
        listener_timeout: Duration::from_millis(200),
        sold_out_max_age: Duration::from_secs(3600),
        ..BatchSettings::default()
    };
    // Quiet for 100 ms, then 200 ms without an answer: lost after 300 ms at most.
    a_partitioned_instance_stops_trusting_its_figures(settings, Duration::from_millis(800)).await;
}

/// The listener looks alive for ever (its heartbeat far away): the age limit alone stops
/// the figure from turning orders away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_figure_expires_even_while_the_listener_looks_alive() {
    let settings = BatchSettings {
        listener_heartbeat: Duration::from_secs(3600),
        listener_timeout: Duration::from_secs(3600),
        sold_out_max_age: Duration::from_millis(500),
        ..BatchSettings::default()
    };
    a_partitioned_instance_stops_trusting_its_figures(settings, Duration::from_millis(800)).await;
}

#[test]
fn listener_durations_under_ten_milliseconds_count_as_ten() {
    let shortest = Duration::from_millis(10);
    let settings = batching(BatchSettings {
        listener_heartbeat: Duration::ZERO,
        listener_timeout: Duration::from_millis(1),
        sold_out_max_age: Duration::ZERO,
        ..BatchSettings::default()
    })
    .settings();
    assert_eq!(
        (
            settings.listener_heartbeat,
            settings.listener_timeout,
            settings.sold_out_max_age
        ),
        (shortest, shortest, shortest)
    );
    let defaults = BatchSettings::default();
    assert_eq!(
        (
            defaults.listener_heartbeat,
            defaults.listener_timeout,
            defaults.sold_out_max_age
        ),
        (
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(5)
        )
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// C1, the runtime variant: the listener is a task of the runtime of the first order. A
/// `Commerce` shared across runtimes (a CLI calling `block_on` per command) sells out in
/// runtime A, A ends, another instance restocks: runtime B sells the units, and its fast
/// path comes back (a new listener in B).
#[test]
fn a_listener_whose_runtime_ended_keeps_nothing_sold_out() {
    let b = runtime();
    let (db, direct) = b.block_on(async {
        let db = TestDb::with_pool_size(&[&MIGRATOR], POOL).await;
        let direct = Commerce::builder(db.pool().clone()).build();
        product(&direct, 1, 1).await;
        (db, direct)
    });
    let hot = ProductId(1);
    // Its own pool: connections opened in A die with A, the database's pool lives in B.
    let pool = b.block_on(
        PgPoolOptions::new()
            .max_connections(POOL)
            .connect_with(db.connect_options()),
    );
    let pool = pool.unwrap();
    let commerce = Commerce::builder(pool.clone())
        .strategy(Batching::new())
        .build();

    let a = runtime();
    a.block_on(within(
        Duration::from_secs(60),
        sell_out_and_wait_for_the_fast_path(&commerce, &pool, hot),
    ));
    drop(a);

    b.block_on(within(Duration::from_secs(60), async {
        direct.receive_stock(hot, 2, Some("restock")).await.unwrap();
        for n in 0..2 {
            let placed = commerce.place_order(order(&format!("b-{n}"), hot)).await;
            assert!(placed.is_ok(), "order {n} in runtime B: {placed:?}");
        }
        // Sold out again, in B: the fast path works again.
        sell_out_and_wait_for_the_fast_path(&commerce, &pool, hot).await;
        assert_consistent(&direct).await;
    }));
}

/// How the same `Commerce` raises a product's stock in M1's test.
#[derive(Debug, Clone, Copy)]
enum Raise {
    Receipt,
    Adjustment,
    Cancel,
    CancelIf,
    TransitionToCancelled,
    /// `cancel_order_in` in a transaction of the test's, committed, then passed on with
    /// `Commerce::stock_raised` as its documentation asks.
    CancelInThenTold,
}

const RAISES: [Raise; 6] = [
    Raise::Receipt,
    Raise::Adjustment,
    Raise::Cancel,
    Raise::CancelIf,
    Raise::TransitionToCancelled,
    Raise::CancelInThenTold,
];

impl Raise {
    /// Raises `product`'s stock by one unit through `commerce`; `placed` is an order of one
    /// unit of it (CREATED).
    async fn apply(self, commerce: &Commerce, product: ProductId, placed: commerce_core::OrderId) {
        match self {
            Raise::Receipt => drop(commerce.receive_stock(product, 1, None).await.unwrap()),
            Raise::Adjustment => drop(
                commerce
                    .adjust_stock(product, 1, "found one")
                    .await
                    .unwrap(),
            ),
            Raise::Cancel => drop(commerce.cancel_order(placed, "changed mind").await.unwrap()),
            Raise::CancelIf => {
                let cancelled = commerce
                    .cancel_order_if(placed, OrderStatus::Created, "payment timed out")
                    .await
                    .unwrap();
                assert!(cancelled.is_some());
            }
            Raise::TransitionToCancelled => drop(
                commerce
                    .transition_order(placed, OrderStatus::Cancelled, "changed mind")
                    .await
                    .unwrap(),
            ),
            Raise::CancelInThenTold => {
                let mut tx = commerce.pool().begin().await.unwrap();
                let cancelled = commerce
                    .cancel_order_in(&mut tx, placed, "payment declined")
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                for line in &cancelled.lines {
                    commerce.stock_raised(line.product);
                }
            }
        }
    }
}

/// M1: stock raised through a `Commerce` is sold by the next order on it, at once (no
/// retry): every way of raising stock, each on a product of its own.
async fn the_same_instance_reads_its_own_raises() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], POOL).await;
    let commerce = Commerce::builder(db.pool().clone())
        .strategy(Batching::new())
        .build();
    let mut turned_away = Vec::new();
    for (n, raise) in RAISES.into_iter().enumerate() {
        let hot = product(&commerce, n as i64 + 1, 1).await;
        let placed = commerce.place_order(order("keeper", hot)).await.unwrap();
        sell_out_and_wait_for_the_fast_path(&commerce, db.pool(), hot).await;
        raise.apply(&commerce, hot, placed.order.id).await;
        let next = commerce.place_order(order("next", hot)).await;
        if let Err(e) = next {
            turned_away.push(format!("after {raise:?}: {e:?}"));
        }
    }
    assert!(
        turned_away.is_empty(),
        "the next order was turned away:\n{}",
        turned_away.join("\n")
    );
    assert_consistent(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_raised_through_the_same_instance_is_sold_at_once() {
    the_same_instance_reads_its_own_raises().await;
}

#[tokio::test(flavor = "current_thread")]
async fn stock_raised_through_the_same_instance_is_sold_at_once_on_a_current_thread_runtime() {
    the_same_instance_reads_its_own_raises().await;
}
