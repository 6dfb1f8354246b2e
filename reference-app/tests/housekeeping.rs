//! What the order service forgets on its own: idempotency keys past their retention.

mod common;

use std::time::Duration;

use common::{TestApp, Transport};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// Review minor 11: an `Idempotency-Key` answers repeats with the first order for its
/// retention, then it is forgotten and a repeat is a new order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_forgotten_after_its_retention() {
    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.orders.idempotency_key_retention = Duration::from_secs(1);
    })
    .await;
    let product = app.product("KEYS-1", 300, 10).await;
    let dana = app.customer("dana");
    let place = || async {
        app.request(
            Method::POST,
            "/api/v1/orders",
            &dana,
            Some(json!({"items": [{"product_id": product, "quantity": 1}]})),
            &[("Idempotency-Key", "checkout-42")],
        )
        .await
    };
    let first = place().await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let repeat = place().await;
    assert_eq!(repeat.body["id"], first.body["id"]);
    assert_eq!(repeat.headers["idempotent-replayed"], "true");

    let forgotten = commerce_testkit::eventually(Duration::from_secs(20), || async {
        let again = place().await;
        again.status == StatusCode::CREATED && again.body["id"] != first.body["id"]
    })
    .await;
    assert!(forgotten, "the key still answered with the first order");
    app.stop().await;
}
