//! Moving many orders at once (a payment saga applying a round of approvals): one
//! transaction, one hook run, only the orders still in the expected status.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use commerce_core::{
    BatchTransition, Commerce, CoreEvent, Error, NewOrder, OrderId, OrderStatus, TransactionHook,
    MIGRATOR,
};
use commerce_testkit::TestDb;
use common::{assert_consistent, product};
use sqlx::PgConnection;

/// Records every hook run's events.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<Vec<Vec<CoreEvent>>>>);

#[async_trait]
impl TransactionHook for Runs {
    async fn before_commit(
        &self,
        _conn: &mut PgConnection,
        events: &[CoreEvent],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0.lock().unwrap().push(events.to_vec());
        Ok(())
    }
}

async fn shop() -> (TestDb, Commerce, Runs) {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 4).await;
    let runs = Runs::default();
    let commerce = Commerce::builder(db.pool().clone())
        .hook(runs.clone())
        .build();
    (db, commerce, runs)
}

async fn place(commerce: &Commerce, user: &str) -> OrderId {
    commerce
        .place_order(NewOrder::new(user).line(1, 1))
        .await
        .unwrap()
        .order
        .id
}

#[tokio::test]
async fn only_the_orders_still_in_the_expected_status_move_in_one_hook_run() {
    let (db, commerce, runs) = shop().await;
    product(&commerce, 1, 100).await;
    let mut orders = Vec::new();
    for i in 0..20 {
        orders.push(place(&commerce, &format!("user-{i}")).await);
    }
    // Cancelled meanwhile (by its owner, or the saga's timeout).
    commerce
        .cancel_order(orders[3], "changed my mind")
        .await
        .unwrap();
    let unknown = OrderId(uuid::Uuid::now_v7());
    let mut asked = orders.clone();
    asked.push(unknown);
    runs.0.lock().unwrap().clear();

    let mut conn = db.pool().acquire().await.unwrap();
    let outcome = approve(&commerce, &mut conn, &asked).await;
    drop(conn);

    assert_eq!(outcome.moved.len(), 19);
    assert!(!outcome.moved.contains(&orders[3]));
    assert_eq!(outcome.skipped, vec![(orders[3], OrderStatus::Cancelled)]);
    assert_eq!(outcome.missing, vec![unknown]);
    for (i, &order) in orders.iter().enumerate() {
        let expected = if i == 3 {
            OrderStatus::Cancelled
        } else {
            OrderStatus::Processing
        };
        assert_eq!(commerce.order(order).await.unwrap().status, expected);
    }
    let history = commerce.order_history(orders[0]).await.unwrap();
    let last = history.last().unwrap();
    assert_eq!(last.from, Some(OrderStatus::Created));
    assert_eq!(last.to, OrderStatus::Processing);
    assert_eq!(last.reason, "payment approved");
    let runs = runs.0.lock().unwrap().clone();
    assert_eq!(runs.len(), 1, "one hook run for the whole batch");
    assert_eq!(runs[0].len(), 19);
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn a_batch_cancellation_or_an_impossible_move_is_refused() {
    let (db, commerce, _runs) = shop().await;
    product(&commerce, 1, 100).await;
    let order = place(&commerce, "a").await;
    let mut tx = db.pool().begin().await.unwrap();
    for (from, to) in [
        (OrderStatus::Created, OrderStatus::Cancelled),
        (OrderStatus::Created, OrderStatus::Delivered),
    ] {
        let refused = commerce
            .transition_orders_in(&mut tx, &[order], from, to, "why")
            .await;
        assert!(
            matches!(refused, Err(Error::InvalidInput { .. })),
            "{from} -> {to}: {refused:?}"
        );
    }
    drop(tx);
    assert_eq!(
        commerce.order(order).await.unwrap().status,
        OrderStatus::Created
    );
}

/// Whole-table reads of `commerce.orders` so far, on the test's one backend.
async fn order_seq_scans(conn: &mut PgConnection) -> i64 {
    commerce_testkit::seq_scans(conn, "commerce", "orders").await
}

/// Moves `orders` from CREATED to PROCESSING in one transaction on `conn`, as a round of
/// payment approvals does.
async fn approve(
    commerce: &Commerce,
    conn: &mut PgConnection,
    orders: &[OrderId],
) -> BatchTransition {
    let mut tx = sqlx::Connection::begin(conn).await.unwrap();
    let outcome = commerce
        .transition_orders_in(
            &mut tx,
            orders,
            OrderStatus::Created,
            OrderStatus::Processing,
            "payment approved",
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    outcome
}

/// [`approve`], every one of `orders` moved.
async fn move_round(commerce: &Commerce, conn: &mut PgConnection, orders: &[OrderId]) {
    let outcome = approve(commerce, conn, orders).await;
    assert_eq!(outcome.moved.len(), orders.len());
}

/// A saga that began moving orders while the table was young keeps finding them by index
/// once the table has grown, even before anything analyzed it (autovacuum off, or not yet
/// round): a statement prepared on the young table must not keep a whole-table plan.
#[tokio::test]
async fn moving_orders_never_scans_the_whole_table_once_grown() {
    // One connection, as a saga worker's: statements are prepared per connection, and every
    // statement of the test is counted.
    let db = TestDb::with_pool_size(&[&MIGRATOR], 1).await;
    let commerce = Commerce::builder(db.pool().clone()).build();
    sqlx::query("ALTER TABLE commerce.orders SET (autovacuum_enabled = false)")
        .execute(db.pool())
        .await
        .unwrap();
    product(&commerce, 1, 1_000).await;
    let mut rounds = Vec::new();
    for round in 0..24 {
        let mut orders = Vec::new();
        for i in 0..8 {
            orders.push(place(&commerce, &format!("user-{round}-{i}")).await);
        }
        rounds.push(orders);
    }
    let mut conn = db.pool().acquire().await.unwrap();
    let mut rounds = rounds.into_iter();
    // Young: more rounds than Postgres needs to settle on one plan per prepared statement.
    for orders in rounds.by_ref().take(12) {
        move_round(&commerce, &mut conn, &orders).await;
    }
    // Grown: 20,000 older orders.
    sqlx::query(
        "INSERT INTO commerce.orders (id, user_id, status, shortage_policy)
         SELECT gen_random_uuid(), 'old-' || n, 'DELIVERED', 'reject'
         FROM generate_series(1, 20000) AS n",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let before = order_seq_scans(&mut conn).await;
    for orders in rounds {
        move_round(&commerce, &mut conn, &orders).await;
    }
    let after = order_seq_scans(&mut conn).await;
    assert_eq!(
        after - before,
        0,
        "12 rounds on the grown table read it whole {} times",
        after - before
    );
}
