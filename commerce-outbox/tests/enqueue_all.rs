//! `enqueue_all` writes a batch in one statement: consecutive numbers per aggregate in the
//! order given, continuing each aggregate's sequence, and no deadlock between batches that
//! name the same aggregates in opposite orders.

use commerce_outbox::{enqueue, enqueue_all, NewEvent, MIGRATOR};
use commerce_testkit::TestDb;
use serde_json::json;

fn event(aggregate: &str, n: i64) -> NewEvent {
    NewEvent::new("t", "thing.happened", "thing", aggregate, json!({ "n": n }))
}

#[tokio::test]
async fn numbers_continue_each_aggregate_in_the_order_given() {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let mut tx = db.pool().begin().await.unwrap();
    enqueue(&mut tx, &event("b", 0)).await.unwrap();
    tx.commit().await.unwrap();

    let batch = [
        event("c", 1),
        event("b", 2),
        event("c", 3),
        event("a", 4),
        event("b", 5),
    ];
    let mut tx = db.pool().begin().await.unwrap();
    let ids = enqueue_all(&mut tx, &batch).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids, batch.iter().map(|e| e.id).collect::<Vec<_>>());

    let rows: Vec<(String, i64, serde_json::Value)> = sqlx::query_as(
        "SELECT aggregate_id, aggregate_seq, payload FROM commerce_outbox.event \
         ORDER BY aggregate_id, aggregate_seq",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let got: Vec<(&str, i64, i64)> = rows
        .iter()
        .map(|(a, seq, p)| (a.as_str(), *seq, p["n"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("a", 1, 4),
            ("b", 1, 0),
            ("b", 2, 2),
            ("b", 3, 5),
            ("c", 1, 1),
            ("c", 2, 3)
        ]
    );
    let last: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, last_seq FROM commerce_outbox.aggregate_sequence ORDER BY 1",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(last, [("a".into(), 1), ("b".into(), 3), ("c".into(), 2)]);
}

#[tokio::test]
async fn an_invalid_event_writes_nothing_and_an_empty_batch_is_fine() {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let mut tx = db.pool().begin().await.unwrap();
    assert!(enqueue_all(&mut tx, &[]).await.unwrap().is_empty());
    let bad = NewEvent::new("", "thing.happened", "thing", "x", json!({}));
    let err = enqueue_all(&mut tx, &[event("x", 1), bad])
        .await
        .unwrap_err();
    assert!(
        matches!(err, commerce_outbox::Error::InvalidEvent(_)),
        "{err:?}"
    );
    tx.commit().await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM commerce_outbox.event")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_naming_the_same_aggregates_in_opposite_orders_never_deadlock() {
    let db = TestDb::with_pool_size(&[&MIGRATOR], 8).await;
    let names: Vec<String> = (0..20).map(|i| format!("agg-{i:02}")).collect();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let pool = db.pool().clone();
        let mut order = names.clone();
        if worker % 2 == 1 {
            order.reverse();
        }
        tasks.push(tokio::spawn(async move {
            for round in 0..25 {
                let batch: Vec<NewEvent> = order.iter().map(|a| event(a, round)).collect();
                let mut tx = pool.begin().await.unwrap();
                enqueue_all(&mut tx, &batch).await.unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for task in tasks {
        commerce_testkit::within(std::time::Duration::from_secs(60), task)
            .await
            .unwrap();
    }
    // Every aggregate numbered 1..=200 without gaps.
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT aggregate_id, max(aggregate_seq) m, count(*) c, \
         count(DISTINCT aggregate_seq) d FROM commerce_outbox.event GROUP BY 1) s \
         WHERE m <> 200 OR c <> 200 OR d <> 200",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(bad, 0);
}
