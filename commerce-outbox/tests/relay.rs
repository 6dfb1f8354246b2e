//! The relay against real Postgres, on both transports (each scenario runs as
//! `<scenario>::kafka` and `<scenario>::in_process`).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commerce_outbox::{enqueue, outbox_stats, Backoff, EventTransport, NewEvent, Relay, MIGRATOR};
use commerce_testkit::TestDb;
use common::{
    commit_event, dead_letters, eventually, order_of, until_relays_count, Kind, Probe, Transports,
};
use serde_json::json;

on_both_transports!(
    rolled_back_events_never_exist_and_committed_ones_arrive_once_in_commit_order,
    two_relays_publish_each_event_once_in_commit_order_per_aggregate,
    a_poison_event_is_dead_lettered_while_others_flow_and_replay_publishes_it,
    replaying_a_topic_releases_all_its_dead_letters_in_sequence_order,
    retention_prunes_only_published_rows,
);

fn fast_relay(
    db: &TestDb,
    transport: Arc<dyn EventTransport>,
    name: &str,
) -> commerce_outbox::RelayBuilder {
    Relay::with_transport(db.pool().clone(), transport)
        .name(name)
        .poll_interval(Duration::from_millis(200))
        .broker_backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(500),
        ))
}

async fn rolled_back_events_never_exist_and_committed_ones_arrive_once_in_commit_order(kind: Kind) {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let transports = Transports::new(kind);
    let topic = transports.new_topic("outbox-commit").await;
    let probe = Probe::start(&transports.shared, &[&topic]);
    let relay = fast_relay(&db, transports.for_relay(), "commit-test")
        .build()
        .unwrap()
        .spawn();

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
    // for this aggregate, before this sentinel.
    let sentinel = commit_event(db.pool(), &topic, "agg-a", 10).await;
    committed.push(sentinel);

    probe.wait_ids(&committed, Duration::from_secs(45)).await;
    let envelopes = probe.envelopes();
    let ids: Vec<_> = envelopes.iter().map(|e| e.id).collect();
    assert!(
        !ids.contains(&rolled_back.id),
        "rolled-back event was published"
    );
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an event was published twice");
    assert_eq!(ids.len(), committed.len());
    let order = order_of(&envelopes);
    assert_eq!(order["agg-a"], (0..=10).collect::<Vec<_>>());
    assert_eq!(order["agg-b"], (0..10).collect::<Vec<_>>());
    assert_eq!(order["agg-c"], (0..10).collect::<Vec<_>>());
    for delivery in probe.received() {
        let envelope = delivery.envelope().unwrap();
        assert_eq!(
            delivery.key.as_deref(),
            Some(envelope.aggregate_id.as_str()),
            "key = aggregate id"
        );
        assert_eq!(
            delivery.header("event-id"),
            Some(envelope.id.to_string().as_str())
        );
        assert_eq!(delivery.header("event-type"), Some("test.happened"));
    }

    // The probe can hold an event before the relay has marked it published and counted it.
    until_relays_count(&[&relay], |m| m.published_total, committed.len() as u64).await;
    let metrics = relay.metrics().await.unwrap();
    assert_eq!(metrics.published_total, committed.len() as u64);
    assert_eq!(metrics.outbox.pending, 0);
    relay.shutdown().await.unwrap();
    probe.stop().await;
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
async fn two_relays_publish_each_event_once_in_commit_order_per_aggregate(kind: Kind) {
    const AGGREGATES: usize = 1_000;
    const PER_AGGREGATE: usize = 20;
    const WRITERS: usize = 8;
    let db = TestDb::with_pool_size(&[&MIGRATOR], 16).await;
    let transports = Transports::new(kind);
    let topic = transports.new_topic("outbox-two-relays").await;
    sqlx::query(
        "CREATE TABLE business_state (aggregate text PRIMARY KEY, version bigint NOT NULL)",
    )
    .execute(db.pool())
    .await
    .unwrap();

    let probe = Probe::start(&transports.shared, &[&topic]);
    let relay_a = fast_relay(&db, transports.for_relay(), "relay-a")
        .batch_size(200)
        .build()
        .unwrap()
        .spawn();
    let relay_b = fast_relay(&db, transports.for_relay(), "relay-b")
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
    probe.wait_count(total, Duration::from_secs(90)).await;
    let envelopes = probe.envelopes();
    let ids: HashSet<_> = envelopes.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), total, "every event once");
    assert_eq!(envelopes.len(), total, "no event twice");
    let order = order_of(&envelopes);
    assert_eq!(order.len(), AGGREGATES);
    let expected: Vec<i64> = (1..=PER_AGGREGATE as i64).collect();
    for (aggregate, versions) in &order {
        assert_eq!(versions, &expected, "{aggregate} out of commit order");
    }
    until_relays_count(&[&relay_a, &relay_b], |m| m.published_total, total as u64).await;
    let a = relay_a.metrics().await.unwrap();
    let b = relay_b.metrics().await.unwrap();
    assert_eq!(a.published_total + b.published_total, total as u64);
    println!(
        "relay-a published {}, relay-b published {}",
        a.published_total, b.published_total
    );
    relay_a.shutdown().await.unwrap();
    relay_b.shutdown().await.unwrap();
    probe.stop().await;
}

/// How each transport is made to refuse an event, and undone: on Kafka a producer whose
/// size limit (100 kB) is below the event's 200 kB (the broker takes 1 MB); in-process a
/// consumer group (the probe) that refuses it.
struct Poison {
    transports: Transports,
    refusing: Arc<AtomicBool>,
}

impl Poison {
    fn new(kind: Kind) -> Self {
        Self {
            transports: Transports::new(kind),
            refusing: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The probe: refuses the big events while the cause is not fixed (in-process).
    fn probe(&self, topics: &[&str]) -> Probe {
        let refusing = Arc::clone(&self.refusing);
        Probe::refusing(
            &self.transports.shared,
            topics,
            Arc::new(move |envelope| {
                refusing.load(Ordering::SeqCst) && envelope.payload.get("blob").is_some()
            }),
        )
    }

    fn strict_transport(&self) -> Arc<dyn EventTransport> {
        self.transports
            .for_relay_with(|kafka| kafka.producer_config("message.max.bytes", "100000"))
    }

    /// Fixes the cause; returns the transport of a relay that can publish the event now.
    fn fix(&self) -> Arc<dyn EventTransport> {
        self.refusing.store(false, Ordering::SeqCst);
        self.transports.for_relay()
    }

    /// The error the refusal leaves in the row.
    fn error(&self) -> &'static str {
        match self.transports.kind {
            Kind::Kafka => "too large",
            Kind::InProcess => "the probe refuses it",
        }
    }
}

fn big_payload(n: i64) -> serde_json::Value {
    json!({"n": n, "blob": "x".repeat(200_000)})
}

async fn a_poison_event_is_dead_lettered_while_others_flow_and_replay_publishes_it(kind: Kind) {
    use commerce_outbox::dead_letter::{inspect_event, list_dead_letters, replay_dead_letter};

    let db = TestDb::new(&[&MIGRATOR]).await;
    let poison_cause = Poison::new(kind);
    let topic = poison_cause.transports.new_topic("outbox-poison").await;
    let probe = poison_cause.probe(&[&topic]);
    let dlq = Probe::start(
        &poison_cause.transports.shared,
        &[&commerce_outbox::dlq_topic(&topic)],
    );
    let strict = fast_relay(&db, poison_cause.strict_transport(), "strict")
        .max_attempts(3)
        .retry_backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(200),
        ))
        .build()
        .unwrap()
        .spawn();

    let mut tx = db.pool().begin().await.unwrap();
    let poison = NewEvent::new(&topic, "test.happened", "test", "poisoned", big_payload(0));
    enqueue(&mut tx, &poison).await.unwrap();
    tx.commit().await.unwrap();
    let held = commit_event(db.pool(), &topic, "poisoned", 1).await;
    let mut healthy = Vec::new();
    for n in 0..5 {
        healthy.push(commit_event(db.pool(), &topic, "healthy-1", n).await);
        healthy.push(commit_event(db.pool(), &topic, "healthy-2", n).await);
    }
    probe.wait_ids(&healthy, Duration::from_secs(45)).await;

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
    let error = dead.last_error.as_deref().unwrap_or("").to_lowercase();
    assert!(error.contains(poison_cause.error()), "{error}");
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
    until_relays_count(&[&strict], |m| m.dead_lettered_total, 1).await;

    dlq.wait_count(1, Duration::from_secs(45)).await;
    let delivery = &dlq.received()[0];
    assert_eq!(
        delivery.header("event-id"),
        Some(poison.id.to_string().as_str())
    );
    assert!(delivery
        .header("error")
        .unwrap_or("")
        .to_lowercase()
        .contains(poison_cause.error()));
    let letter = &dead_letters(&dlq.received())[0];
    assert_eq!(letter.envelope.id, poison.id);
    assert_eq!(letter.attempts, 3);
    assert_eq!(
        letter.payload_omitted,
        kind == Kind::Kafka,
        "too large for Kafka's DLQ too; in-process it fits"
    );

    // Fix the cause, then replay.
    strict.shutdown().await.unwrap();
    let relaxed = fast_relay(&db, poison_cause.fix(), "relaxed")
        .build()
        .unwrap()
        .spawn();
    replay_dead_letter(db.pool(), poison.id).await.unwrap();
    probe
        .wait_ids(&[poison.id, held], Duration::from_secs(30))
        .await;
    let order = order_of(&probe.envelopes());
    assert_eq!(
        order["poisoned"],
        vec![0, 1],
        "replayed event first, then the held one"
    );
    assert_eq!(outbox_stats(db.pool()).await.unwrap().dead_letters, 0);
    relaxed.shutdown().await.unwrap();
    probe.stop().await;
    dlq.stop().await;
}

async fn retention_prunes_only_published_rows(kind: Kind) {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let transports = Transports::new(kind);
    let topic = transports.new_topic("outbox-retention").await;
    let ids: Vec<_> = futures_ids(&db, &topic, 5).await;
    let relay = fast_relay(&db, transports.for_relay(), "retention")
        .build()
        .unwrap()
        .spawn();
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

/// A topic-wide refusal dead-letters the head of every aggregate and holds the rest. After
/// the cause is fixed, one call replays all of the topic's dead letters: each aggregate's
/// events then arrive in sequence order, and another topic's dead letter is left alone.
async fn replaying_a_topic_releases_all_its_dead_letters_in_sequence_order(kind: Kind) {
    use commerce_outbox::dead_letter::{inspect_event, replay_dead_letters};
    const AGGREGATES: usize = 5;

    let db = TestDb::new(&[&MIGRATOR]).await;
    let poison_cause = Poison::new(kind);
    let topic = poison_cause.transports.new_topic("outbox-replay").await;
    let other = poison_cause
        .transports
        .new_topic("outbox-replay-other")
        .await;
    let probe = poison_cause.probe(&[&topic, &other]);
    let strict = fast_relay(&db, poison_cause.strict_transport(), "strict")
        .max_attempts(2)
        .retry_backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(100),
        ))
        .build()
        .unwrap()
        .spawn();

    // Each aggregate: a 200 kB head (refused while the cause is not fixed), then two small
    // events.
    let mut heads = Vec::new();
    let mut all = Vec::new();
    for a in 0..AGGREGATES {
        let aggregate = format!("agg-{a}");
        let mut tx = db.pool().begin().await.unwrap();
        let events = [
            NewEvent::new(&topic, "test.happened", "test", &aggregate, big_payload(0)),
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
        &NewEvent::new(&other, "test.happened", "test", "agg-other", big_payload(0)),
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

    // The cause is fixed: one replay for the whole topic.
    let relaxed = fast_relay(&db, poison_cause.fix(), "relaxed")
        .build()
        .unwrap()
        .spawn();
    let replayed = replay_dead_letters(db.pool(), &topic).await.unwrap();
    assert_eq!(
        replayed, heads,
        "every dead letter of the topic, oldest first"
    );

    probe.wait_ids(&all, Duration::from_secs(45)).await;
    let order = order_of(&probe.envelopes());
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
    probe.stop().await;
}

/// Sequential scans of the outbox table so far. A backend reports its counts when it goes
/// idle, at most once a second: the relay's go idle between polls (every 200 ms here), and
/// the test's own connections are closed before this is read (a backend reports as it ends).
async fn event_seq_scans(db: &TestDb) -> i64 {
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut conn = db.pool().acquire().await.unwrap();
    commerce_testkit::seq_scans(&mut conn, "commerce_outbox", "event").await
}

/// Commits `events` events in one transaction and waits until the relay has marked them
/// published (one batch of that many rows, usually).
async fn publish_together(pool: &sqlx::PgPool, topic: &str, round: i64, events: i64) {
    let mut tx = pool.begin().await.unwrap();
    let mut ids = Vec::new();
    for n in 0..events {
        let event = NewEvent::new(
            topic,
            "test.happened",
            "test",
            format!("agg-{n}"),
            json!({"round": round}),
        );
        ids.push(enqueue(&mut tx, &event).await.unwrap().0);
    }
    tx.commit().await.unwrap();
    let pool = pool.clone();
    eventually(Duration::from_secs(30), "events published", || {
        let (pool, ids) = (pool.clone(), ids.clone());
        async move {
            // Not prepared: a custom plan, so this probe is an index lookup itself.
            let published: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM commerce_outbox.event
                 WHERE id = ANY($1) AND status = 'published'",
            )
            .persistent(false)
            .bind(&ids)
            .fetch_one(&pool)
            .await
            .unwrap();
            published == events
        }
    })
    .await;
}

/// A relay that started on a young table keeps reading it by index once it has grown, even
/// before anything analyzed it (autovacuum off, or not yet round): a statement prepared on
/// the young table must not keep a plan that reads the whole table on every batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_started_on_a_young_table_never_scans_it_whole_once_grown() {
    let db = TestDb::new(&[&MIGRATOR]).await;
    sqlx::query("ALTER TABLE commerce_outbox.event SET (autovacuum_enabled = false)")
        .execute(db.pool())
        .await
        .unwrap();
    let transports = Transports::new(Kind::InProcess);
    let topic = transports.new_topic("outbox-plans").await;
    // No pruning: its statements are not what this test watches.
    let relay = fast_relay(&db, transports.for_relay(), "plans")
        .retention(None)
        .build()
        .unwrap()
        .spawn();
    // The test's own statements run on pools of their own (see `event_seq_scans`).
    let young = sqlx::PgPool::connect(&db.url()).await.unwrap();
    // Young: more batches than Postgres needs to settle on one plan per prepared statement.
    for round in 0..12 {
        publish_together(&young, &topic, round, 8).await;
    }
    // Grown: 20,000 settled rows, as a relay leaves them between two retention runs.
    sqlx::query(
        "INSERT INTO commerce_outbox.event
             (id, topic, event_type, aggregate_type, aggregate_id, aggregate_seq, occurred_at,
              schema_version, payload, status, published_at)
         SELECT gen_random_uuid(), $1, 'test.happened', 'old', 'old-' || (n % 1000), n / 1000 + 1,
                now(), 1, '{\"n\": 0}', 'published', now()
         FROM generate_series(0, 19999) AS n",
    )
    .bind(&topic)
    .execute(&young)
    .await
    .unwrap();
    young.close().await;
    let before = event_seq_scans(&db).await;
    let grown = sqlx::PgPool::connect(&db.url()).await.unwrap();
    for round in 12..24 {
        publish_together(&grown, &topic, round, 8).await;
    }
    grown.close().await;
    let after = event_seq_scans(&db).await;
    relay.shutdown().await.unwrap();
    assert_eq!(
        after - before,
        0,
        "12 batches on the grown table read it whole {} times",
        after - before
    );
}
