//! The flash sale through HTTP: 2,000 customers order the same product at the same instant;
//! the stock (500) goes to exactly 500 of them, the others get `insufficient_stock`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use commerce_client::{PlaceOrder, StatusCode};
use common::{TestApp, Transport};
use tokio::sync::Barrier;

const CUSTOMERS: usize = 2_000;
const STOCK: i64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_orders_for_five_hundred_units() {
    let app = TestApp::start_with(Transport::InProcess, patient).await;
    crowd(&app, CUSTOMERS, STOCK).await;
    app.stop().await;
}

/// The same crowd (smaller) under the distributed-lock strategy, on its in-process lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_strategy_sells_exactly_the_stock_too() {
    let app = TestApp::start_with(Transport::InProcess, |config| {
        patient(config);
        config.stock.strategy = reference_app::config::StockStrategyKind::LocalLock;
    })
    .await;
    crowd(&app, 400, 100).await;
    app.stop().await;
}

/// These tests are about who gets the stock, not latency: on a busy 2-core machine running
/// a debug build the crowd may take longer than the default request timeout (10 s), and a
/// timed-out request's order may still complete, so the timeout is set out of reach.
fn patient(config: &mut reference_app::Config) {
    config.http.request_timeout = Duration::from_secs(240);
}

/// The full crowd under the batching strategy (group commit per product).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batching_strategy_sells_exactly_the_stock_too() {
    let app = TestApp::start_with(Transport::InProcess, |config| {
        patient(config);
        config.stock.strategy = reference_app::config::StockStrategyKind::Batching;
    })
    .await;
    crowd(&app, CUSTOMERS, STOCK).await;
    app.stop().await;
}

/// `customers` order one unit each at the same instant; exactly `stock` get one.
async fn crowd(app: &TestApp, customers: usize, stock: i64) {
    let product = app.product("FLASH-1", 1_000, stock).await;
    let start = Arc::new(Barrier::new(customers));
    let orders: Vec<_> = (0..customers)
        .map(|n| {
            let customer = app.customer(&format!("crowd-{n}"));
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                // Unkeyed, so sent once: the test counts answers, not the client's patience.
                customer
                    .place_order_without_key(&PlaceOrder::one(product, 1))
                    .await
            })
        })
        .collect();
    let (mut created, mut sold_out, mut other) = (0, 0, Vec::new());
    for order in orders {
        let answer = commerce_testkit::within(Duration::from_secs(300), order)
            .await
            .unwrap();
        match answer {
            Ok(placed) if placed.status == StatusCode::CREATED => created += 1,
            Err(e) if e.code() == Some("insufficient_stock") => sold_out += 1,
            other_answer => other.push(other_answer),
        }
    }
    assert!(
        other.is_empty(),
        "unexpected answers: {:?}",
        &other[..other.len().min(5)]
    );
    assert_eq!(created, usize::try_from(stock).unwrap());
    assert_eq!(sold_out, customers - created);
    assert_eq!(app.admin.stock(product).await.unwrap().available, 0);
    app.assert_audit_clean().await;
}
