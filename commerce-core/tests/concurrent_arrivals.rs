//! Stock arriving for one order on two products at once (receipts, a cancellation returning
//! stock, an adjustment) must complete the order exactly once: review finding C1, where each
//! transaction's "nothing left in the queue?" check still saw the other's row and neither
//! promoted the order, leaving it BACKORDERED forever.

mod common;

use commerce_core::{Commerce, NewOrder, Order, OrderStatus, ProductId, ShortagePolicy, MIGRATOR};
use commerce_testkit::TestDb;
use common::gate::Gate;
use common::{assert_consistent, product};

async fn setup_with_gate(gate: &Gate) -> (TestDb, Commerce) {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 20).await;
    let commerce = Commerce::builder(db.pool().clone())
        .hook(gate.clone())
        .build();
    (db, commerce)
}

/// A BACKORDERED order for one unit of each product.
async fn waiting_order(commerce: &Commerce, user: &str, products: &[i64]) -> Order {
    let mut request = NewOrder::new(user).policy(ShortagePolicy::Backorder);
    for product in products {
        request = request.line(*product, 1);
    }
    let order = commerce.place_order(request).await.unwrap().order;
    assert_eq!(order.status, OrderStatus::Backordered);
    order
}

async fn assert_created(commerce: &Commerce, order: &Order) {
    let order = commerce.order(order.id).await.unwrap();
    assert!(order.lines.iter().all(|l| l.allocated == l.quantity));
    assert_eq!(
        order.status,
        OrderStatus::Created,
        "order {} is fully allocated but still {}",
        order.id,
        order.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_receipts_held_before_commit_complete_the_order() {
    let gate = Gate::on_backorder_allocation(2);
    let (_db, commerce) = setup_with_gate(&gate).await;
    product(&commerce, 1, 0).await;
    product(&commerce, 2, 0).await;
    let order = waiting_order(&commerce, "u", &[1, 2]).await;

    gate.arm();
    let (a, b) = tokio::join!(
        commerce.receive_stock(ProductId(1), 1, None),
        commerce.receive_stock(ProductId(2), 1, None)
    );
    a.unwrap();
    b.unwrap();
    gate.disarm();
    assert_created(&commerce, &order).await;
    assert_consistent(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_returning_stock_and_a_receipt_held_before_commit_complete_the_order() {
    let gate = Gate::on_backorder_allocation(2);
    let (_db, commerce) = setup_with_gate(&gate).await;
    product(&commerce, 1, 1).await;
    product(&commerce, 2, 0).await;
    // `holder` has P1's only unit; `waiting` wants P1 and P2.
    let holder = commerce
        .place_order(NewOrder::new("h").line(1, 1))
        .await
        .unwrap()
        .order;
    let order = waiting_order(&commerce, "u", &[1, 2]).await;

    gate.arm();
    let (a, b) = tokio::join!(
        commerce.cancel_order(holder.id, "changed my mind"),
        commerce.receive_stock(ProductId(2), 1, None)
    );
    a.unwrap();
    b.unwrap();
    gate.disarm();
    assert_created(&commerce, &order).await;
    assert_consistent(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_adjustment_and_a_receipt_held_before_commit_complete_the_order() {
    let gate = Gate::on_backorder_allocation(2);
    let (_db, commerce) = setup_with_gate(&gate).await;
    product(&commerce, 1, 0).await;
    product(&commerce, 2, 0).await;
    let order = waiting_order(&commerce, "u", &[1, 2]).await;

    gate.arm();
    let (a, b) = tokio::join!(
        commerce.adjust_stock(ProductId(1), 1, "found one"),
        commerce.receive_stock(ProductId(2), 1, None)
    );
    a.unwrap();
    b.unwrap();
    gate.disarm();
    assert_created(&commerce, &order).await;
    assert_consistent(&commerce).await;
}

/// Without any hook holding them: 200 orders waiting on two products, both products'
/// stock arriving at the same moment, several rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_orders_completed_by_simultaneous_receipts() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 20).await;
    let commerce = Commerce::builder(db.pool().clone()).build();
    for round in 0..3_i64 {
        let (p1, p2) = (10 * round + 1, 10 * round + 2);
        product(&commerce, p1, 0).await;
        product(&commerce, p2, 0).await;
        let mut orders = Vec::new();
        for n in 0..200 {
            orders.push(waiting_order(&commerce, &format!("u{n}"), &[p1, p2]).await);
        }
        let (a, b) = tokio::join!(
            commerce.receive_stock(ProductId(p1), 200, None),
            commerce.receive_stock(ProductId(p2), 200, None)
        );
        a.unwrap();
        b.unwrap();
        let mut stuck = 0;
        for order in &orders {
            if commerce.order(order.id).await.unwrap().status != OrderStatus::Created {
                stuck += 1;
            }
        }
        assert_eq!(
            stuck, 0,
            "round {round}: {stuck} of 200 orders stuck BACKORDERED"
        );
        assert_consistent(&commerce).await;
    }
}
