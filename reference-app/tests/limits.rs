//! Review M5: one customer cannot hold a product's stock. Per-user limits on units waiting
//! for stock and on open orders refuse the greedy order (409 `user_limit_exceeded`), and a
//! backorder that waits too long is cancelled with its stock returned.

mod common;

use std::time::Duration;

use common::{TestApp, Transport};
use reqwest::StatusCode;
use serde_json::json;

async fn backorder(app: &TestApp, token: &str, product: i64, quantity: i64) -> common::Answer {
    app.post(
        "/api/v1/orders",
        token,
        json!({"items": [{"product_id": product, "quantity": quantity}], "on_shortage": "backorder"}),
    )
    .await
}

async fn available(app: &TestApp, product: i64) -> i64 {
    let stock = app
        .get(&format!("/api/v1/products/{product}/stock"), &app.admin)
        .await;
    stock.body["available"].as_i64().expect("available")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_customer_cannot_hold_a_products_stock() {
    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.orders.max_open_orders_per_user = Some(3);
        config.orders.backorder_timeout = Duration::from_secs(2);
    })
    .await;
    let product = app.product("HOARD-1", 700, 500).await;
    let mallory = app.customer("mallory");

    // Twenty backorders of 10,000 units: each would leave 9,500 waiting, beyond the 1,000
    // units one customer may have waiting. None takes anything.
    for _ in 0..20 {
        let refused = backorder(&app, &mallory, product, 10_000).await;
        refused.assert_error(StatusCode::CONFLICT, "user_limit_exceeded");
        assert_eq!(
            refused.body["error"]["details"]["limit"],
            "backordered_units"
        );
    }
    assert_eq!(available(&app, product).await, 500);

    // Within the limit she may backorder (500 taken, 100 waiting), but not add 1,000 more.
    let held = backorder(&app, &mallory, product, 600).await;
    assert_eq!(held.status, StatusCode::ACCEPTED, "{held:?}");
    let held_id = held.body["id"].as_str().unwrap().to_owned();
    backorder(&app, &mallory, product, 1_000)
        .await
        .assert_error(StatusCode::CONFLICT, "user_limit_exceeded");
    assert_eq!(available(&app, product).await, 0);

    // Open orders: two more small backorders fit (three open), the fourth does not.
    for _ in 0..2 {
        let small = backorder(&app, &mallory, product, 1).await;
        assert_eq!(small.status, StatusCode::ACCEPTED, "{small:?}");
    }
    let fourth = backorder(&app, &mallory, product, 1).await;
    fourth.assert_error(StatusCode::CONFLICT, "user_limit_exceeded");
    assert_eq!(fourth.body["error"]["details"]["limit"], "open_orders");

    // Unpaid and unserved, the big backorder expires: its 500 units go back, first to the
    // oldest backorders still waiting (her two small ones, now CREATED and paid), then on the
    // shelf.
    app.wait_for_status(&held_id, "CANCELLED", Duration::from_secs(20))
        .await;
    let history = app
        .get(&format!("/api/v1/orders/{held_id}"), &app.admin)
        .await;
    let reason = history.body["history"].as_array().unwrap().last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("backorder expired"), "{reason}");
    let back = commerce_testkit::eventually(Duration::from_secs(20), || async {
        available(&app, product).await == 498
    })
    .await;
    assert!(back, "the expired backorders' stock did not come back");

    // Another customer buys it.
    let carol = app.customer("carol");
    let bought = app.order(&carol, product, 10).await;
    assert_eq!(bought.status, StatusCode::CREATED, "{bought:?}");
    app.assert_audit_clean().await;
    app.stop().await;
}
