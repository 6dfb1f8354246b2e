//! The relay against real Postgres and the real broker.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commerce_outbox::{enqueue, outbox_stats, Backoff, NewEvent, Relay, MIGRATOR};
use commerce_testkit::{kafka_brokers, TestDb};
use common::{arrival_order, commit_event, eventually, new_topic, Reader};
use serde_json::json;

fn fast_relay(db: &TestDb, name: &str) -> commerce_outbox::RelayBuilder {
    Relay::builder(db.pool().clone(), kafka_brokers())
        .name(name)
        .poll_interval(Duration::from_millis(200))
        .broker_backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(500),
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_events_never_exist_and_committed_ones_arrive_once_in_commit_order() {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let brokers = kafka_brokers();
    let topic = new_topic(&brokers, "outbox-commit").await;
    let relay = fast_relay(&db, "commit-test").build().unwrap().spawn();

    let mut tx = db.pool().begin().await.unwrap();
    let rolled_back = NewEvent::new(&topic, "test.happened", "test", "agg-a", json!({"n": -1}));
    enqueue(&mut tx, &rolled_back).await.unwrap();
    tx.rollback().await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM commerce_outbox.event WHERE id = $1")
        .bind(rolled_back.id.0)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0, "a rolled-back transaction leaves no outbox row");

    let mut committed = Vec::new();
    for n in 0..10 {
        for aggregate in ["agg-a", "agg-b", "agg-c"] {
            committed.push(commit_event(db.pool(), &topic, aggregate, n).await);
        }
    }
    // The same key as the rolled-back event: had it been published, it would come first
    // in this partition, before this sentinel.
    let sentinel = commit_event(db.pool(), &topic, "agg-a", 10).await;
    committed.push(sentinel);

    let mut reader = Reader::new(&brokers, &topic);
    reader.read_ids(&committed, Duration::from_secs(30)).await;

    let ids: Vec<_> = reader.received.iter().map(|m| m.envelope.id).collect();
    assert!(
        !ids.contains(&rolled_back.id),
        "rolled-back event was published"
    );
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an event was published twice");
    assert_eq!(ids.len(), committed.len());
    let order = arrival_order(&reader.received);
    assert_eq!(order["agg-a"], (0..=10).collect::<Vec<_>>());
    assert_eq!(order["agg-b"], (0..10).collect::<Vec<_>>());
    assert_eq!(order["agg-c"], (0..10).collect::<Vec<_>>());
    for message in &reader.received {
        assert_eq!(
            message.key, message.envelope.aggregate_id,
            "key = aggregate id"
        );
        assert_eq!(message.headers["event-id"], message.envelope.id.to_string());
    }

    let metrics = relay.metrics().await.unwrap();
    assert_eq!(metrics.published_total, committed.len() as u64);
    assert_eq!(metrics.outbox.pending, 0);
    relay.shutdown().await.unwrap();
    let published: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM commerce_outbox.event WHERE status = 'published' AND published_at IS NOT NULL",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(published, committed.len() as i64);
}

/// 1,000 aggregates x 20 events, written by concurrent transactions whose per-aggregate
/// order is decided by a business row lock (as an order row would), relayed by two relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_each_event_once_in_commit_order_per_aggregate() {
    const AGGREGATES: usize = 1_000;
    const PER_AGGREGATE: usize = 20;
    const WRITERS: usize = 8;
    let db = TestDb::with_pool_size(&[&MIGRATOR], 16).await;
    let brokers = kafka_brokers();
    let topic = new_topic(&brokers, "outbox-two-relays").await;
    sqlx::query(
        "CREATE TABLE business_state (aggregate text PRIMARY KEY, version bigint NOT NULL)",
    )
    .execute(db.pool())
    .await
    .unwrap();

    let relay_a = fast_relay(&db, "relay-a")
        .batch_size(200)
        .build()
        .unwrap()
        .spawn();
    let relay_b = fast_relay(&db, "relay-b")
        .batch_size(200)
        .build()
        .unwrap()
        .spawn();

    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let pool = db.pool().clone();
        let next = Arc::clone(&next);
        let topic = topic.clone();
        writers.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= AGGREGATES * PER_AGGREGATE {
                    return;
                }
                let aggregate = format!("agg-{}", k % AGGREGATES);
                let mut tx = pool.begin().await.unwrap();
                let version: i64 = sqlx::query_scalar(
                    "INSERT INTO business_state (aggregate, version) VALUES ($1, 1)
                     ON CONFLICT (aggregate) DO UPDATE SET version = business_state.version + 1
                     RETURNING version",
                )
                .bind(&aggregate)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                let event = NewEvent::new(
                    &topic,
                    "test.happened",
                    "test",
                    &aggregate,
                    json!({"n": version}),
                );
                enqueue(&mut tx, &event).await.unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }

    let total = AGGREGATES * PER_AGGREGATE;
    let mut reader = Reader::new(&brokers, &topic);
    reader.read_count(total, Duration::from_secs(60)).await;

    let ids: HashSet<_> = reader.received.iter().map(|m| m.envelope.id).collect();
    assert_eq!(ids.len(), total, "every event once");
    assert_eq!(reader.received.len(), total, "no event twice");
    let order = arrival_order(&reader.received);
    assert_eq!(order.len(), AGGREGATES);
    let expected: Vec<i64> = (1..=PER_AGGREGATE as i64).collect();
    for (aggregate, versions) in &order {
        assert_eq!(versions, &expected, "{aggregate} out of commit order");
    }
    let a = relay_a.metrics().await.unwrap();
    let b = relay_b.metrics().await.unwrap();
    assert_eq!(a.published_total + b.published_total, total as u64);
    println!(
        "relay-a published {}, relay-b published {}",
        a.published_total, b.published_total
    );
    relay_a.shutdown().await.unwrap();
    relay_b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_while_others_flow_and_replay_publishes_it() {
    use commerce_outbox::dead_letter::{inspect_event, list_dead_letters, replay_dead_letter};

    let db = TestDb::new(&[&MIGRATOR]).await;
    let brokers = kafka_brokers();
    let topic = new_topic(&brokers, "outbox-poison").await;
    let strict = fast_relay(&db, "strict")
        .max_attempts(3)
        .retry_backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(200),
        ))
        .producer_config("message.max.bytes", "100000")
        .build()
        .unwrap()
        .spawn();

    // 200 kB: over this producer's 100 kB limit, fine for the broker's default 1 MB.
    let big = "x".repeat(200_000);
    let mut tx = db.pool().begin().await.unwrap();
    let poison = NewEvent::new(
        &topic,
        "test.happened",
        "test",
        "poisoned",
        json!({"n": 0, "blob": big}),
    );
    enqueue(&mut tx, &poison).await.unwrap();
    tx.commit().await.unwrap();
    let held = commit_event(db.pool(), &topic, "poisoned", 1).await;
    let mut healthy = Vec::new();
    for n in 0..5 {
        healthy.push(commit_event(db.pool(), &topic, "healthy-1", n).await);
        healthy.push(commit_event(db.pool(), &topic, "healthy-2", n).await);
    }

    let mut reader = Reader::new(&brokers, &topic);
    reader.read_ids(&healthy, Duration::from_secs(30)).await;

    let pool = db.pool().clone();
    eventually(
        Duration::from_secs(30),
        "the poison event to be dead",
        || {
            let pool = pool.clone();
            async move { inspect_event(&pool, poison.id).await.unwrap().status == "dead" }
        },
    )
    .await;
    let dead = inspect_event(db.pool(), poison.id).await.unwrap();
    assert_eq!(dead.attempts, 3);
    assert!(
        dead.last_error
            .as_deref()
            .unwrap_or("")
            .to_lowercase()
            .contains("too large"),
        "{:?}",
        dead.last_error
    );
    assert_eq!(
        dead.held_behind, 1,
        "the aggregate's next event waits behind it"
    );
    let listed = list_dead_letters(db.pool(), 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![poison.id]
    );
    assert_eq!(
        inspect_event(db.pool(), held).await.unwrap().status,
        "pending"
    );
    assert_eq!(strict.metrics().await.unwrap().dead_lettered_total, 1);

    let mut dlq = Reader::new(&brokers, &commerce_outbox::dlq_topic(&topic));
    dlq.read_count(1, Duration::from_secs(30)).await;
    let letter = &dlq.received[0];
    assert_eq!(letter.headers["event-id"], poison.id.to_string());
    assert!(letter.headers["error"].to_lowercase().contains("too large"));
    assert_eq!(letter.envelope.id, poison.id);
    assert_eq!(letter.value["attempts"], 3);
    assert_eq!(
        letter.value["payload_omitted"], true,
        "too large for the DLQ too"
    );

    // Fix the cause (a producer that allows the size), then replay.
    strict.shutdown().await.unwrap();
    let relaxed = fast_relay(&db, "relaxed").build().unwrap().spawn();
    replay_dead_letter(db.pool(), poison.id).await.unwrap();
    reader
        .read_ids(&[poison.id, held], Duration::from_secs(30))
        .await;
    let order = arrival_order(&reader.received);
    assert_eq!(
        order["poisoned"],
        vec![0, 1],
        "replayed event first, then the held one"
    );
    assert_eq!(outbox_stats(db.pool()).await.unwrap().dead_letters, 0);
    relaxed.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_only_published_rows() {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let brokers = kafka_brokers();
    let topic = new_topic(&brokers, "outbox-retention").await;
    let ids: Vec<_> = futures_ids(&db, &topic, 5).await;
    let relay = fast_relay(&db, "retention").build().unwrap().spawn();
    let pool = db.pool().clone();
    eventually(Duration::from_secs(30), "all published", || {
        let pool = pool.clone();
        async move { outbox_stats(&pool).await.unwrap().pending == 0 }
    })
    .await;
    relay.shutdown().await.unwrap();
    let pending = commit_event(db.pool(), &topic, "late", 0).await;

    let report = commerce_outbox::prune_settled(db.pool(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.events, ids.len() as u64);
    let left: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM commerce_outbox.event")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(left, vec![pending.0], "the pending row survives pruning");
    let counts: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT aggregate_id, last_seq FROM commerce_outbox.aggregate_sequence",
    )
    .fetch_all(db.pool())
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        vec!["late"],
        "quiet aggregates' sequences pruned"
    );
}

async fn futures_ids(db: &TestDb, topic: &str, n: i64) -> Vec<commerce_outbox::EventId> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(commit_event(db.pool(), topic, &format!("r-{i}"), i).await);
    }
    ids
}

/// A topic-wide refusal (here: a producer whose size limit is below every event's head)
/// dead-letters the head of every aggregate and holds the rest. After the cause is fixed,
/// one call replays all of the topic's dead letters: each aggregate's events then arrive in
/// sequence order, and another topic's dead letter is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_topic_releases_all_its_dead_letters_in_sequence_order() {
    use commerce_outbox::dead_letter::{inspect_event, replay_dead_letters};
    const AGGREGATES: usize = 5;

    let db = TestDb::new(&[&MIGRATOR]).await;
    let brokers = kafka_brokers();
    let topic = new_topic(&brokers, "outbox-replay").await;
    let other = new_topic(&brokers, "outbox-replay-other").await;
    let strict = fast_relay(&db, "strict")
        .max_attempts(2)
        .retry_backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(100),
        ))
        .producer_config("message.max.bytes", "100000")
        .build()
        .unwrap()
        .spawn();

    // Each aggregate: a 200 kB head (over the strict producer's limit), then two small events.
    let big = "x".repeat(200_000);
    let mut heads = Vec::new();
    let mut all = Vec::new();
    for a in 0..AGGREGATES {
        let aggregate = format!("agg-{a}");
        let mut tx = db.pool().begin().await.unwrap();
        let events = [
            NewEvent::new(
                &topic,
                "test.happened",
                "test",
                &aggregate,
                json!({"n": 0, "blob": big}),
            ),
            NewEvent::new(&topic, "test.happened", "test", &aggregate, json!({"n": 1})),
            NewEvent::new(&topic, "test.happened", "test", &aggregate, json!({"n": 2})),
        ];
        let ids = commerce_outbox::enqueue_all(&mut tx, &events)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        heads.push(ids[0]);
        all.extend(ids);
    }
    let mut tx = db.pool().begin().await.unwrap();
    let other_dead = enqueue(
        &mut tx,
        &NewEvent::new(
            &other,
            "test.happened",
            "test",
            "agg-other",
            json!({"n": 0, "blob": big}),
        ),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let pool = db.pool().clone();
    eventually(Duration::from_secs(30), "every head to be dead", || {
        let pool = pool.clone();
        async move { outbox_stats(&pool).await.unwrap().dead_letters == AGGREGATES as i64 + 1 }
    })
    .await;
    assert_eq!(
        outbox_stats(db.pool()).await.unwrap().pending,
        2 * AGGREGATES as i64,
        "the later events are held behind their dead heads"
    );
    strict.shutdown().await.unwrap();

    // The cause is fixed (a producer that allows the size): one replay for the whole topic.
    let relaxed = fast_relay(&db, "relaxed").build().unwrap().spawn();
    let replayed = replay_dead_letters(db.pool(), &topic).await.unwrap();
    assert_eq!(
        replayed, heads,
        "every dead letter of the topic, oldest first"
    );

    let mut reader = Reader::new(&brokers, &topic);
    reader.read_ids(&all, Duration::from_secs(30)).await;
    let order = arrival_order(&reader.received);
    for a in 0..AGGREGATES {
        assert_eq!(
            order[&format!("agg-{a}")],
            vec![0, 1, 2],
            "agg-{a} in sequence order"
        );
    }
    assert_eq!(
        inspect_event(db.pool(), other_dead).await.unwrap().status,
        "dead",
        "another topic's dead letter is not replayed"
    );
    assert_eq!(
        replay_dead_letters(db.pool(), &topic).await.unwrap(),
        Vec::new(),
        "nothing left to replay"
    );
    relaxed.shutdown().await.unwrap();
}
