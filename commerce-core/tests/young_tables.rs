//! Reads and moves of orders by a list of ids keep finding them by primary key after the
//! tables grew, even when nothing analyzed them since they were young (autovacuum off, or
//! not yet round): a statement prepared on a young table must not keep a whole-table plan.
//!
//! Each test runs on one connection (statements are prepared per connection), calls the
//! statement more times than Postgres needs to settle on one plan while the tables are
//! small, grows them by 20,000 rows, and counts the whole-table reads of the calls after.

mod common;

use commerce_core::{
    Commerce, NewOrder, OrderId, OrderStatus, ProductId, ShortagePolicy, MIGRATOR,
};
use commerce_testkit::TestDb;
use common::product;
use sqlx::PgConnection;

/// Calls while the tables are young, then after they grew.
const ROUNDS: usize = 12;

/// A database whose pool has one connection, with autovacuum off on the order tables.
async fn one_connection() -> (TestDb, Commerce) {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 1).await;
    for table in ["orders", "order_lines", "backorders"] {
        sqlx::query(&format!(
            "ALTER TABLE commerce.{table} SET (autovacuum_enabled = false)"
        ))
        .execute(db.pool())
        .await
        .unwrap();
    }
    let commerce = Commerce::builder(db.pool().clone()).build();
    (db, commerce)
}

/// Adds 20,000 delivered orders of product 1, one line each.
async fn grow(conn: &mut PgConnection) {
    sqlx::query(
        "WITH o AS (
             INSERT INTO commerce.orders (id, user_id, status, shortage_policy)
             SELECT gen_random_uuid(), 'old-' || n, 'DELIVERED', 'reject'
             FROM generate_series(1, 20000) AS n
             RETURNING id)
         INSERT INTO commerce.order_lines (order_id, product_id, quantity, allocated, unit_price)
         SELECT id, 1, 1, 1, 100 FROM o",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
}

/// Whole-table reads of `commerce.{table}` so far, on the test's one backend.
async fn seq_scans(conn: &mut PgConnection, table: &str) -> i64 {
    commerce_testkit::seq_scans(conn, "commerce", table).await
}

/// Grows the tables ([`grow`]), then runs `calls` (which take the pool's one connection as
/// they need it) and returns how many times they read `commerce.{table}` whole.
async fn whole_reads_once_grown(db: &TestDb, table: &str, calls: impl AsyncFnOnce()) -> i64 {
    let mut conn = db.pool().acquire().await.unwrap();
    grow(&mut conn).await;
    let before = seq_scans(&mut conn, table).await;
    drop(conn);
    calls().await;
    let mut conn = db.pool().acquire().await.unwrap();
    seq_scans(&mut conn, table).await - before
}

async fn place(commerce: &Commerce, user: &str, policy: ShortagePolicy) -> OrderId {
    commerce
        .place_order(NewOrder::new(user).line(1, 1).policy(policy))
        .await
        .unwrap()
        .order
        .id
}

#[tokio::test]
async fn order_totals_read_by_key_once_the_tables_grew() {
    let (db, commerce) = one_connection().await;
    product(&commerce, 1, 1_000).await;
    let mut orders = Vec::new();
    for i in 0..8 {
        orders.push(place(&commerce, &format!("user-{i}"), ShortagePolicy::Reject).await);
    }
    let mut conn = db.pool().acquire().await.unwrap();
    for _ in 0..ROUNDS {
        let totals = Commerce::order_totals_in(&mut conn, &orders).await.unwrap();
        assert_eq!(totals.len(), orders.len());
    }
    grow(&mut conn).await;
    let before = (
        seq_scans(&mut conn, "orders").await,
        seq_scans(&mut conn, "order_lines").await,
    );
    for _ in 0..ROUNDS {
        let totals = Commerce::order_totals_in(&mut conn, &orders).await.unwrap();
        assert_eq!(totals.len(), orders.len());
    }
    let after = (
        seq_scans(&mut conn, "orders").await,
        seq_scans(&mut conn, "order_lines").await,
    );
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (0, 0),
        "whole-table reads of (orders, order_lines) in {ROUNDS} reads of totals"
    );
}

/// A guard: this read is prepared and stays so, since its order (`order_id, product_id`) is
/// the primary key's and an index scan wins even on a young table.
#[tokio::test]
async fn a_page_of_orders_reads_its_lines_by_key_once_the_tables_grew() {
    let (db, commerce) = one_connection().await;
    product(&commerce, 1, 1_000).await;
    for _ in 0..5 {
        place(&commerce, "shopper", ShortagePolicy::Reject).await;
    }
    for _ in 0..ROUNDS {
        let page = commerce.orders_of_user("shopper", 10, None).await.unwrap();
        assert_eq!(page.orders.len(), 5);
    }
    let whole = whole_reads_once_grown(&db, "order_lines", async || {
        for _ in 0..ROUNDS {
            let page = commerce.orders_of_user("shopper", 10, None).await.unwrap();
            assert_eq!(page.orders.len(), 5);
            assert!(page.orders.iter().all(|o| o.lines.len() == 1));
        }
    })
    .await;
    assert_eq!(
        whole, 0,
        "{ROUNDS} pages read order_lines whole {whole} times"
    );
}

/// Four backorders, then the stock that completes them (CREATED).
async fn backorder_round(commerce: &Commerce, n: usize) {
    let mut orders = Vec::new();
    for i in 0..4 {
        let user = format!("user-{n}-{i}");
        orders.push(place(commerce, &user, ShortagePolicy::Backorder).await);
    }
    commerce.receive_stock(ProductId(1), 4, None).await.unwrap();
    for order in orders {
        let status = commerce.order(order).await.unwrap().status;
        assert_eq!(status, OrderStatus::Created);
    }
}

#[tokio::test]
async fn completing_backorders_finds_them_by_key_once_the_tables_grew() {
    let (db, commerce) = one_connection().await;
    product(&commerce, 1, 0).await;
    for n in 0..ROUNDS {
        backorder_round(&commerce, n).await;
    }
    let whole = whole_reads_once_grown(&db, "orders", async || {
        for n in ROUNDS..2 * ROUNDS {
            backorder_round(&commerce, n).await;
        }
    })
    .await;
    assert_eq!(
        whole, 0,
        "{ROUNDS} completions read orders whole {whole} times"
    );
}

/// `ROUNDS` keyed orders of product 1 by `commerce`, each under a new key.
async fn keyed_orders(commerce: &Commerce, round: usize) {
    for n in 0..ROUNDS {
        commerce
            .place_order(
                NewOrder::new(format!("user-{n}"))
                    .line(1, 1)
                    .idempotency_key(format!("key-{round}-{n}")),
            )
            .await
            .unwrap();
    }
}

/// Placing a keyed order looks its key up among the orders already placed: once the tables
/// grew, by the key's index, whichever strategy places it.
async fn keys_found_by_index(commerce: Commerce, db: TestDb) {
    product(&commerce, 1, 1_000).await;
    keyed_orders(&commerce, 0).await;
    let whole = whole_reads_once_grown(&db, "orders", async || {
        keyed_orders(&commerce, 1).await;
    })
    .await;
    assert_eq!(
        whole, 0,
        "{ROUNDS} keyed placements read orders whole {whole} times"
    );
}

#[tokio::test]
async fn a_keyed_order_finds_its_key_by_index_once_the_tables_grew() {
    let (db, commerce) = one_connection().await;
    keys_found_by_index(commerce, db).await;
}

#[cfg(feature = "batching")]
#[tokio::test]
async fn a_batch_of_keyed_orders_finds_its_keys_by_index_once_the_tables_grew() {
    let (db, _) = one_connection().await;
    let commerce = Commerce::builder(db.pool().clone())
        .strategy(commerce_core::strategy::Batching::new())
        .build();
    keys_found_by_index(commerce, db).await;
}

/// The sweep for orders stuck in a status (the app runs it every few seconds) reads the
/// waiting orders by their index once the tables grew, not every order.
#[tokio::test]
async fn the_sweep_for_stuck_orders_reads_by_index_once_the_tables_grew() {
    let (db, commerce) = one_connection().await;
    product(&commerce, 1, 0).await;
    for i in 0..3 {
        place(&commerce, &format!("user-{i}"), ShortagePolicy::Backorder).await;
    }
    let sweep = async || {
        commerce
            .orders_stuck_in(OrderStatus::Backordered, std::time::Duration::ZERO, 100)
            .await
            .unwrap()
    };
    for _ in 0..ROUNDS {
        assert_eq!(sweep().await.len(), 3);
    }
    let whole = whole_reads_once_grown(&db, "orders", async || {
        for _ in 0..ROUNDS {
            assert_eq!(sweep().await.len(), 3);
        }
    })
    .await;
    assert_eq!(whole, 0, "{ROUNDS} sweeps read orders whole {whole} times");
}

/// The purge of kept idempotency keys (run periodically) finds them by their index once the
/// tables grew.
#[tokio::test]
async fn the_key_purge_finds_kept_keys_by_index_once_the_tables_grew() {
    let (db, commerce) = one_connection().await;
    product(&commerce, 1, 1_000).await;
    keyed_orders(&commerce, 0).await;
    let purge = async || {
        commerce
            .forget_idempotency_keys(std::time::Duration::from_secs(3_600), 100)
            .await
            .unwrap()
    };
    for _ in 0..ROUNDS {
        assert_eq!(purge().await, 0, "every key is younger than an hour");
    }
    let whole = whole_reads_once_grown(&db, "orders", async || {
        for _ in 0..ROUNDS {
            assert_eq!(purge().await, 0);
        }
    })
    .await;
    assert_eq!(whole, 0, "{ROUNDS} purges read orders whole {whole} times");
}
