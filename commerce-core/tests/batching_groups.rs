//! Group commit across products: under a broad sale (many products, a few orders each at any
//! moment) the batches of different products share transactions, and everything the
//! one-product batches guarantee still holds.

mod common;

use std::sync::Arc;
use std::time::Duration;

use commerce_core::strategy::{BatchSettings, Batching};
use commerce_core::{Commerce, Error, NewOrder, ProductId, ShortagePolicy, MIGRATOR};
use commerce_testkit::{within, TestDb};
use common::{assert_consistent, product};
use tokio::sync::Barrier;

const PRODUCTS: i64 = 200;
const CLIENTS: usize = 64;
const ORDERS_EACH: usize = 20;

/// `CLIENTS` clients each placing `ORDERS_EACH` orders, every one for another product;
/// returns how many were placed.
async fn broad_sale(commerce: &Commerce, policy: ShortagePolicy) -> usize {
    let start = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (commerce, start) = (commerce.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                let mut placed = 0;
                for n in 0..ORDERS_EACH {
                    let id = i64::try_from(client * 7 + n * 13).unwrap() % PRODUCTS + 1;
                    let order = NewOrder::new(format!("c-{client}"))
                        .line(ProductId(id), 1)
                        .policy(policy);
                    match commerce.place_order(order).await {
                        Ok(_) => placed += 1,
                        Err(Error::InsufficientStock { .. }) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                }
                placed
            })
        })
        .collect();
    let mut placed = 0;
    for client in clients {
        placed += within(Duration::from_secs(120), client).await.unwrap();
    }
    placed
}

/// A database of its own with `PRODUCTS` products of `stock` units each, and a batching
/// instance with `settings` on it.
async fn catalogue(settings: BatchSettings, stock: i64) -> (TestDb, Commerce) {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 10).await;
    let commerce = Commerce::builder(db.pool().clone())
        .strategy(Batching::with_settings(settings))
        .build();
    for id in 1..=PRODUCTS {
        product(&commerce, id, stock).await;
    }
    (db, commerce)
}

async fn transactions(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT created_at) FROM commerce.orders")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_of_many_products_share_transactions() {
    let (db, commerce) = catalogue(BatchSettings::default(), 1_000).await;
    let placed = broad_sale(&commerce, ShortagePolicy::Reject).await;
    assert_eq!(placed, CLIENTS * ORDERS_EACH);
    let transactions = transactions(&db).await;
    assert!(
        transactions * 4 < i64::try_from(placed).unwrap(),
        "{placed} orders of {PRODUCTS} products in {transactions} transactions: not grouped"
    );
    assert_consistent(&commerce).await;
}

/// The same sale with group commit off writes about a transaction per order: the gain above
/// is the groups', not the one-product batches'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_group_commit_each_product_writes_alone() {
    let settings = BatchSettings {
        group_commit: false,
        ..BatchSettings::default()
    };
    let (db, commerce) = catalogue(settings, 1_000).await;
    let placed = broad_sale(&commerce, ShortagePolicy::Reject).await;
    let transactions = transactions(&db).await;
    assert!(
        transactions * 2 > i64::try_from(placed).unwrap(),
        "{placed} orders in {transactions} transactions"
    );
    assert_consistent(&commerce).await;
}

/// Products selling out and backordering inside groups: every product's stock and queue
/// agree with its ledger, nothing is oversold, and backorders are served by a receipt in
/// arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_sell_out_and_backorder_exactly() {
    let (_db, commerce) = catalogue(BatchSettings::default(), 3).await;
    let placed = broad_sale(&commerce, ShortagePolicy::Backorder).await;
    assert_eq!(
        placed,
        CLIENTS * ORDERS_EACH,
        "backorders are never refused"
    );
    let stock = commerce
        .stock_of(&(1..=PRODUCTS).map(ProductId).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(stock.iter().all(|level| level.available == 0));
    let backordered: i64 = stock.iter().map(|level| level.backordered).sum();
    assert_eq!(
        backordered,
        i64::try_from(placed).unwrap() - 3 * PRODUCTS,
        "units sold beyond the stock must all be backordered"
    );
    for id in 1..=PRODUCTS {
        commerce
            .receive_stock(ProductId(id), 1_000, Some("restock"))
            .await
            .unwrap();
    }
    assert_consistent(&commerce).await;
}

/// Reject-policy orders of products selling out inside groups: each product sells exactly
/// its stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_sell_each_product_out_exactly() {
    let (_db, commerce) = catalogue(BatchSettings::default(), 2).await;
    let placed = broad_sale(&commerce, ShortagePolicy::Reject).await;
    assert_eq!(placed, 2 * usize::try_from(PRODUCTS).unwrap());
    let levels = commerce
        .stock_of(&(1..=PRODUCTS).map(ProductId).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(levels.iter().all(|level| level.available == 0));
    assert_consistent(&commerce).await;
}

/// A group that turns an order away rests that refusal on figures it checks at its commit:
/// stock that came back through another instance is sold, not refused on the figure an
/// earlier batch left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_inside_a_group_rests_on_current_figures() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 10).await;
    let commerce = Commerce::builder(db.pool().clone())
        .strategy(Batching::with_settings(BatchSettings {
            sold_out_fast_path: false,
            ..BatchSettings::default()
        }))
        .build();
    let other = Commerce::builder(db.pool().clone()).build();
    let scarce = product(&commerce, 1, 1).await;
    let plenty: Vec<ProductId> = other_products(&commerce).await;
    for round in 0..20 {
        // The batching instance sells the last unit, and so knows the product at 0.
        commerce
            .place_order(NewOrder::new(format!("first-{round}")).line(scarce, 1))
            .await
            .unwrap();
        other
            .receive_stock(scarce, 1, Some("found one"))
            .await
            .unwrap();
        // The scarce order goes with orders of other products at once: in a group or not,
        // it must be placed.
        let mut tasks = Vec::new();
        for (n, id) in plenty.iter().enumerate() {
            let commerce = commerce.clone();
            let id = *id;
            tasks.push(tokio::spawn(async move {
                commerce
                    .place_order(NewOrder::new(format!("p-{round}-{n}")).line(id, 1))
                    .await
            }));
        }
        let scarce_order = commerce
            .place_order(NewOrder::new(format!("second-{round}")).line(scarce, 1))
            .await;
        assert!(scarce_order.is_ok(), "round {round}: {scarce_order:?}");
        for task in tasks {
            within(Duration::from_secs(30), task)
                .await
                .unwrap()
                .unwrap();
        }
        other
            .receive_stock(scarce, 1, Some("another"))
            .await
            .unwrap();
    }
    assert_consistent(&commerce).await;
}

async fn other_products(commerce: &Commerce) -> Vec<ProductId> {
    let mut ids = Vec::new();
    for id in 2..=9 {
        ids.push(product(commerce, id, 10_000).await);
    }
    ids
}
