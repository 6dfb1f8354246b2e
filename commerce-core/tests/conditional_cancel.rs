//! Cancelling only if the order is still in the status a sweep listed it in, decided under
//! the order's row lock: a saga's timeout sweep must not cancel an order paid meanwhile, and
//! an expired backorder's units go to the next one in the queue.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use commerce_core::{
    Commerce, CoreEvent, Error, LedgerKind, NewOrder, OrderId, OrderStatus, ShortagePolicy,
    TransactionHook, MIGRATOR,
};
use commerce_testkit::{eventually, within, TestDb};
use common::{assert_consistent, product, setup};
use sqlx::PgConnection;
use tokio::sync::{Barrier, Notify, Semaphore};

/// Ledger rows of kind `cancel` (stock returned by a cancellation).
async fn cancel_rows(commerce: &Commerce) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM commerce.stock_ledger WHERE kind = 'cancel'")
        .fetch_one(commerce.pool())
        .await
        .unwrap()
}

async fn status(commerce: &Commerce, order: OrderId) -> OrderStatus {
    commerce.order(order).await.unwrap().status
}

#[tokio::test]
async fn a_sweep_leaves_an_order_paid_since_it_was_listed() {
    let (db, commerce) = setup().await;
    let p = product(&commerce, 1, 5).await;
    let order = commerce
        .place_order(NewOrder::new("a").line(1, 2))
        .await
        .unwrap()
        .order;
    // The sweep listed it as CREATED; then the payment moved it on.
    commerce
        .transition_order(order.id, OrderStatus::Processing, "payment approved")
        .await
        .unwrap();

    let mut tx = db.pool().begin().await.unwrap();
    let cancelled = commerce
        .cancel_order_if_in(&mut tx, order.id, OrderStatus::Created, "payment timed out")
        .await
        .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(cancelled, None);
    assert_eq!(status(&commerce, order.id).await, OrderStatus::Processing);
    assert_eq!(cancel_rows(&commerce).await, 0);
    assert_eq!(commerce.stock(p).await.unwrap().available, 3);
    assert_eq!(commerce.order_history(order.id).await.unwrap().len(), 2);
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn an_order_still_in_the_expected_status_is_cancelled_and_its_stock_returns() {
    let (db, commerce) = setup().await;
    let p = product(&commerce, 1, 5).await;
    let order = commerce
        .place_order(NewOrder::new("a").line(1, 2))
        .await
        .unwrap()
        .order;

    // Another expected status: nothing happens.
    let other = commerce
        .cancel_order_if(order.id, OrderStatus::Backordered, "expired")
        .await
        .unwrap();
    assert_eq!(other, None);
    assert_eq!(status(&commerce, order.id).await, OrderStatus::Created);

    // Inside the caller's transaction, rolled back: nothing changes either.
    let mut tx = db.pool().begin().await.unwrap();
    let cancelled = commerce
        .cancel_order_if_in(&mut tx, order.id, OrderStatus::Created, "timed out")
        .await
        .unwrap();
    assert_eq!(cancelled.map(|o| o.status), Some(OrderStatus::Cancelled));
    tx.rollback().await.unwrap();
    assert_eq!(status(&commerce, order.id).await, OrderStatus::Created);
    assert_eq!(commerce.stock(p).await.unwrap().available, 3);

    let cancelled = commerce
        .cancel_order_if(order.id, OrderStatus::Created, "timed out")
        .await
        .unwrap()
        .expect("still CREATED: cancelled");
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(commerce.stock(p).await.unwrap().available, 5);
    assert_eq!(cancel_rows(&commerce).await, 1);
    let history = commerce.order_history(order.id).await.unwrap();
    assert_eq!(
        (history[1].from, history[1].to, history[1].reason.as_str()),
        (
            Some(OrderStatus::Created),
            OrderStatus::Cancelled,
            "timed out"
        )
    );
    // Already cancelled: no longer CREATED, so nothing to do (not an error).
    assert_eq!(
        commerce
            .cancel_order_if(order.id, OrderStatus::Created, "again")
            .await
            .unwrap(),
        None
    );
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn bad_arguments_are_refused_before_anything_is_written() {
    let (_db, commerce) = setup().await;
    product(&commerce, 1, 5).await;
    let order = commerce
        .place_order(NewOrder::new("a").line(1, 1))
        .await
        .unwrap()
        .order;
    for expected in [
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ] {
        let err = commerce
            .cancel_order_if(order.id, expected, "x")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidInput {
                    field: "expected",
                    ..
                }
            ),
            "{expected}: {err:?}"
        );
    }
    let err = commerce
        .cancel_order_if(order.id, OrderStatus::Created, " ")
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidInput {
            field: "reason",
            ..
        }
    ));
    let missing = OrderId::new();
    let err = commerce
        .cancel_order_if(missing, OrderStatus::Created, "x")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::OrderNotFound { order } if order == missing));
    assert_eq!(status(&commerce, order.id).await, OrderStatus::Created);
}

/// Once armed, holds the first transaction whose events match `filter` just before its
/// commit (its locks held) until [`Hold::release`].
#[derive(Clone)]
struct Hold {
    armed: Arc<AtomicBool>,
    arrived: Arc<Notify>,
    released: Arc<Semaphore>,
    filter: fn(&CoreEvent) -> bool,
}

impl Hold {
    fn new(filter: fn(&CoreEvent) -> bool) -> Self {
        Self {
            armed: Arc::new(AtomicBool::new(false)),
            arrived: Arc::new(Notify::new()),
            released: Arc::new(Semaphore::new(0)),
            filter,
        }
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    async fn arrived(&self) {
        within(Duration::from_secs(10), self.arrived.notified()).await;
    }

    fn release(&self) {
        self.released.add_permits(1);
    }
}

#[async_trait]
impl TransactionHook for Hold {
    async fn before_commit(
        &self,
        _conn: &mut PgConnection,
        events: &[CoreEvent],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if events.iter().any(self.filter) && self.armed.swap(false, Ordering::SeqCst) {
            self.arrived.notify_one();
            let permit = within(Duration::from_secs(10), self.released.acquire()).await?;
            permit.forget();
        }
        Ok(())
    }
}

/// Waits until some backend of the test database waits for a lock.
async fn someone_waits_for_a_lock(db: &TestDb) {
    let pool = db.pool().clone();
    let waiting = eventually(Duration::from_secs(10), || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            n > 0
        }
    })
    .await;
    assert!(waiting, "the second transaction never waited for the lock");
}

async fn with_hold(hold: &Hold) -> (TestDb, Commerce) {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 10).await;
    let commerce = Commerce::builder(db.pool().clone())
        .hook(hold.clone())
        .build();
    (db, commerce)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_committing_first_makes_the_conditional_cancel_do_nothing() {
    let hold = Hold::new(|e| {
        matches!(
            e,
            CoreEvent::OrderStatusChanged {
                to: OrderStatus::Processing,
                ..
            }
        )
    });
    let (db, commerce) = with_hold(&hold).await;
    let p = product(&commerce, 1, 5).await;
    let order = commerce
        .place_order(NewOrder::new("a").line(1, 2))
        .await
        .unwrap()
        .order;

    hold.arm();
    let payment = tokio::spawn({
        let commerce = commerce.clone();
        async move {
            commerce
                .transition_order(order.id, OrderStatus::Processing, "payment approved")
                .await
        }
    });
    // The payment holds the order's row lock; the cancel reads CREATED before it would lock.
    hold.arrived().await;
    let cancel = tokio::spawn({
        let commerce = commerce.clone();
        async move {
            commerce
                .cancel_order_if(order.id, OrderStatus::Created, "payment timed out")
                .await
        }
    });
    someone_waits_for_a_lock(&db).await;
    hold.release();

    let paid = within(Duration::from_secs(10), payment)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(paid.status, OrderStatus::Processing);
    let cancelled = within(Duration::from_secs(10), cancel)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled, None, "cancelled an order paid meanwhile");
    assert_eq!(status(&commerce, order.id).await, OrderStatus::Processing);
    assert_eq!(cancel_rows(&commerce).await, 0);
    assert_eq!(commerce.stock(p).await.unwrap().available, 3);
    assert_consistent(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_cancel_committing_first_refuses_the_payment() {
    let hold = Hold::new(|e| matches!(e, CoreEvent::OrderCancelled { .. }));
    let (db, commerce) = with_hold(&hold).await;
    let p = product(&commerce, 1, 5).await;
    let order = commerce
        .place_order(NewOrder::new("a").line(1, 2))
        .await
        .unwrap()
        .order;

    hold.arm();
    let cancel = tokio::spawn({
        let commerce = commerce.clone();
        async move {
            commerce
                .cancel_order_if(order.id, OrderStatus::Created, "payment timed out")
                .await
        }
    });
    hold.arrived().await;
    let payment = tokio::spawn({
        let commerce = commerce.clone();
        async move {
            commerce
                .transition_order(order.id, OrderStatus::Processing, "payment approved")
                .await
        }
    });
    someone_waits_for_a_lock(&db).await;
    hold.release();

    let cancelled = within(Duration::from_secs(10), cancel)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled.map(|o| o.status), Some(OrderStatus::Cancelled));
    let paid = within(Duration::from_secs(10), payment).await.unwrap();
    assert!(
        matches!(
            paid,
            Err(Error::IllegalTransition {
                from: OrderStatus::Cancelled,
                to: OrderStatus::Processing,
                ..
            })
        ),
        "{paid:?}"
    );
    assert_eq!(commerce.stock(p).await.unwrap().available, 5);
    assert_consistent(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_payment_and_conditional_cancel_never_both_win() {
    let (_db, commerce) = setup().await;
    let p = product(&commerce, 1, 1_000).await;
    for round in 0..30 {
        let order = commerce
            .place_order(NewOrder::new("a").line(1, 1))
            .await
            .unwrap()
            .order;
        let start = Arc::new(Barrier::new(2));
        let payment = tokio::spawn({
            let (commerce, start) = (commerce.clone(), Arc::clone(&start));
            async move {
                start.wait().await;
                commerce
                    .transition_order(order.id, OrderStatus::Processing, "paid")
                    .await
            }
        });
        let cancel = tokio::spawn({
            let (commerce, start) = (commerce.clone(), Arc::clone(&start));
            async move {
                start.wait().await;
                commerce
                    .cancel_order_if(order.id, OrderStatus::Created, "timed out")
                    .await
            }
        });
        let paid = payment.await.unwrap();
        let cancelled = cancel.await.unwrap().unwrap();
        match (&paid, &cancelled) {
            (Ok(_), None) => {
                assert_eq!(status(&commerce, order.id).await, OrderStatus::Processing);
            }
            (Err(Error::IllegalTransition { .. }), Some(_)) => {
                assert_eq!(status(&commerce, order.id).await, OrderStatus::Cancelled);
            }
            other => panic!("round {round}: not exactly one winner: {other:?}"),
        }
    }
    let (cancelled, taken): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'CANCELLED'), \
                count(*) FILTER (WHERE status <> 'CANCELLED') FROM commerce.orders",
    )
    .fetch_one(commerce.pool())
    .await
    .unwrap();
    assert_eq!(cancel_rows(&commerce).await, cancelled);
    assert_eq!(commerce.stock(p).await.unwrap().available, 1_000 - taken);
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn an_expired_backorder_gives_its_units_to_the_next_backorder() {
    let (db, commerce) = setup().await;
    let p = product(&commerce, 1, 2).await;
    let backorder = |user: &str, quantity| {
        NewOrder::new(user)
            .line(1, quantity)
            .policy(ShortagePolicy::Backorder)
    };
    // The first takes the 2 units there are and waits for 3 more; the second waits for 2.
    let old = commerce
        .place_order(backorder("old", 5))
        .await
        .unwrap()
        .order;
    let next = commerce
        .place_order(backorder("next", 2))
        .await
        .unwrap()
        .order;
    assert_eq!((old.lines[0].allocated, next.lines[0].allocated), (2, 0));
    sqlx::query("UPDATE commerce.orders SET updated_at = now() - interval '2 hours' WHERE id = $1")
        .bind(old.id.0)
        .execute(db.pool())
        .await
        .unwrap();

    // The expiry sweep: BACKORDERED for more than an hour.
    let expired = commerce
        .orders_stuck_in(OrderStatus::Backordered, Duration::from_secs(3600), 100)
        .await
        .unwrap();
    assert_eq!(expired, vec![old.id]);
    for order in expired {
        let cancelled = commerce
            .cancel_order_if(order, OrderStatus::Backordered, "backorder expired")
            .await
            .unwrap();
        assert_eq!(cancelled.map(|o| o.status), Some(OrderStatus::Cancelled));
    }

    // Its 2 allocated units came back and went straight to the next backorder.
    let next = commerce.order(next.id).await.unwrap();
    assert_eq!(next.status, OrderStatus::Created);
    assert_eq!(next.lines[0].allocated, 2);
    let stock = commerce.stock(p).await.unwrap();
    assert_eq!((stock.available, stock.backordered), (0, 0));
    assert!(commerce.backorders(p).await.unwrap().is_empty());
    let ledger = commerce.ledger(p, None, 2).await.unwrap().entries;
    let moves: Vec<_> = ledger
        .iter()
        .rev()
        .map(|e| (e.kind, e.delta, e.reference.clone()))
        .collect();
    assert_eq!(
        moves,
        [
            (LedgerKind::Cancel, 2, Some(old.id.to_string())),
            (LedgerKind::Order, -2, Some(next.id.to_string())),
        ]
    );
    // Served, so no longer BACKORDERED: the next sweep leaves it alone.
    assert!(commerce
        .orders_stuck_in(OrderStatus::Backordered, Duration::ZERO, 100)
        .await
        .unwrap()
        .is_empty());
    assert_consistent(&commerce).await;
}
