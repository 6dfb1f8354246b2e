//! What the order service forgets on its own: idempotency keys past their retention.

mod common;

use std::time::Duration;

use commerce_client::{PlaceOrder, StatusCode};
use common::{TestApp, Transport};

/// Review minor 11: an `Idempotency-Key` answers repeats with the first order for its
/// retention, then it is forgotten and a repeat is a new order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_forgotten_after_its_retention() {
    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.orders.idempotency_key_retention = Duration::from_secs(1);
        // The same customer repeats her request in a loop: the placement rate is not under test.
        config.orders.rate_per_minute = None;
    })
    .await;
    let product = app.product("KEYS-1", 300, 10).await;
    let dana = app.customer("dana");
    let order = PlaceOrder::one(product, 1);
    let place = || async {
        dana.place_order_with_key(&order, "checkout-42")
            .await
            .expect("placed")
    };
    let first = place().await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let repeat = place().await;
    assert_eq!(repeat.order.id, first.order.id);
    assert!(repeat.replayed);

    let forgotten = commerce_testkit::eventually(Duration::from_secs(20), || async {
        let again = place().await;
        again.status == StatusCode::CREATED && again.order.id != first.order.id
    })
    .await;
    assert!(forgotten, "the key still answered with the first order");
    app.stop().await;
}
