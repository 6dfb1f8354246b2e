//! Forgetting idempotency keys after a retention, so the keys of old orders do not pile up.

mod common;

use std::time::Duration;

use commerce_core::{Commerce, NewOrder, OrderId};
use common::{assert_consistent, product, setup};

const HOUR: Duration = Duration::from_secs(3600);

async fn keyed(commerce: &Commerce, user: &str, key: &str) -> OrderId {
    commerce
        .place_order(NewOrder::new(user).line(1, 1).idempotency_key(key))
        .await
        .unwrap()
        .order
        .id
}

async fn age(commerce: &Commerce, order: OrderId, hours: i32) {
    sqlx::query(
        "UPDATE commerce.orders SET created_at = now() - make_interval(hours => $2) WHERE id = $1",
    )
    .bind(order.0)
    .bind(hours)
    .execute(commerce.pool())
    .await
    .unwrap();
}

async fn keys_kept(commerce: &Commerce) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM commerce.orders WHERE idempotency_key IS NOT NULL")
        .fetch_one(commerce.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn keys_older_than_the_retention_are_forgotten_oldest_first_in_bounded_rounds() {
    let (_db, commerce) = setup().await;
    product(&commerce, 1, 100).await;
    let oldest = keyed(&commerce, "a", "k1").await;
    let older = keyed(&commerce, "b", "k1").await;
    let old = keyed(&commerce, "a", "k2").await;
    let recent = keyed(&commerce, "a", "k3").await;
    let unkeyed = commerce
        .place_order(NewOrder::new("a").line(1, 1))
        .await
        .unwrap()
        .order
        .id;
    for (order, hours) in [(oldest, 30), (older, 26), (old, 25), (unkeyed, 40)] {
        age(&commerce, order, hours).await;
    }

    // A day's retention, two at a time: the two oldest, then the last old one, then none.
    let retention = 24 * HOUR;
    let rounds = [
        commerce
            .forget_idempotency_keys(retention, 2)
            .await
            .unwrap(),
        commerce
            .forget_idempotency_keys(retention, 2)
            .await
            .unwrap(),
        commerce
            .forget_idempotency_keys(retention, 2)
            .await
            .unwrap(),
    ];
    assert_eq!(rounds, [2, 1, 0]);
    assert_eq!(keys_kept(&commerce).await, 1);
    for order in [oldest, older, old] {
        assert_eq!(commerce.order(order).await.unwrap().idempotency_key, None);
    }
    assert_eq!(
        commerce
            .order(recent)
            .await
            .unwrap()
            .idempotency_key
            .as_deref(),
        Some("k3")
    );

    // A repeat of a forgotten request places a new order; a kept key still replays.
    let again = commerce
        .place_order(NewOrder::new("a").line(1, 1).idempotency_key("k1"))
        .await
        .unwrap();
    assert!(!again.replayed);
    assert_ne!(again.order.id, oldest);
    let repeat = commerce
        .place_order(NewOrder::new("a").line(1, 1).idempotency_key("k3"))
        .await
        .unwrap();
    assert!(repeat.replayed);
    assert_eq!(repeat.order.id, recent);

    // The forgotten orders themselves are untouched.
    let kept = commerce.order(oldest).await.unwrap();
    assert_eq!(kept.lines.len(), 1);
    assert_eq!(
        commerce
            .stock(commerce_core::ProductId(1))
            .await
            .unwrap()
            .available,
        94
    );
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn nothing_is_forgotten_within_the_retention() {
    let (_db, commerce) = setup().await;
    product(&commerce, 1, 10).await;
    keyed(&commerce, "a", "k").await;
    assert_eq!(
        commerce.forget_idempotency_keys(HOUR, 1_000).await.unwrap(),
        0
    );
    assert_eq!(keys_kept(&commerce).await, 1);
}
