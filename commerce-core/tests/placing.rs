//! Placing orders: one transaction, all or nothing, shortage policies, idempotency, hooks.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use commerce_core::{
    CoreEvent, Error, LedgerKind, NewOrder, NewProduct, OrderStatus, ProductId, ShortagePolicy,
    TransactionHook,
};
use common::{assert_consistent, product, setup};
use sqlx::PgConnection;

#[tokio::test]
async fn an_order_takes_its_stock_and_writes_order_lines_history_and_ledger() {
    let (_db, commerce) = setup().await;
    let mug = product(&commerce, 1, 10).await;
    let placed = commerce
        .place_order(NewOrder::new("alice").line(1, 3))
        .await
        .unwrap();
    assert!(!placed.replayed);
    assert_eq!(placed.order.status, OrderStatus::Created);
    assert_eq!(commerce.stock(mug).await.unwrap().available, 7);

    let stored = commerce.order(placed.order.id).await.unwrap();
    assert_eq!(stored.lines, placed.order.lines);
    let history = commerce.order_history(placed.order.id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].from, history[0].to),
        (None, OrderStatus::Created)
    );

    let ledger = commerce.ledger(mug, None, 10).await.unwrap();
    let newest = &ledger.entries[0];
    assert_eq!(
        (newest.kind, newest.delta, newest.available_after),
        (LedgerKind::Order, -3, 7)
    );
    assert_eq!(
        newest.reference.as_deref(),
        Some(placed.order.id.to_string().as_str())
    );
    assert_eq!(ledger.entries[1].kind, LedgerKind::Inbound);
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn a_multi_line_order_is_all_or_nothing() {
    let (_db, commerce) = setup().await;
    product(&commerce, 1, 5).await;
    product(&commerce, 2, 1).await;
    product(&commerce, 3, 5).await;
    let err = commerce
        .place_order(NewOrder::new("bob").line(3, 2).line(1, 2).line(2, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InsufficientStock {
                product: ProductId(2),
                requested: 2,
                available: 1
            }
        ),
        "{err:?}"
    );
    for (id, stock) in [(1, 5), (2, 1), (3, 5)] {
        assert_eq!(
            commerce.stock(ProductId(id)).await.unwrap().available,
            stock
        );
    }
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM commerce.orders")
        .fetch_one(commerce.pool())
        .await
        .unwrap();
    assert_eq!(orders, 0, "nothing is written for a rejected order");
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn reject_policy_reports_what_was_short() {
    let (_db, commerce) = setup().await;
    product(&commerce, 1, 2).await;
    let err = commerce
        .place_order(NewOrder::new("u").line(1, 3))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::InsufficientStock {
            product: ProductId(1),
            requested: 3,
            available: 2
        }
    ));
}

#[tokio::test]
async fn unknown_products_are_rejected_without_writes() {
    let (_db, commerce) = setup().await;
    product(&commerce, 1, 2).await;
    for policy in [ShortagePolicy::Reject, ShortagePolicy::Backorder] {
        let err = commerce
            .place_order(NewOrder::new("u").line(1, 1).line(99, 1).policy(policy))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::ProductNotFound {
                    product: ProductId(99)
                }
            ),
            "{err:?}"
        );
    }
    assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 2);
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn bad_input_is_rejected_before_anything_is_written() {
    let (_db, commerce) = setup().await;
    product(&commerce, 1, 100).await;
    let cases = [
        NewOrder::new("u"),
        NewOrder::new("u").line(1, 0),
        NewOrder::new("u").line(1, -5),
        NewOrder::new("u").line(1, i64::MAX),
        NewOrder::new("u").line(1, 1).line(1, 2),
        NewOrder::new("").line(1, 1),
        NewOrder::new("u").line(1, 1).idempotency_key(""),
    ];
    for order in cases {
        let err = commerce.place_order(order.clone()).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::EmptyOrder
                    | Error::InvalidQuantity { .. }
                    | Error::DuplicateLine { .. }
                    | Error::InvalidInput { .. }
            ),
            "{order:?} gave {err:?}"
        );
    }
    assert!(matches!(
        commerce.receive_stock(ProductId(1), 0, None).await,
        Err(Error::InvalidQuantity { .. })
    ));
    assert!(matches!(
        commerce.adjust_stock(ProductId(1), -101, "count").await,
        Err(Error::InsufficientStock { .. })
    ));
    assert!(matches!(
        commerce
            .create_product(NewProduct::new(ProductId(1), "again").stock(0))
            .await,
        Err(Error::ProductAlreadyExists { .. })
    ));
    assert!(matches!(
        commerce
            .create_product(NewProduct::new(ProductId(2), "neg").stock(-1))
            .await,
        Err(Error::InvalidQuantity { .. })
    ));
    assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 100);
    let ledger = commerce.ledger(ProductId(1), None, 10).await.unwrap();
    assert_eq!(ledger.entries.len(), 1, "only the initial stock");
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn the_same_key_returns_the_first_order_and_a_different_request_is_refused() {
    let (_db, commerce) = setup().await;
    product(&commerce, 1, 10).await;
    let request = NewOrder::new("carol")
        .line(1, 2)
        .idempotency_key("checkout-1");
    let first = commerce.place_order(request.clone()).await.unwrap();
    let again = commerce.place_order(request).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.order.id, first.order.id);
    assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 8);

    let err = commerce
        .place_order(
            NewOrder::new("carol")
                .line(1, 5)
                .idempotency_key("checkout-1"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateRequest { existing, .. } if existing == first.order.id));
    // Keys are per user.
    let other = commerce
        .place_order(
            NewOrder::new("dave")
                .line(1, 2)
                .idempotency_key("checkout-1"),
        )
        .await
        .unwrap();
    assert_ne!(other.order.id, first.order.id);
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn racing_duplicates_create_one_order() {
    let (_db, commerce) = common::setup_with_pool(30).await;
    product(&commerce, 1, 1000).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (commerce, barrier) = (commerce.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            commerce
                .place_order(NewOrder::new("erin").line(1, 3).idempotency_key("k"))
                .await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut fresh = 0;
    for task in tasks {
        let placed = task.await.unwrap().unwrap();
        ids.insert(placed.order.id);
        fresh += usize::from(!placed.replayed);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(fresh, 1);
    assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 997);
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn one_user_may_place_many_orders_at_once() {
    let (_db, commerce) = common::setup_with_pool(20).await;
    product(&commerce, 1, 1000).await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let commerce = commerce.clone();
            tokio::spawn(async move {
                commerce
                    .place_order(
                        NewOrder::new("frank")
                            .line(1, 1)
                            .idempotency_key(format!("k{i}")),
                    )
                    .await
            })
        })
        .collect();
    for task in tasks {
        assert!(!task.await.unwrap().unwrap().replayed);
    }
    assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 960);
    assert_consistent(&commerce).await;
}

/// Records events into a table of its own, in the caller's transaction; fails on demand.
struct RecordingHook {
    fail_on: Option<&'static str>,
    calls: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl TransactionHook for RecordingHook {
    async fn before_commit(
        &self,
        conn: &mut PgConnection,
        events: &[CoreEvent],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        for event in events {
            sqlx::query("INSERT INTO hook_events (event_type, aggregate_id) VALUES ($1, $2)")
                .bind(event.event_type())
                .bind(event.aggregate_id())
                .execute(&mut *conn)
                .await?;
            if Some(event.event_type()) == self.fail_on {
                return Err("hook refused".into());
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn hook_rows_commit_with_the_order_and_a_failing_hook_rolls_everything_back() {
    let (db, _) = setup().await;
    sqlx::query("CREATE TABLE hook_events (event_type TEXT, aggregate_id TEXT)")
        .execute(db.pool())
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let commerce = commerce_core::Commerce::builder(db.pool().clone())
        .hook(RecordingHook {
            fail_on: Some("order.cancelled"),
            calls: calls.clone(),
        })
        .build();
    product(&commerce, 1, 5).await;
    let placed = commerce
        .place_order(NewOrder::new("u").line(1, 2))
        .await
        .unwrap();
    let err = commerce
        .cancel_order(placed.order.id, "changed mind")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Hook(_)), "{err:?}");
    assert_eq!(
        commerce.order(placed.order.id).await.unwrap().status,
        OrderStatus::Created
    );
    assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 3);

    let events: Vec<(String, String)> =
        sqlx::query_as("SELECT event_type, aggregate_id FROM hook_events ORDER BY event_type")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(
        events,
        [
            ("order.placed".to_owned(), placed.order.id.to_string()),
            ("stock.received".to_owned(), "1".to_owned()),
        ],
        "the cancel's events rolled back with it"
    );
    // A rejected order never reaches the hook.
    let before = calls.load(Ordering::SeqCst);
    let _ = commerce
        .place_order(NewOrder::new("u").line(1, 50))
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), before);
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn products_can_be_read_and_renamed() {
    let (_db, commerce) = setup().await;
    let p = product(&commerce, 5, 1).await;
    assert_eq!(
        commerce.product(p).await.unwrap().unwrap().name,
        "product 5"
    );
    assert_eq!(commerce.product(ProductId(6)).await.unwrap(), None);
    let renamed = commerce.rename_product(p, "Teapot").await.unwrap();
    assert_eq!(renamed.name, "Teapot");
    assert_eq!(commerce.product(p).await.unwrap().unwrap().name, "Teapot");
    assert!(matches!(
        commerce.rename_product(p, "  ").await,
        Err(Error::InvalidInput { field: "name", .. })
    ));
    assert!(matches!(
        commerce.rename_product(ProductId(6), "x").await,
        Err(Error::ProductNotFound { .. })
    ));
}

/// A hook whose statement Postgres aborts as a deadlock victim.
struct DeadlockVictim;

#[async_trait::async_trait]
impl TransactionHook for DeadlockVictim {
    async fn before_commit(
        &self,
        conn: &mut PgConnection,
        _events: &[commerce_core::CoreEvent],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        sqlx::query(
            "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$",
        )
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_deadlock_inside_a_hook_is_a_retryable_conflict() {
    let (db, _) = setup().await;
    let commerce = commerce_core::Commerce::builder(db.pool().clone())
        .hook(DeadlockVictim)
        .build();
    let err = commerce
        .create_product(commerce_core::NewProduct::new(commerce_core::ProductId(1), "p").stock(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, commerce_core::Error::Conflict(_)) && err.is_retryable(),
        "{err:?}"
    );
}

/// Keeps every event it sees (the transactions it saw all committed in these tests).
#[derive(Clone, Default)]
struct EventLog(Arc<std::sync::Mutex<Vec<CoreEvent>>>);

#[async_trait::async_trait]
impl TransactionHook for EventLog {
    async fn before_commit(
        &self,
        _conn: &mut PgConnection,
        events: &[CoreEvent],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

/// Review finding m6: the adjustment's event reports what is left after it served the
/// queue, as a receipt's does.
#[tokio::test]
async fn a_positive_adjustment_reports_the_stock_left_after_serving_backorders() {
    let (db, _) = setup().await;
    let log = EventLog::default();
    let commerce = commerce_core::Commerce::builder(db.pool().clone())
        .hook(log.clone())
        .build();
    product(&commerce, 1, 0).await;
    commerce
        .place_order(
            NewOrder::new("u")
                .line(1, 3)
                .policy(commerce_core::ShortagePolicy::Backorder),
        )
        .await
        .unwrap();
    let after = commerce
        .adjust_stock(ProductId(1), 5, "count")
        .await
        .unwrap();
    assert_eq!(after.available, 2);
    let reported = log.0.lock().unwrap().iter().rev().find_map(|e| match e {
        CoreEvent::StockAdjusted { available, .. } => Some(*available),
        _ => None,
    });
    assert_eq!(reported, Some(2));
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn a_new_orders_history_is_known_without_reading_it_back_and_a_replays_is_not() {
    let (_db, commerce) = setup().await;
    product(&commerce, 1, 2).await;
    for (key, quantity, policy) in [
        ("created", 1, ShortagePolicy::Reject),
        ("backordered", 5, ShortagePolicy::Backorder),
    ] {
        let order = || {
            NewOrder::new("alice")
                .line(1, quantity)
                .policy(policy)
                .idempotency_key(key)
        };
        let placed = commerce.place_order(order()).await.unwrap();
        let stored = commerce.order_history(placed.order.id).await.unwrap();
        assert_eq!(placed.placement_history(), Some(stored), "{key}");
        let again = commerce.place_order(order()).await.unwrap();
        assert!(again.replayed);
        assert_eq!(again.placement_history(), None, "a replay's is read");
    }
}
