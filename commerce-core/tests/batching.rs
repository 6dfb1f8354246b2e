//! The batching strategy against the real database: the flash-sale suites every strategy
//! passes, plus what is particular to batching (orders really share transactions, several
//! instances on one product, idempotency inside and across batches, backorders, the outbox,
//! the sold-out fast path and stock coming back on another instance).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use commerce_core::strategy::{BatchSettings, Batching};
use commerce_core::{
    Commerce, Error, NewOrder, OrderStatus, OutboxHook, ProductId, ShortagePolicy, MIGRATOR,
};
use commerce_testkit::{eventually, within, TestDb};
use common::{assert_consistent, flash_sale, product, setup_with_strategy};
use tokio::sync::Barrier;

fn on(db: &TestDb) -> Commerce {
    Commerce::builder(db.pool().clone())
        .strategy(Batching::new())
        .build()
}

/// `customers` concurrent one-unit orders (started together); returns (placed, turned away).
async fn crowd(commerce: &Commerce, product: ProductId, customers: usize) -> (usize, usize) {
    let start = Arc::new(Barrier::new(customers));
    let tasks: Vec<_> = (0..customers)
        .map(|n| {
            let (commerce, start) = (commerce.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                commerce
                    .place_order(NewOrder::new(format!("c-{n}")).line(product, 1))
                    .await
            })
        })
        .collect();
    let (mut placed, mut turned_away) = (0, 0);
    for task in tasks {
        match within(Duration::from_secs(120), task).await.unwrap() {
            Ok(_) => placed += 1,
            Err(Error::InsufficientStock { .. }) => turned_away += 1,
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    (placed, turned_away)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_attempts_on_one_product() {
    let (_db, commerce) = setup_with_strategy(20, Batching::new()).await;
    flash_sale::ten_thousand_attempts_on_one_product(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_multi_line_attempts() {
    let (_db, commerce) = setup_with_strategy(20, Batching::new()).await;
    flash_sale::ten_thousand_multi_line_attempts(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_shares_transactions_and_gets_exactly_the_stock() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 10).await;
    let commerce = on(&db);
    let hot = product(&commerce, 1, 500).await;
    let (placed, turned_away) = crowd(&commerce, hot, 2_000).await;
    assert_eq!((placed, turned_away), (500, 1_500));
    assert_eq!(commerce.stock_of(&[hot]).await.unwrap()[0].available, 0);
    assert_consistent(&commerce).await;
    // Orders written in one transaction share its start time: far fewer than 500 of them.
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT created_at) FROM commerce.orders")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert!(
        transactions < 250,
        "{transactions} transactions for 500 orders"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_one_product_never_oversell() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 12).await;
    let instances: Vec<Commerce> = (0..3).map(|_| on(&db)).collect();
    let hot = product(&instances[0], 1, 700).await;
    let start = Arc::new(Barrier::new(3));
    let runs: Vec<_> = instances
        .iter()
        .map(|commerce| {
            let (commerce, start) = (commerce.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                crowd(&commerce, hot, 600).await
            })
        })
        .collect();
    let mut placed = 0;
    for run in runs {
        placed += run.await.unwrap().0;
    }
    assert_eq!(placed, 700);
    assert_eq!(instances[0].stock_of(&[hot]).await.unwrap()[0].available, 0);
    assert_consistent(&instances[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_gets_the_first_order_inside_and_across_batches() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 10).await;
    let commerce = on(&db);
    let hot = product(&commerce, 1, 5).await;
    let start = Arc::new(Barrier::new(30));
    let tasks: Vec<_> = (0..30)
        .map(|n| {
            let (commerce, start) = (commerce.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                // Ten users each send their request three times at once.
                commerce
                    .place_order(
                        NewOrder::new(format!("u-{}", n % 10))
                            .line(hot, 1)
                            .idempotency_key("checkout-1"),
                    )
                    .await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let (mut first, mut replayed, mut turned_away) = (0, 0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(placed) => {
                ids.insert(placed.order.id);
                if placed.replayed {
                    replayed += 1;
                } else {
                    first += 1;
                }
            }
            Err(Error::InsufficientStock { .. }) => turned_away += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    // Five users got the five units (three answers each, one of them the first);
    // the other five users were turned away three times.
    assert_eq!((ids.len(), first, replayed, turned_away), (5, 5, 10, 15));
    // Across batches: a later repeat is a replay, a different request with the key an error.
    let user = commerce
        .order(*ids.iter().next().unwrap())
        .await
        .unwrap()
        .user_id;
    let again = commerce
        .place_order(
            NewOrder::new(user.as_str())
                .line(hot, 1)
                .idempotency_key("checkout-1"),
        )
        .await
        .unwrap();
    assert!(again.replayed);
    let other = commerce
        .place_order(
            NewOrder::new(user.as_str())
                .line(hot, 2)
                .idempotency_key("checkout-1"),
        )
        .await
        .unwrap_err();
    assert!(matches!(other, Error::DuplicateRequest { .. }), "{other:?}");
    assert_consistent(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backorders_in_a_batch_queue_in_arrival_order_and_are_served_by_a_receipt() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 10).await;
    let commerce = on(&db);
    let hot = product(&commerce, 1, 50).await;
    let tasks: Vec<_> = (0..100)
        .map(|n| {
            let commerce = commerce.clone();
            tokio::spawn(async move {
                commerce
                    .place_order(
                        NewOrder::new(format!("b-{n}"))
                            .line(hot, 3)
                            .policy(ShortagePolicy::Backorder),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut backordered = 0;
    for task in tasks {
        if task.await.unwrap().order.status == OrderStatus::Backordered {
            backordered += 1;
        }
    }
    assert!(backordered >= 83, "{backordered} backordered");
    let level = commerce.stock_of(&[hot]).await.unwrap()[0];
    assert_eq!((level.available, level.backordered), (0, 250));
    assert_consistent(&commerce).await;
    commerce.receive_stock(hot, 250, None).await.unwrap();
    let waiting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM commerce.orders WHERE status <> 'CREATED'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(waiting, 0);
    assert_consistent(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_placed_order_has_its_event_in_the_outbox() {
    let db = TestDb::with_pool_size(&[&MIGRATOR, &commerce_outbox::MIGRATOR], 10).await;
    let commerce = Commerce::builder(db.pool().clone())
        .strategy(Batching::new())
        .hook(OutboxHook::with_topics("orders", "products"))
        .build();
    let hot = product(&commerce, 1, 300).await;
    let (placed, _) = crowd(&commerce, hot, 1_000).await;
    assert_eq!(placed, 300);
    let (events, aggregates, first): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT aggregate_id), count(*) FILTER (WHERE aggregate_seq = 1) \
         FROM commerce_outbox.event WHERE event_type = 'order.placed'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!((events, aggregates, first), (300, 300, 300));
    assert_consistent(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_and_multi_line_orders_receipts_and_cancels_mix_without_deadlock() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 10).await;
    let commerce = on(&db);
    for id in 1..=3 {
        product(&commerce, id, 200).await;
    }
    let tasks: Vec<_> = (0..600)
        .map(|n: i64| {
            let commerce = commerce.clone();
            tokio::spawn(async move {
                let user = format!("m-{n}");
                let order = match n % 4 {
                    0 => NewOrder::new(user).line(1, 1).line(3, 1),
                    1 => NewOrder::new(user).line(3, 2).line(2, 1).line(1, 1),
                    2 => NewOrder::new(user)
                        .line(n % 3 + 1, 2)
                        .policy(ShortagePolicy::Backorder),
                    _ => NewOrder::new(user).line(2, 1),
                };
                let placed = commerce.place_order(order).await;
                match placed {
                    Ok(placed) if n % 5 == 0 => {
                        commerce
                            .cancel_order(placed.order.id, "changed mind")
                            .await
                            .unwrap();
                    }
                    Ok(_) | Err(Error::InsufficientStock { .. }) => {}
                    Err(e) => panic!("{e:?}"),
                }
                if n % 50 == 0 {
                    commerce
                        .receive_stock(ProductId(n % 3 + 1), 20, None)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        within(Duration::from_secs(120), task).await.unwrap();
    }
    assert_consistent(&commerce).await;
}

/// Whether, within 10 s, an order for `product` (sold out) is refused with every one of the
/// pool's `pool_size` connections held, that is without the database.
///
/// The stock listener starts with the first order. A figure read before the listener was
/// connected never enables the fast path, so each round first lets one rejection reach the
/// database (as any next customer would) to learn the figure anew: without it, a crowd that
/// sold out before the listener connected left nothing to learn from while the pool was held,
/// and the wait was in vain (in full test runs, for both tests that use this).
async fn rejected_from_memory(
    commerce: &Commerce,
    db: &TestDb,
    product: ProductId,
    pool_size: u32,
) -> bool {
    eventually(Duration::from_secs(10), || async {
        let learned = commerce
            .place_order(NewOrder::new("learner").line(product, 1))
            .await;
        assert!(
            matches!(learned, Err(Error::InsufficientStock { .. })),
            "{learned:?}"
        );
        let mut held = Vec::new();
        for _ in 0..pool_size {
            held.push(db.pool().acquire().await.unwrap());
        }
        let answer = tokio::time::timeout(
            Duration::from_millis(200),
            commerce.place_order(NewOrder::new("late").line(product, 1)),
        )
        .await;
        matches!(
            answer,
            Ok(Err(Error::InsufficientStock { available: 0, .. }))
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_product_is_turned_away_without_the_database_until_stock_comes_back() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 3).await;
    let commerce = on(&db);
    let hot = product(&commerce, 1, 3).await;
    assert_eq!(crowd(&commerce, hot, 10).await, (3, 7));
    let fast = rejected_from_memory(&commerce, &db, hot, 3).await;
    assert!(fast, "a sold-out product still needed the database");
    // Another instance (its own pool) receives stock: this one sells it.
    let other = sqlx::PgPool::connect_with(db.connect_options())
        .await
        .unwrap();
    Commerce::builder(other)
        .build()
        .receive_stock(hot, 2, Some("restock"))
        .await
        .unwrap();
    let mut sold = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sold < 2 && tokio::time::Instant::now() < deadline {
        if commerce
            .place_order(NewOrder::new(format!("after-{sold}")).line(hot, 1))
            .await
            .is_ok()
        {
            sold += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(sold, 2, "the restocked units were not sold");
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn settings_are_clamped_and_reported() {
    let strategy = Batching::with_settings(BatchSettings {
        max_batch: 0,
        max_attempts: 0,
        sold_out_fast_path: false,
        in_flight: 0,
        max_queue: 0,
        max_wait: Duration::from_millis(10),
        ..BatchSettings::default()
    });
    let settings = strategy.settings();
    assert_eq!(
        (
            settings.max_batch,
            settings.max_attempts,
            settings.in_flight,
            settings.max_queue,
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(commerce_core::StockStrategy::name(&strategy), "batching");
}

/// Rejections from memory complete without waiting on anything: callers looping on them
/// must still let the runtime's other tasks (batch writers, other callers) run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_looping_on_a_sold_out_product_do_not_starve_the_others() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 5).await;
    let commerce = on(&db);
    let sold_out = product(&commerce, 1, 1).await;
    let other = product(&commerce, 2, 10).await;
    commerce
        .place_order(NewOrder::new("first").line(sold_out, 1))
        .await
        .unwrap();
    // Until the listener is up, rejections still ask the database; then they are instant.
    let instant = eventually(Duration::from_secs(10), || async {
        let started = std::time::Instant::now();
        for _ in 0..1_000 {
            let _ = commerce
                .place_order(NewOrder::new("spin").line(sold_out, 1))
                .await;
        }
        started.elapsed() < Duration::from_millis(100)
    })
    .await;
    assert!(instant, "the fast path never engaged");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..8)
        .map(|_| {
            let (commerce, stop) = (commerce.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = commerce
                        .place_order(NewOrder::new("spin").line(sold_out, 1))
                        .await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let placed = tokio::time::timeout(
        Duration::from_secs(3),
        commerce.place_order(NewOrder::new("patient").line(other, 1)),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spinner in spinners {
        within(Duration::from_secs(30), spinner).await.unwrap();
    }
    assert!(
        matches!(placed, Ok(Ok(_))),
        "an order of another product starved: {placed:?}"
    );
}

/// Orders of two lines join the queue of their lower product and are batched with the
/// single-line orders of both products; nothing deadlocks and exactly the stock is sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_spanning_two_products_are_batched_with_the_single_line_ones() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 10).await;
    let commerce = on(&db);
    // Product 2 has enough for every order naming it, so the two-line orders (queued with
    // product 1's) are decided by product 1 alone: first come first served in its batches.
    let (a, b) = (
        product(&commerce, 1, 300).await,
        product(&commerce, 2, 1_000).await,
    );
    let start = Arc::new(Barrier::new(1_500));
    let tasks: Vec<_> = (0..1_500)
        .map(|n: usize| {
            let (commerce, start) = (commerce.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                let user = format!("s-{n}");
                let order = match n % 3 {
                    0 => NewOrder::new(user).line(b, 1).line(a, 1),
                    1 => NewOrder::new(user).line(a, 1),
                    _ => NewOrder::new(user).line(b, 1),
                };
                start.wait().await;
                commerce.place_order(order).await
            })
        })
        .collect();
    let (mut two_line, mut of_b) = (0, 0);
    for task in tasks {
        match within(Duration::from_secs(120), task).await.unwrap() {
            Ok(placed) => {
                if placed.order.lines.len() == 2 {
                    two_line += 1;
                }
                if placed.order.lines.iter().any(|line| line.product == b) {
                    of_b += 1;
                }
            }
            Err(Error::InsufficientStock { product, .. }) => assert_eq!(product, a),
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(two_line > 0, "no order of two lines got through");
    let levels = commerce.stock_of(&[a, b]).await.unwrap();
    assert_eq!(
        (levels[0].available, levels[1].available),
        (0, 1_000 - of_b)
    );
    assert_consistent(&commerce).await;
    let (orders, transactions): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT created_at) FROM commerce.orders \
         WHERE id IN (SELECT order_id FROM commerce.order_lines GROUP BY order_id HAVING count(*) = 2)",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert!(
        transactions < orders,
        "{orders} two-line orders in {transactions} transactions: not batched"
    );
}

/// Holds, while armed, every transaction at its hook (before its stock update and commit)
/// until released, and counts the transactions it holds.
#[derive(Clone, Default)]
struct Hold {
    armed: Arc<std::sync::atomic::AtomicBool>,
    holding: Arc<std::sync::atomic::AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl commerce_core::TransactionHook for Hold {
    async fn before_commit(
        &self,
        _conn: &mut sqlx::PgConnection,
        _events: &[commerce_core::CoreEvent],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.armed.load(SeqCst) {
            let released = self.release.notified();
            self.holding.fetch_add(1, SeqCst);
            // Bounded, so that a broken build fails instead of hanging.
            let _ = tokio::time::timeout(Duration::from_secs(10), released).await;
        }
        Ok(())
    }
}

/// Orders that queued behind the batch that sold a product out are turned away from memory,
/// as later arrivals are, not one batch (and one database read) at a time: the harness saw
/// them wait seconds behind a 10,000-client crowd after the sell-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_queued_behind_the_sell_out_are_turned_away_without_the_database() {
    use std::sync::atomic::Ordering::SeqCst;
    const POOL: u32 = 3;
    let db = TestDb::with_pool_size(&[&MIGRATOR], POOL).await;
    let hold = Hold::default();
    let commerce = Commerce::builder(db.pool().clone())
        .strategy(Batching::with_settings(BatchSettings {
            max_batch: 1,
            ..BatchSettings::default()
        }))
        .hook(hold.clone())
        .build();
    let warm = product(&commerce, 1, 1).await;
    let hot = product(&commerce, 2, 1).await;
    // Sold out, so that a rejection without the database shows the stock listener is up.
    assert_eq!(crowd(&commerce, warm, 2).await, (1, 1));
    let listening = rejected_from_memory(&commerce, &db, warm, POOL).await;
    assert!(listening, "the stock listener never came up");

    // The batch taking the last unit is held before its commit; 50 orders queue behind it.
    hold.armed.store(true, SeqCst);
    let first = {
        let commerce = commerce.clone();
        tokio::spawn(async move {
            commerce
                .place_order(NewOrder::new("first").line(hot, 1))
                .await
        })
    };
    let held_one = eventually(Duration::from_secs(5), || async {
        hold.holding.load(SeqCst) == 1
    })
    .await;
    assert!(held_one, "the first batch never reached its hook");
    hold.armed.store(false, SeqCst);
    let queued: Vec<_> = (0..50)
        .map(|n| {
            let commerce = commerce.clone();
            tokio::spawn(async move {
                commerce
                    .place_order(NewOrder::new(format!("queued-{n}")).line(hot, 1))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Every connection but the held batch's is taken, and that one too once it commits.
    let mut held = Vec::new();
    for _ in 0..POOL - 1 {
        held.push(db.pool().acquire().await.unwrap());
    }
    let last = {
        let pool = db.pool().clone();
        tokio::spawn(async move { pool.acquire().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    hold.release.notify_waiters();
    assert!(within(Duration::from_secs(5), first).await.unwrap().is_ok());
    held.push(within(Duration::from_secs(5), last).await.unwrap());

    for task in queued {
        let answer = tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .expect("a queued order waited for the database after the sell-out")
            .unwrap();
        assert!(
            matches!(answer, Err(Error::InsufficientStock { available: 0, .. })),
            "{answer:?}"
        );
    }
    drop(held);
    assert_eq!(commerce.stock_of(&[hot]).await.unwrap()[0].available, 0);
    assert_consistent(&commerce).await;
}

/// The per-user limit scenarios (tests/common/user_limits.rs) under batching, and several
/// instances batching one user's orders at once.
mod user_limits {
    use super::*;
    use commerce_core::{OrderLimits, UserLimit};
    use common::setup_with_limits;
    use common::user_limits::{self as scenario, backordered_units, open_orders, MAX_UNITS};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backordered_units_are_capped() {
        let (_db, commerce) = setup_with_limits(10, Batching::new(), backordered_units()).await;
        scenario::backordered_units_are_capped(&commerce).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_orders_are_capped() {
        let (_db, commerce) = setup_with_limits(10, Batching::new(), open_orders()).await;
        scenario::open_orders_are_capped(&commerce).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_backorders_stay_within_the_limit() {
        let (_db, commerce) = setup_with_limits(20, Batching::new(), backordered_units()).await;
        scenario::concurrent_backorders_stay_within_the_limit(&commerce).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_orders_stay_within_the_open_limit() {
        let (_db, commerce) = setup_with_limits(20, Batching::new(), open_orders()).await;
        scenario::concurrent_orders_stay_within_the_open_limit(&commerce).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn repeats_of_a_keyed_request_at_the_limit_get_the_first_order() {
        let (_db, commerce) = setup_with_limits(20, Batching::new(), open_orders()).await;
        scenario::repeats_of_a_keyed_request_at_the_limit_get_the_first_order(&commerce).await;
    }

    /// Three instances, each batching its own share of one user's backorders for two
    /// products (single-line orders of each, and orders of both): the user still ends at
    /// the limit, never above it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_instances_batching_one_users_backorders_never_pass_the_limit() {
        let db = TestDb::with_pool_size(&[&MIGRATOR], 15).await;
        let instances: Vec<Commerce> = (0..3)
            .map(|_| {
                Commerce::builder(db.pool().clone())
                    .strategy(Batching::new())
                    .limits(OrderLimits {
                        max_backordered_units_per_user: Some(MAX_UNITS),
                        ..OrderLimits::default()
                    })
                    .build()
            })
            .collect();
        product(&instances[0], 1, 0).await;
        product(&instances[0], 2, 0).await;
        let start = Arc::new(Barrier::new(60));
        let tasks: Vec<_> = (0..60)
            .map(|n: usize| {
                let (commerce, start) = (instances[n % 3].clone(), Arc::clone(&start));
                tokio::spawn(async move {
                    let order = match n % 3 {
                        0 => NewOrder::new("u").line(1, 1),
                        1 => NewOrder::new("u").line(2, 1),
                        _ => NewOrder::new("u").line(1, 1).line(2, 1),
                    };
                    start.wait().await;
                    commerce
                        .place_order(order.policy(ShortagePolicy::Backorder))
                        .await
                })
            })
            .collect();
        for task in tasks {
            match within(Duration::from_secs(60), task).await.unwrap() {
                Ok(_)
                | Err(Error::UserLimitExceeded {
                    limit: UserLimit::BackorderedUnits,
                    ..
                }) => {}
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(outstanding), 0)::bigint FROM commerce.backorders",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert!(
            (MAX_UNITS - 1..=MAX_UNITS).contains(&waiting),
            "{waiting} units waiting"
        );
        assert_consistent(&instances[0]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_orders_history_is_known_without_reading_it_back() {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let commerce = on(&db);
    let product = product(&commerce, 1, 20).await;
    // Together, so they share batches; half of them may be backordered once stock runs out.
    let mut crowd = tokio::task::JoinSet::new();
    for n in 0..24 {
        let commerce = commerce.clone();
        let policy = if n % 2 == 0 {
            ShortagePolicy::Reject
        } else {
            ShortagePolicy::Backorder
        };
        crowd.spawn(async move {
            commerce
                .place_order(
                    NewOrder::new(format!("u{n}"))
                        .line(product.0, 1)
                        .policy(policy),
                )
                .await
        });
    }
    let mut checked = 0;
    while let Some(placed) = crowd.join_next().await {
        let Ok(placed) = placed.unwrap() else {
            continue;
        };
        let stored = commerce.order_history(placed.order.id).await.unwrap();
        assert_eq!(placed.placement_history(), Some(stored));
        checked += 1;
    }
    assert!(checked >= 20, "{checked} placed");
}
