//! Racing repeats of one keyed request while the last units go: every repeat must get the
//! first order back, never "out of stock" for an order that exists (review finding M1).

mod common;

use std::sync::Arc;

use commerce_core::{NewOrder, OrderId};
use common::{assert_consistent, product, setup_with_pool};

/// 50 copies of one request (same user, same key) for all 3 units, at once; several rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_repeats_for_the_last_units_all_get_the_first_order() {
    let (_db, commerce) = setup_with_pool(30).await;
    for round in 0..10_i64 {
        let item = product(&commerce, round + 1, 3).await;
        let request = NewOrder::new("erin")
            .line(item.0, 3)
            .idempotency_key(format!("k-{round}"));
        let start = Arc::new(tokio::sync::Barrier::new(50));
        let racers: Vec<_> = (0..50)
            .map(|_| {
                let (commerce, request, start) = (commerce.clone(), request.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    commerce.place_order(request).await
                })
            })
            .collect();
        let mut ids: Vec<OrderId> = Vec::new();
        for racer in racers {
            match racer.await.unwrap() {
                Ok(placed) => ids.push(placed.order.id),
                Err(e) => panic!("round {round}: a repeat of a placed request failed: {e}"),
            }
        }
        ids.dedup();
        assert_eq!(
            ids.len(),
            1,
            "round {round}: more than one order for one key"
        );
        assert_eq!(commerce.stock(item).await.unwrap().available, 0);
    }
    assert_consistent(&commerce).await;
}
