//! Review M5: one customer cannot hold a product's stock. Per-user limits on units waiting
//! for stock and on open orders refuse the greedy order (409 `user_limit_exceeded`), and a
//! backorder that waits too long is cancelled with its stock returned.

mod common;

use std::time::Duration;

use commerce_client::{ApiClient, OrderStatus, PlaceOrder, Placed, Shortage, StatusCode};
use common::{expect_api_error, TestApp, Transport};

async fn backorder(
    customer: &ApiClient,
    product: i64,
    quantity: i64,
) -> commerce_client::Result<Placed> {
    customer
        .place_order(&PlaceOrder::one(product, quantity).on_shortage(Shortage::Backorder))
        .await
}

async fn available(app: &TestApp, product: i64) -> i64 {
    app.admin.stock(product).await.expect("stock").available
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_customer_cannot_hold_a_products_stock() {
    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.orders.max_open_orders_per_user = Some(3);
        config.orders.backorder_timeout = Duration::from_secs(2);
        // The holding limits, not the placement rate, are under test: she sends 25 orders.
        config.orders.rate_per_minute = None;
    })
    .await;
    let product = app.product("HOARD-1", 700, 500).await;
    let mallory = app.customer("mallory");

    // Twenty backorders of 10,000 units: each would leave 9,500 waiting, beyond the 1,000
    // units one customer may have waiting. None takes anything.
    for _ in 0..20 {
        let refused = expect_api_error(
            backorder(&mallory, product, 10_000).await,
            StatusCode::CONFLICT,
            "user_limit_exceeded",
        );
        assert_eq!(refused.details["limit"], "backordered_units");
    }
    assert_eq!(available(&app, product).await, 500);

    // Within the limit she may backorder (500 taken, 100 waiting), but not add 1,000 more.
    let held = backorder(&mallory, product, 600)
        .await
        .expect("backordered");
    assert_eq!(held.status, StatusCode::ACCEPTED, "{held:?}");
    let held_id = held.order.id;
    expect_api_error(
        backorder(&mallory, product, 1_000).await,
        StatusCode::CONFLICT,
        "user_limit_exceeded",
    );
    assert_eq!(available(&app, product).await, 0);

    // Open orders: two more small backorders fit (three open), the fourth does not.
    for _ in 0..2 {
        let small = backorder(&mallory, product, 1).await.expect("backordered");
        assert_eq!(small.status, StatusCode::ACCEPTED, "{small:?}");
    }
    let fourth = expect_api_error(
        backorder(&mallory, product, 1).await,
        StatusCode::CONFLICT,
        "user_limit_exceeded",
    );
    assert_eq!(fourth.details["limit"], "open_orders");

    // Unpaid and unserved, the big backorder expires: its 500 units go back, first to the
    // oldest backorders still waiting (her two small ones, now CREATED and paid), then on the
    // shelf.
    app.wait_for_status(held_id, OrderStatus::Cancelled, Duration::from_secs(20))
        .await;
    let order = app.admin.order(held_id).await.expect("the order");
    let reason = order.history.last().unwrap().reason.clone();
    assert!(reason.contains("backorder expired"), "{reason}");
    let back = commerce_testkit::eventually(Duration::from_secs(20), || async {
        available(&app, product).await == 498
    })
    .await;
    assert!(back, "the expired backorders' stock did not come back");

    // Another customer buys it.
    let carol = app.customer("carol");
    let bought = app.order(&carol, product, 10).await.expect("bought");
    assert_eq!(bought.status, StatusCode::CREATED, "{bought:?}");
    app.assert_audit_clean().await;
    app.stop().await;
}
