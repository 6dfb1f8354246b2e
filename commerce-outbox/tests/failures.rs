//! Failures: the broker going away (Kafka), a relay dying between publish and mark, an event
//! for a topic that does not exist (both transports: `<scenario>::kafka` and
//! `<scenario>::in_process`).

mod common;

use std::time::Duration;

use commerce_outbox::dead_letter::inspect_event;
use commerce_outbox::{
    enqueue, enqueue_all, ensure_topics, outbox_stats, Backoff, InboxConsumer, NewEvent, Relay,
    TopicSettings, MIGRATOR,
};
use commerce_testkit::{unique_name, within, PrivateBroker, TestDb};
use common::{
    commit_event, eventually, until_relays_count, Kind, Probe, Reader, RecordEffect, Transports,
    PARTITIONS,
};
use serde_json::json;
use sqlx::{Connection, PgConnection};

on_both_transports!(
    a_relay_killed_between_publish_and_mark_loses_nothing_and_the_inbox_absorbs_the_duplicates,
    an_event_for_a_missing_topic_is_dead_lettered_while_the_others_flow_at_full_speed,
);

fn settings() -> TopicSettings {
    TopicSettings {
        partitions: PARTITIONS,
        replication_factor: 1,
    }
}

/// Orders keep being placed while the broker is down; once it is back every event arrives.
///
/// The private tansu runs with memory storage, so a restart forgets its topics and
/// messages: the test recreates the topics after the restart, and checks the events
/// published before the outage with a reader that consumed them before the broker died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_while_the_broker_is_down_arrive_once_it_is_back() {
    common::init_logs();
    let db = TestDb::new(&[&MIGRATOR]).await;
    let mut broker = PrivateBroker::start().await;
    let brokers = broker.brokers();
    let topic = unique_name("outbox-outage");
    ensure_topics(&brokers, &[&topic], settings())
        .await
        .unwrap();

    let relay = Relay::builder(db.pool().clone(), &brokers)
        .name("outage")
        .poll_interval(Duration::from_millis(200))
        .broker_backoff(Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(800),
        ))
        .producer_config("message.timeout.ms", "1500")
        .producer_config("reconnect.backoff.max.ms", "300")
        .build()
        .unwrap()
        .spawn();

    let mut before = Vec::new();
    for n in 0..30 {
        before.push(commit_event(db.pool(), &topic, &format!("order-{}", n % 5), n).await);
    }
    let mut early = Reader::new(&brokers, &topic);
    early.read_ids(&before, Duration::from_secs(30)).await;
    drop(early);

    broker.stop();
    let mut during = Vec::new();
    for n in 30..60 {
        during.push(commit_event(db.pool(), &topic, &format!("order-{}", n % 5), n).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pool = db.pool().clone();
    eventually(
        Duration::from_secs(20),
        "the relay to notice the outage",
        || {
            let relay = &relay;
            async move { relay.metrics().await.unwrap().unavailable_total > 0 }
        },
    )
    .await;
    assert_eq!(
        outbox_stats(&pool).await.unwrap().pending,
        30,
        "nothing is lost or skipped while down"
    );
    // Let the relay go through a few more rounds of the outage (the broker backoff is at
    // most 800 ms): none of them may count as an attempt of the events.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM commerce_outbox.event WHERE attempts > 0")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(attempted, 0, "an outage is not the events' fault");

    broker.restart().await;
    ensure_topics(&brokers, &[&topic], settings())
        .await
        .unwrap();
    let mut late = Reader::new(&brokers, &topic);
    late.read_ids(&during, Duration::from_secs(45)).await;
    let order = common::arrival_order(&late.received);
    for (aggregate, ns) in order {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "{aggregate} out of order after the outage");
    }
    eventually(Duration::from_secs(10), "pending to drain", || {
        let pool = pool.clone();
        async move { outbox_stats(&pool).await.unwrap().pending == 0 }
    })
    .await;
    let metrics = relay.metrics().await.unwrap();
    assert_eq!(
        metrics.dead_lettered_total, 0,
        "an outage never dead-letters events"
    );
    relay.shutdown().await.unwrap();
}

/// The relay is killed after the transport delivered a batch (Kafka: the broker
/// acknowledged it; in-process: the consumer applied it) but before the rows were marked:
/// nothing is lost, the batch is published again, and the inbox applies each event once.
async fn a_relay_killed_between_publish_and_mark_loses_nothing_and_the_inbox_absorbs_the_duplicates(
    kind: Kind,
) {
    const EVENTS: usize = 20;
    let db = TestDb::new(&[&MIGRATOR]).await;
    let transports = Transports::new(kind);
    let topic = transports.new_topic("outbox-crash").await;
    sqlx::query("CREATE TABLE effects (event_id uuid NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    for n in 0..EVENTS {
        commit_event(db.pool(), &topic, &format!("order-{}", n % 4), n as i64).await;
    }

    // A gate: any UPDATE of the outbox (the relay's "mark published") waits until the test
    // releases an advisory lock, so the relay is caught exactly between publish and mark.
    let mut gate = PgConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut gate)
        .await
        .unwrap();
    sqlx::query(
        "CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_lock_shared(4242); PERFORM pg_advisory_unlock_shared(4242); RETURN NULL; END $$",
    )
    .execute(db.pool())
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER gate BEFORE UPDATE ON commerce_outbox.event
         FOR EACH STATEMENT EXECUTE FUNCTION test_gate()",
    )
    .execute(db.pool())
    .await
    .unwrap();

    let consumer = InboxConsumer::with_transport(
        db.pool().clone(),
        transports.shared.clone(),
        unique_name("group"),
        "effects",
    )
    .topics([topic.as_str()])
    .build(RecordEffect)
    .unwrap()
    .spawn();
    let doomed = Relay::with_transport(db.pool().clone(), transports.for_relay())
        .name("doomed")
        .batch_size(100)
        .build()
        .unwrap()
        .spawn();
    eventually(
        Duration::from_secs(45),
        "the consumer to apply the batch",
        || std::future::ready(consumer.stats().applied == EVENTS as u64),
    )
    .await;
    assert_eq!(
        outbox_stats(db.pool()).await.unwrap().pending,
        EVENTS as i64,
        "applied but not marked"
    );
    doomed.abort();

    // Release the gate: the killed relay's transaction rolls back; the rows are still pending.
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut gate)
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER gate ON commerce_outbox.event")
        .execute(&mut gate)
        .await
        .unwrap();

    let survivor = Relay::with_transport(db.pool().clone(), transports.for_relay())
        .name("survivor")
        .poll_interval(Duration::from_millis(200))
        .build()
        .unwrap()
        .spawn();
    let pool = db.pool().clone();
    eventually(Duration::from_secs(30), "the survivor to republish", || {
        let pool = pool.clone();
        async move { outbox_stats(&pool).await.unwrap().pending == 0 }
    })
    .await;
    eventually(
        Duration::from_secs(45),
        "the consumer to see every delivery",
        || {
            let stats = consumer.stats();
            std::future::ready(stats.applied + stats.duplicates >= 2 * EVENTS as u64)
        },
    )
    .await;
    let stats = consumer.stats();
    assert_eq!(stats.applied, EVENTS as u64);
    assert_eq!(stats.duplicates, EVENTS as u64);
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM effects")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(
        (rows, distinct),
        (EVENTS as i64, EVENTS as i64),
        "each effect exactly once"
    );
    consumer.shutdown().await.unwrap();
    survivor.shutdown().await.unwrap();
}

/// One event routed to a topic that does not exist (a forgotten `ensure_topics`, a wrong
/// route) among 2,000 good ones over 200 aggregates: the good ones go out at full speed (and
/// reach a consumer), and the bad one is an attempt each time, so it ends as a dead letter
/// instead of making the whole relay wait out delivery timeouts and back off forever.
async fn an_event_for_a_missing_topic_is_dead_lettered_while_the_others_flow_at_full_speed(
    kind: Kind,
) {
    const AGGREGATES: usize = 200;
    const PER_AGGREGATE: usize = 10;
    common::init_logs();
    let db = TestDb::new(&[&MIGRATOR]).await;
    let transports = Transports::new(kind);
    let good = transports.new_topic("outbox-good").await;
    let missing = unique_name("no-such-topic");
    let probe = Probe::start(&transports.shared, &[&good]);

    // The bad event is the oldest, so it is in the relay's first batch.
    let mut tx = db.pool().begin().await.unwrap();
    let bad = enqueue(
        &mut tx,
        &NewEvent::new(&missing, "test.happened", "test", "lost", json!({"n": 0})),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    for aggregate in 0..AGGREGATES {
        let events: Vec<NewEvent> = (0..PER_AGGREGATE)
            .map(|n| {
                NewEvent::new(
                    &good,
                    "test.happened",
                    "test",
                    format!("order-{aggregate}"),
                    json!({ "n": n }),
                )
            })
            .collect();
        let mut tx = db.pool().begin().await.unwrap();
        enqueue_all(&mut tx, &events).await.unwrap();
        tx.commit().await.unwrap();
    }

    let relay = Relay::with_transport(db.pool().clone(), transports.for_relay())
        .name("missing-topic")
        .poll_interval(Duration::from_millis(200))
        .max_attempts(3)
        .retry_backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(200),
        ))
        .build()
        .unwrap()
        .spawn();
    let started = std::time::Instant::now();
    let pool = db.pool().clone();
    let good_published = || {
        let pool = pool.clone();
        let good = good.clone();
        async move {
            let published: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM commerce_outbox.event WHERE topic = $1 AND status = 'published'",
            )
            .bind(&good)
            .fetch_one(&pool)
            .await
            .unwrap();
            published == (AGGREGATES * PER_AGGREGATE) as i64
        }
    };
    // 2,000 events take well under a second on an idle relay; a relay that waits for the
    // bad event's delivery timeout (10 s by default) in every batch takes far longer.
    eventually(
        Duration::from_secs(10),
        "the 2,000 good events to be published",
        good_published,
    )
    .await;
    println!("good events published after {:?}", started.elapsed());
    probe
        .wait_count(AGGREGATES * PER_AGGREGATE, Duration::from_secs(45))
        .await;

    eventually(
        Duration::from_secs(30),
        "the event for the missing topic to be dead",
        || {
            let pool = pool.clone();
            async move { inspect_event(&pool, bad).await.unwrap().status == "dead" }
        },
    )
    .await;
    let dead = inspect_event(db.pool(), bad).await.unwrap();
    assert_eq!(dead.attempts, 3, "dead after max_attempts");
    let error = dead.last_error.unwrap_or_default();
    assert!(
        error.contains(&missing),
        "the error names the topic: {error}"
    );
    until_relays_count(&[&relay], |m| m.dead_lettered_total, 1).await;
    let metrics = relay.metrics().await.unwrap();
    assert_eq!(metrics.dead_lettered_total, 1);
    assert_eq!(metrics.outbox.pending, 0);
    within(Duration::from_secs(20), relay.shutdown())
        .await
        .unwrap();
    probe.stop().await;
}
