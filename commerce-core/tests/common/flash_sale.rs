//! The flash-sale concurrency scenarios, shared by every stock strategy's tests: 10,000 order
//! attempts released together behind one barrier.
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use commerce_core::{Commerce, Error, LedgerKind, NewOrder, OrderId, ProductId};
use tokio::sync::Barrier;

use super::{assert_consistent, product};

pub const ATTEMPTS: usize = 10_000;

/// Releases every order at once behind one barrier; returns the outcome of each.
async fn release_together(
    commerce: &Commerce,
    orders: Vec<NewOrder>,
) -> Vec<commerce_core::Result<commerce_core::PlacedOrder>> {
    let barrier = Arc::new(Barrier::new(orders.len()));
    let tasks: Vec<_> = orders
        .into_iter()
        .map(|order| {
            let (commerce, barrier) = (commerce.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                commerce.place_order(order).await
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.expect("order task panicked"));
    }
    outcomes
}

/// Sums the `order` ledger rows per order id.
async fn ledger_taken_per_order(commerce: &Commerce) -> HashMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reference, SUM(-delta)::bigint FROM commerce.stock_ledger \
         WHERE kind = 'order' GROUP BY reference",
    )
    .fetch_all(commerce.pool())
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// 10,000 single-unit orders on one product with stock 100: exactly 100 succeed.
pub async fn ten_thousand_attempts_on_one_product(commerce: &Commerce) {
    let commerce = commerce.clone();
    let hot = product(&commerce, 1, 100).await;
    let orders = (0..ATTEMPTS)
        .map(|i| {
            NewOrder::new(format!("user-{i}"))
                .line(1, 1)
                .idempotency_key(format!("k-{i}"))
        })
        .collect();
    let outcomes = release_together(&commerce, orders).await;

    let mut placed = HashSet::new();
    let mut insufficient = 0;
    for outcome in outcomes {
        match outcome {
            Ok(p) => assert!(placed.insert(p.order.id), "duplicate order {}", p.order.id),
            Err(Error::InsufficientStock {
                product,
                requested: 1,
                available: 0,
            }) => {
                assert_eq!(product, hot);
                insufficient += 1;
            }
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(placed.len(), 100);
    assert_eq!(insufficient, ATTEMPTS - 100);
    let stock = commerce.stock(hot).await.unwrap();
    assert_eq!((stock.available, stock.backordered), (0, 0));

    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM commerce.orders")
        .fetch_one(commerce.pool())
        .await
        .unwrap();
    assert_eq!(orders, 100, "no duplicate or stray orders");
    let taken = ledger_taken_per_order(&commerce).await;
    assert_eq!(taken.len(), 100);
    assert!(placed
        .iter()
        .all(|id| taken.get(&id.to_string()) == Some(&1)));
    let ledger = commerce.ledger(hot, None, 1000).await.unwrap().entries;
    assert_eq!(
        ledger
            .iter()
            .filter(|e| e.kind == LedgerKind::Order)
            .count(),
        100
    );
    let mut afters: Vec<i64> = ledger
        .iter()
        .filter(|e| e.kind == LedgerKind::Order)
        .map(|e| e.available_after)
        .collect();
    afters.sort_unstable();
    assert_eq!(
        afters,
        (0..100).collect::<Vec<_>>(),
        "each unit sold exactly once"
    );
    assert_consistent(&commerce).await;
}

/// 10,000 multi-line orders with mixed line sets over 10 products with stock 100 each.
pub async fn ten_thousand_multi_line_attempts(commerce: &Commerce) {
    let commerce = commerce.clone();
    const STOCK: i64 = 100;
    for id in 1..=10 {
        product(&commerce, id, STOCK).await;
    }
    // Mixed line sets, listed in varying order: 1 to 4 distinct products, 1 or 2 units each.
    let orders: Vec<NewOrder> = (0..ATTEMPTS)
        .map(|i| {
            let lines = 1 + i % 4;
            let start = (i * 7) % 10;
            (0..lines).fold(NewOrder::new(format!("user-{i}")), |order, l| {
                let product = 1 + ((start + l * 3) % 10) as i64;
                order.line(product, 1 + ((i + l) % 2) as i64)
            })
        })
        .collect();
    let requested: Vec<Vec<(ProductId, i64)>> = orders
        .iter()
        .map(|o| o.lines.iter().map(|l| (l.product, l.quantity)).collect())
        .collect();
    let outcomes = release_together(&commerce, orders).await;

    let mut sold: HashMap<ProductId, i64> = HashMap::new();
    let mut placed: HashSet<OrderId> = HashSet::new();
    for (outcome, lines) in outcomes.into_iter().zip(&requested) {
        match outcome {
            Ok(p) => {
                assert!(placed.insert(p.order.id));
                for (product, quantity) in lines {
                    *sold.entry(*product).or_default() += quantity;
                }
            }
            Err(Error::InsufficientStock {
                product,
                requested,
                available,
            }) => {
                assert!(lines.contains(&(product, requested)));
                assert!(available < requested);
            }
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert!(!placed.is_empty());
    for id in 1..=10 {
        let stock = commerce.stock(ProductId(id)).await.unwrap();
        let sold = sold.get(&ProductId(id)).copied().unwrap_or(0);
        assert_eq!(stock.available, STOCK - sold, "product {id}");
    }
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM commerce.orders")
        .fetch_one(commerce.pool())
        .await
        .unwrap();
    assert_eq!(orders as usize, placed.len());
    assert_consistent(&commerce).await;
}
