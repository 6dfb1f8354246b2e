//! commerce-core's events reach the outbox in the order transaction, and only if it commits.

mod common;

use commerce_core::{Commerce, NewOrder, OrderStatus, OutboxHook, ProductId, ShortagePolicy};
use commerce_testkit::TestDb;
use serde_json::Value;

async fn setup() -> (TestDb, Commerce) {
    let db = TestDb::new(&[&commerce_core::MIGRATOR, &commerce_outbox::MIGRATOR]).await;
    let commerce = Commerce::builder(db.pool().clone())
        .hook(OutboxHook::with_topics("orders", "stock"))
        .build();
    (db, commerce)
}

/// (topic, event type, aggregate id, payload) of every outbox row, in insertion order.
async fn outbox(commerce: &Commerce) -> Vec<(String, String, String, Value)> {
    sqlx::query_as(
        "SELECT topic, event_type, aggregate_id, payload FROM commerce_outbox.event ORDER BY id",
    )
    .fetch_all(commerce.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn every_write_leaves_its_events_in_the_outbox() {
    let (_db, commerce) = setup().await;
    common::product(&commerce, 1, 1).await;
    let first = commerce
        .place_order(NewOrder::new("a").line(1, 1))
        .await
        .unwrap()
        .order;
    let waiting = commerce
        .place_order(
            NewOrder::new("b")
                .line(1, 2)
                .policy(ShortagePolicy::Backorder),
        )
        .await
        .unwrap()
        .order;
    commerce
        .receive_stock(ProductId(1), 5, Some("PO-1"))
        .await
        .unwrap();
    commerce
        .transition_order(first.id, OrderStatus::Processing, "paid")
        .await
        .unwrap();

    let rows = outbox(&commerce).await;
    let seen: Vec<(&str, &str, String)> = rows
        .iter()
        .map(|(topic, kind, id, _)| (topic.as_str(), kind.as_str(), id.clone()))
        .collect();
    let (a, b) = (first.id.to_string(), waiting.id.to_string());
    assert_eq!(
        seen,
        [
            ("stock", "stock.received", "1".to_owned()),
            ("orders", "order.placed", a.clone()),
            ("orders", "order.placed", b.clone()),
            ("stock", "stock.received", "1".to_owned()),
            ("orders", "order.backorder_allocated", b.clone()),
            ("orders", "order.status_changed", b),
            ("orders", "order.status_changed", a),
        ]
    );
    let placed = &rows[1].3;
    assert_eq!(placed["type"], "order_placed");
    assert_eq!(placed["lines"][0]["quantity"], 1);
    common::assert_consistent(&commerce).await;
}

#[tokio::test]
async fn a_rejected_order_leaves_no_event() {
    let (_db, commerce) = setup().await;
    common::product(&commerce, 1, 1).await;
    let before = outbox(&commerce).await.len();
    commerce
        .place_order(NewOrder::new("a").line(1, 1).line(2, 1))
        .await
        .unwrap_err();
    commerce
        .place_order(NewOrder::new("a").line(1, 5))
        .await
        .unwrap_err();
    assert_eq!(outbox(&commerce).await.len(), before);
}
