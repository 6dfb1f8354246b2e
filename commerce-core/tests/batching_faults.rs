//! The batching strategy under what its benchmark never exercises (review of batching, M2,
//! M3, M5, m1, m2, m5): callers that give up, overload, one bad order in a batch, two
//! batches in flight at a sell-out, a repeated key, sums that would overflow.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commerce_core::strategy::{BatchSettings, Batching};
use commerce_core::{
    Commerce, CoreEvent, Error, NewOrder, OrderLimits, ProductId, ShortagePolicy, MIGRATOR,
};
use commerce_testkit::{eventually, within, TestDb};
use common::{assert_consistent, product};

/// While armed, holds every transaction at its hook (before its stock update and commit)
/// until released; refuses any transaction carrying an order of user "bad".
#[derive(Clone, Default)]
struct Gate {
    armed: Arc<AtomicBool>,
    holding: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
    /// Hook runs (one per transaction that reached its hook).
    runs: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl commerce_core::TransactionHook for Gate {
    async fn before_commit(
        &self,
        _conn: &mut sqlx::PgConnection,
        events: &[CoreEvent],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.runs.fetch_add(1, SeqCst);
        if self.armed.load(SeqCst) {
            let released = self.release.notified();
            self.holding.fetch_add(1, SeqCst);
            // Bounded, so that a broken build fails instead of hanging.
            let _ = tokio::time::timeout(Duration::from_secs(20), released).await;
            self.holding.fetch_sub(1, SeqCst);
        }
        let bad = events
            .iter()
            .any(|e| matches!(e, CoreEvent::OrderPlaced { user_id, .. } if user_id == "bad"));
        if bad {
            return Err("the hook refuses user bad".into());
        }
        Ok(())
    }
}

fn batching(settings: BatchSettings) -> Batching {
    Batching::with_settings(settings)
}

fn commerce_with(db: &TestDb, strategy: Batching, gate: &Gate) -> Commerce {
    Commerce::builder(db.pool().clone())
        .strategy(strategy)
        .hook(gate.clone())
        .build()
}

type Placing = tokio::task::JoinHandle<commerce_core::Result<commerce_core::PlacedOrder>>;

/// Starts placing `new` and returns its task.
fn place(commerce: &Commerce, new: NewOrder) -> Placing {
    let commerce = commerce.clone();
    tokio::spawn(async move { commerce.place_order(new).await })
}

/// Starts one order of `user` for `quantity` of `product` and returns its task.
fn order(
    commerce: &Commerce,
    user: impl Into<String>,
    product: ProductId,
    quantity: i64,
) -> Placing {
    place(commerce, NewOrder::new(user).line(product, quantity))
}

/// Arms the gate, starts one order and waits until its batch is held at the hook.
async fn hold_one_batch(commerce: &Commerce, gate: &Gate, product: ProductId) -> Placing {
    hold_batch_of(commerce, gate, NewOrder::new("first").line(product, 1)).await
}

/// Arms the gate, starts placing `new` and waits until its batch is held at the hook.
async fn hold_batch_of(commerce: &Commerce, gate: &Gate, new: NewOrder) -> Placing {
    gate.armed.store(true, SeqCst);
    let first = place(commerce, new);
    let held = eventually(Duration::from_secs(5), || async {
        gate.holding.load(SeqCst) >= 1
    })
    .await;
    assert!(held, "the first batch never reached its hook");
    first
}

async fn orders_of(db: &TestDb, user: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM commerce.orders WHERE user_id = $1")
        .bind(user)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

/// M2: a caller that gave up while its batch waited for a connection is not written, as
/// under the conditional update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gave_up_waiting_for_a_connection_is_not_written() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 1).await;
    let commerce = commerce_with(&db, Batching::new(), &Gate::default());
    let hot = product(&commerce, 1, 10).await;

    let held = db.pool().acquire().await.unwrap();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        commerce.place_order(NewOrder::new("gone").line(hot, 1)),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "answered while the only connection was held"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(orders_of(&db, "gone").await, 0, "a ghost order was written");
    assert_eq!(commerce.stock_of(&[hot]).await.unwrap()[0].available, 10);
    // The strategy still works for the callers who stay.
    commerce
        .place_order(NewOrder::new("stays").line(hot, 1))
        .await
        .unwrap();
    assert_consistent(&commerce).await;
}

/// M3: with a product's batches stalled, what does not fit in its queue is refused at once
/// with a retryable overload error, and what waited longer than the bound is refused then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_product_refuses_the_overflow_at_once_and_the_queue_after_its_wait() {
    const QUEUE: usize = 500;
    const CROWD: usize = 10_000;
    let db = TestDb::with_pool_size(&[&MIGRATOR], 4).await;
    let gate = Gate::default();
    let commerce = commerce_with(
        &db,
        batching(BatchSettings {
            max_queue: QUEUE,
            max_wait: Duration::from_millis(500),
            ..BatchSettings::default()
        }),
        &gate,
    );
    let hot = product(&commerce, 1, 1_000_000).await;
    let first = hold_one_batch(&commerce, &gate, hot).await;

    let started = Instant::now();
    let crowd: Vec<_> = (0..CROWD)
        .map(|n| order(&commerce, format!("c-{n}"), hot, 1))
        .collect();
    // Everything beyond the queue is refused at once, and the queue after its wait: only
    // the batches in flight (held at the gate) may still be open after 3 s.
    let settled = eventually(Duration::from_secs(3), || async {
        crowd.iter().filter(|task| !task.is_finished()).count() <= 2 * QUEUE
    })
    .await;
    let open = crowd.iter().filter(|task| !task.is_finished()).count();
    assert!(settled, "{open} of {CROWD} callers still wait after 3 s");
    gate.armed.store(false, SeqCst);
    gate.release.notify_waiters();
    let (mut overloaded, mut other) = (0, Vec::new());
    for task in crowd {
        match within(Duration::from_secs(20), task).await.unwrap() {
            Err(e @ Error::Overloaded { .. }) => {
                assert!(e.is_retryable(), "overload must be retryable");
                overloaded += 1;
            }
            answer => other.push(answer),
        }
    }
    assert!(
        overloaded >= CROWD - 2 * QUEUE,
        "{overloaded} of {CROWD} refused as overloaded; others: {:?}",
        other.iter().take(3).collect::<Vec<_>>()
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(within(Duration::from_secs(10), first)
        .await
        .unwrap()
        .is_ok());
    // Every refused caller's order is absent: placed orders are exactly the accepted ones.
    let placed: i64 = sqlx::query_scalar("SELECT count(*) FROM commerce.orders")
        .fetch_one(db.pool())
        .await
        .unwrap();
    let accepted = 1 + other.iter().filter(|a| a.is_ok()).count();
    assert!(
        usize::try_from(placed).unwrap() <= accepted + 2 * QUEUE,
        "{placed} orders written for {accepted} accepted"
    );
    assert_consistent(&commerce).await;
}

/// M5: one order its hook refuses fails alone; the rest of its batch commits, and its
/// caller gets its own error with its variant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_order_fails_alone_and_the_rest_of_its_batch_commits() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 4).await;
    let gate = Gate::default();
    let commerce = commerce_with(&db, Batching::new(), &gate);
    let hot = product(&commerce, 1, 1_000).await;
    let first = hold_one_batch(&commerce, &gate, hot).await;
    gate.armed.store(false, SeqCst);

    let crowd: Vec<_> = (0..200)
        .map(|n| {
            let user = if n == 117 {
                "bad".to_owned()
            } else {
                format!("c-{n}")
            };
            order(&commerce, user, hot, 1)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate.release.notify_waiters();
    assert!(within(Duration::from_secs(10), first)
        .await
        .unwrap()
        .is_ok());
    let (mut placed, mut refused) = (0, Vec::new());
    for (n, task) in crowd.into_iter().enumerate() {
        match within(Duration::from_secs(20), task).await.unwrap() {
            Ok(_) => placed += 1,
            Err(e) => refused.push((n, e)),
        }
    }
    assert_eq!(placed, 199, "refused: {refused:?}");
    assert!(
        matches!(refused.as_slice(), [(117, Error::Hook(_))]),
        "{refused:?}"
    );
    assert_eq!(orders_of(&db, "bad").await, 0);
    assert_eq!(
        commerce.stock_of(&[hot]).await.unwrap()[0].available,
        1_000 - 200
    );
    assert_consistent(&commerce).await;
}

/// m2: a keyed request is judged on its own, not on an earlier request of the batch with
/// the same key that was turned away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_request_is_not_refused_for_another_requests_reason() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 4).await;
    let gate = Gate::default();
    let commerce = commerce_with(&db, Batching::new(), &gate);
    // The held batch takes 1 of the 2 units.
    let hot = product(&commerce, 1, 2).await;
    let first = hold_one_batch(&commerce, &gate, hot).await;
    gate.armed.store(false, SeqCst);
    let keyed = |quantity: i64| {
        place(
            &commerce,
            NewOrder::new("u").line(hot, quantity).idempotency_key("k"),
        )
    };
    let too_many = keyed(5);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fits = keyed(1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.release.notify_waiters();
    assert!(within(Duration::from_secs(10), first)
        .await
        .unwrap()
        .is_ok());
    // Turned away for its quantity; or, once the other request placed an order under the
    // key, told that the key belongs to a different request.
    let too_many = within(Duration::from_secs(10), too_many).await.unwrap();
    assert!(
        matches!(
            too_many,
            Err(Error::InsufficientStock { requested: 5, .. } | Error::DuplicateRequest { .. })
        ),
        "{too_many:?}"
    );
    let fits = within(Duration::from_secs(10), fits).await.unwrap();
    assert!(fits.is_ok(), "{fits:?}");
    assert_consistent(&commerce).await;
}

/// m5: quantities whose sums overflow a product's figures are refused with a typed error
/// for the order that would overflow; the others of the batch are placed; nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sums_that_would_overflow_refuse_only_the_order_that_overflows() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 4).await;
    let gate = Gate::default();
    let limits = OrderLimits {
        max_quantity: i64::MAX,
        ..OrderLimits::default()
    };
    let commerce = Commerce::builder(db.pool().clone())
        .strategy(Batching::new())
        .hook(gate.clone())
        .limits(limits)
        .build();
    let hot = product(&commerce, 1, 0).await;
    let first = hold_batch_of(
        &commerce,
        &gate,
        NewOrder::new("first")
            .line(hot, 1)
            .policy(ShortagePolicy::Backorder),
    )
    .await;
    gate.armed.store(false, SeqCst);
    let huge = i64::MAX / 2 + 1;
    let backorder = |user: &'static str, quantity: i64| {
        place(
            &commerce,
            NewOrder::new(user)
                .line(hot, quantity)
                .policy(ShortagePolicy::Backorder),
        )
    };
    let a = backorder("a", huge);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b = backorder("b", huge);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = backorder("c", 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.release.notify_waiters();
    assert!(within(Duration::from_secs(10), first)
        .await
        .unwrap()
        .is_ok());
    let a = within(Duration::from_secs(10), a).await.unwrap();
    let b = within(Duration::from_secs(10), b).await.unwrap();
    let c = within(Duration::from_secs(10), c).await.unwrap();
    // The first huge one fits in a bigint beside the first order's 1 unit; the second
    // would take the product's backordered figure past i64::MAX.
    assert!(a.is_ok(), "{a:?}");
    assert!(
        matches!(b, Err(Error::InvalidQuantity { .. })),
        "the overflowing order: {b:?}"
    );
    assert!(
        matches!(c, Err(Error::InvalidQuantity { .. }) | Ok(_)),
        "{c:?}"
    );
    assert_consistent(&commerce).await;
}

/// m1: with two batches in flight the backorder queue stays first come first served: the
/// ids of one transaction's backorders never interleave with another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backorders_of_batches_in_flight_keep_their_arrival_order() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 10).await;
    let commerce = Commerce::builder(db.pool().clone())
        .strategy(Batching::with_settings(BatchSettings {
            max_batch: 100,
            ..BatchSettings::default()
        }))
        .build();
    let hot = product(&commerce, 1, 0).await;
    let start = Arc::new(tokio::sync::Barrier::new(2_000));
    let crowd: Vec<_> = (0..2_000)
        .map(|n| {
            let (commerce, start) = (commerce.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                commerce
                    .place_order(
                        NewOrder::new(format!("c-{n}"))
                            .line(hot, 1)
                            .policy(ShortagePolicy::Backorder),
                    )
                    .await
            })
        })
        .collect();
    for task in crowd {
        within(Duration::from_secs(60), task)
            .await
            .unwrap()
            .unwrap();
    }
    // One row per transaction: the range of backorder ids its orders got.
    let ranges: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT min(b.id), max(b.id) FROM commerce.backorders b \
         JOIN commerce.orders o ON o.id = b.order_id \
         GROUP BY o.created_at ORDER BY min(b.id)",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert!(ranges.len() > 1, "one transaction: nothing was pipelined");
    for pair in ranges.windows(2) {
        assert!(
            pair[0].1 < pair[1].0,
            "backorder ids of two transactions interleave: {pair:?}"
        );
    }
    assert_consistent(&commerce).await;
}

/// M4: one outside write during a surge costs a few wasted transactions, not a second
/// transaction for every batch after it (the pipeline re-plans on what was committed, and
/// plans on locked rows for a while after a failed compare-and-set).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outside_write_during_a_surge_costs_a_few_extra_transactions() {
    const CLIENTS: usize = 2_000;
    let db = TestDb::with_pool_size(&[&MIGRATOR], 10).await;
    let gate = Gate::default();
    let commerce = commerce_with(&db, Batching::new(), &gate);
    let outside = Commerce::builder(db.pool().clone()).build();
    let hot = product(&commerce, 1, 10_000_000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (commerce, stop) = (commerce.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(SeqCst) {
                    commerce
                        .place_order(NewOrder::new(format!("c-{n}")).line(hot, 1))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    outside.adjust_stock(hot, 1, "found one").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, SeqCst);
    for client in clients {
        within(Duration::from_secs(30), client).await.unwrap();
    }
    let committed: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT created_at) FROM commerce.orders")
            .fetch_one(db.pool())
            .await
            .unwrap();
    let runs = i64::try_from(gate.runs.load(SeqCst)).unwrap();
    assert!(
        runs <= committed + 3,
        "{runs} hook runs for {committed} committed batches"
    );
    assert_consistent(&commerce).await;
}
