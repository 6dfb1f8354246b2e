//! What only the in-process transport does: hand a failing event back to the relay, hold an
//! aggregate's later events behind it, wait for every consumer group, and shut down without
//! losing anything. (The scenarios shared with Kafka run in `relay`, `consumer` and
//! `failures` as `<scenario>::in_process`; the crash between apply and mark is
//! `failures a_relay_killed_between_publish_and_mark…::in_process`.)

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use commerce_outbox::dead_letter::{inspect_event, replay_dead_letter};
use commerce_outbox::{
    enqueue_all, outbox_stats, Backoff, ConsumerHandle, Envelope, Error, EventHandler,
    EventTransport, HandlerError, InProcessTransport, InboxConsumer, InboxConsumerBuilder,
    NewEvent, Relay, RelayBuilder, RelayHandle, MIGRATOR,
};
use commerce_testkit::{unique_name, within, TestDb};
use common::{eventually, until_consumers_count};
use serde_json::json;
use sqlx::{PgConnection, PgPool};

/// Whether the handler fails for an event.
type FailIf = Arc<dyn Fn(&Envelope) -> bool + Send + Sync>;

/// Records each applied event as (consumer, aggregate, n) in `applied`, in apply order;
/// fails for the events `fail_if` picks.
struct Recorder {
    consumer: String,
    fail_if: FailIf,
    delay: Duration,
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        tokio::time::sleep(self.delay).await;
        if (self.fail_if)(envelope) {
            return Err(format!(
                "cannot apply {} #{}",
                envelope.aggregate_id, envelope.payload["n"]
            )
            .into());
        }
        sqlx::query(
            "INSERT INTO applied (consumer, event_id, aggregate, n) VALUES ($1, $2, $3, $4)",
        )
        .bind(&self.consumer)
        .bind(envelope.id.0)
        .bind(&envelope.aggregate_id)
        .bind(envelope.payload["n"].as_i64().unwrap_or(-1))
        .execute(conn)
        .await?;
        Ok(())
    }
}

async fn database() -> TestDb {
    let db = TestDb::new(&[&MIGRATOR]).await;
    sqlx::query(
        "CREATE TABLE applied (seq bigserial PRIMARY KEY, consumer text NOT NULL,
         event_id uuid NOT NULL, aggregate text NOT NULL, n bigint NOT NULL)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    db
}

/// An in-process transport with its default settings.
fn in_process() -> Arc<dyn EventTransport> {
    Arc::new(InProcessTransport::new())
}

/// Creates a fresh `orders` topic on `transport` and names it.
async fn orders_topic(transport: &Arc<dyn EventTransport>) -> String {
    let topic = unique_name("orders");
    transport.ensure_topics(&[&topic]).await.unwrap();
    topic
}

fn never() -> FailIf {
    Arc::new(|_| false)
}

/// Fails the first `times` deliveries of `aggregate`'s first event; returns the count left.
fn fail_first(times: u32, aggregate: &str) -> (FailIf, Arc<AtomicU32>) {
    let failures_left = Arc::new(AtomicU32::new(times));
    let aggregate = aggregate.to_owned();
    let fail_if: FailIf = {
        let failures_left = Arc::clone(&failures_left);
        Arc::new(move |envelope| {
            envelope.aggregate_id == aggregate
                && envelope.payload["n"] == 0
                && failures_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
        })
    };
    (fail_if, failures_left)
}

/// A consumer (inbox `name`) of `group` on `topic`, retrying a failing handler twice quickly
/// before handing the event back.
fn consumer(
    db: &TestDb,
    transport: &Arc<dyn EventTransport>,
    group: &str,
    name: &str,
    topic: &str,
    fail_if: FailIf,
) -> ConsumerHandle {
    let builder = consumer_builder(db, transport, group, name, topic);
    spawn_consumer(builder, name, fail_if, Duration::ZERO)
}

/// The settings `consumer` uses, for a test to add to.
fn consumer_builder(
    db: &TestDb,
    transport: &Arc<dyn EventTransport>,
    group: &str,
    name: &str,
    topic: &str,
) -> InboxConsumerBuilder {
    InboxConsumer::with_transport(db.pool().clone(), Arc::clone(transport), group, name)
        .topics([topic])
        .handler_attempts(2)
        .retry_backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(20),
        ))
}

/// Spawns `builder` with a `Recorder` for consumer `name` that waits `delay` per event.
fn spawn_consumer(
    builder: InboxConsumerBuilder,
    name: &str,
    fail_if: FailIf,
    delay: Duration,
) -> ConsumerHandle {
    builder
        .build(Recorder {
            consumer: name.to_owned(),
            fail_if,
            delay,
        })
        .unwrap()
        .spawn()
}

fn relay(db: &TestDb, transport: &Arc<dyn EventTransport>) -> RelayBuilder {
    Relay::with_transport(db.pool().clone(), Arc::clone(transport))
        .poll_interval(Duration::from_millis(100))
        .broker_backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(200),
        ))
        .retry_backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(100),
        ))
}

/// Builds and spawns the relay `builder` describes.
fn spawn_relay(builder: RelayBuilder) -> RelayHandle {
    builder.build().unwrap().spawn()
}

/// Commits `per_aggregate` events `{n: 0..}` for each aggregate, one transaction per
/// aggregate (so they reach the relay's claims together).
async fn commit_all(pool: &PgPool, topic: &str, aggregates: &[String], per_aggregate: i64) {
    for aggregate in aggregates {
        let events: Vec<NewEvent> = (0..per_aggregate)
            .map(|n| NewEvent::new(topic, "test.happened", "test", aggregate, json!({ "n": n })))
            .collect();
        let mut tx = pool.begin().await.unwrap();
        enqueue_all(&mut tx, &events).await.unwrap();
        tx.commit().await.unwrap();
    }
}

fn aggregates(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|a| format!("{prefix}-{a}")).collect()
}

/// What `consumer` applied: per aggregate, the `n`s in apply order.
async fn applied_by(pool: &PgPool, consumer: &str) -> HashMap<String, Vec<i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT aggregate, n FROM applied WHERE consumer = $1 ORDER BY seq")
            .bind(consumer)
            .fetch_all(pool)
            .await
            .unwrap();
    let mut order: HashMap<String, Vec<i64>> = HashMap::new();
    for (aggregate, n) in rows {
        order.entry(aggregate).or_default().push(n);
    }
    order
}

async fn applied_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM applied")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits (up to 30 s, naming `what`) until `count` events are applied in all.
async fn until_applied(pool: &PgPool, what: &str, count: i64) {
    eventually(Duration::from_secs(30), what, async || {
        applied_count(pool).await == count
    })
    .await;
}

/// Asserts `consumer` applied events 0 to 4 of exactly `aggregates`, in order, once each.
async fn assert_each_applied_in_order_once(pool: &PgPool, consumer: &str, aggregates: &[String]) {
    let order = applied_by(pool, consumer).await;
    assert_eq!(
        order.len(),
        aggregates.len(),
        "{consumer} saw every aggregate"
    );
    for aggregate in aggregates {
        assert_eq!(
            order.get(aggregate),
            Some(&vec![0, 1, 2, 3, 4]),
            "{consumer}: {aggregate} in order, once each"
        );
    }
}

/// Waits up to `timeout` for a consumer's or relay's `shutdown` to finish cleanly.
async fn stop(shutdown: impl Future<Output = commerce_outbox::Result<()>>, timeout: Duration) {
    within(timeout, shutdown).await.unwrap();
}

/// Stops the `consumers` one by one, then the `relay`, each within `timeout`.
async fn shut_down(
    consumers: impl IntoIterator<Item = ConsumerHandle>,
    relay: RelayHandle,
    timeout: Duration,
) {
    for consumer in consumers {
        stop(consumer.shutdown(), timeout).await;
    }
    stop(relay.shutdown(), timeout).await;
}

/// An aggregate's first event fails in the handler (twice handed back to the relay, then it
/// succeeds): its later events, published in the same batches, are held each time and
/// applied only after it, in order; other aggregates are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_holds_its_aggregates_later_events_and_order_is_kept() {
    let db = database().await;
    let transport = in_process();
    let topic = orders_topic(&transport).await;
    // 2 handler tries per hand-back, so 4 failures = 2 failed relay attempts.
    let (fail_if, failures_left) = fail_first(4, "agg-1");
    let consumer = consumer(&db, &transport, "stock", "stock", &topic, fail_if);
    let aggregates = aggregates("agg", 5);
    commit_all(db.pool(), &topic, &aggregates, 5).await;
    let relay = spawn_relay(relay(&db, &transport).max_attempts(5));

    until_applied(db.pool(), "every event applied", 25).await;
    assert_each_applied_in_order_once(db.pool(), "stock", &aggregates).await;
    assert_eq!(failures_left.load(Ordering::SeqCst), 0);
    until_consumers_count(&[&consumer], 25).await;
    let stats = consumer.stats();
    assert_eq!(stats.refused, 2, "handed back twice: {stats:?}");
    assert_eq!(stats.applied, 25);
    let head: uuid::Uuid = sqlx::query_scalar(
        "SELECT id FROM commerce_outbox.event WHERE aggregate_id = 'agg-1' AND aggregate_seq = 1",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    let head = inspect_event(db.pool(), head.into()).await.unwrap();
    assert_eq!(head.attempts, 2, "each hand-back is a failed attempt");
    let metrics = relay.metrics().await.unwrap();
    assert_eq!(metrics.refused_total, 2);
    assert_eq!(metrics.dead_lettered_total, 0);
    let pool = db.pool().clone();
    eventually(
        Duration::from_secs(10),
        "every event marked published",
        async || outbox_stats(&pool).await.unwrap().pending == 0,
    )
    .await;
    shut_down([consumer], relay, Duration::from_secs(10)).await;
}

/// A consumer that applies up to 16 waiting deliveries per transaction applies every event
/// once and in order, in fewer transactions than events; a batch holding an event that keeps
/// failing falls back to one event at a time, and that event alone is handed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_consumer_applies_each_event_once_in_order_in_fewer_transactions() {
    let db = database().await;
    let transport = in_process();
    let topic = orders_topic(&transport).await;
    let (fail_if, _) = fail_first(4, "agg-1");
    let batching = consumer_builder(&db, &transport, "stock", "stock", &topic).max_batch(16);
    let consumer = spawn_consumer(batching, "stock", fail_if, Duration::ZERO);
    let aggregates = aggregates("agg", 10);
    commit_all(db.pool(), &topic, &aggregates, 5).await;
    let relay = spawn_relay(relay(&db, &transport).max_attempts(5));

    until_applied(db.pool(), "every event applied", 50).await;
    assert_each_applied_in_order_once(db.pool(), "stock", &aggregates).await;
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT received_at) FROM commerce_outbox.inbox WHERE consumer = 'stock'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert!(
        transactions < 50,
        "{transactions} transactions for 50 events"
    );
    until_consumers_count(&[&consumer], 50).await;
    let stats = consumer.stats();
    assert_eq!(stats.applied, 50, "{stats:?}");
    // The failed batch's try uses up one of the scripted failures too.
    assert!(
        (1..=2).contains(&stats.refused),
        "the failing event handed back: {stats:?}"
    );
    shut_down([consumer], relay, Duration::from_secs(10)).await;
}

/// Two consumer groups on one topic each apply every event; the two members of one group
/// share the aggregates; each group sees each aggregate in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_gets_every_event_and_members_of_a_group_share_them() {
    let db = database().await;
    let transport = in_process();
    let topic = orders_topic(&transport).await;
    let billing_1 = consumer(&db, &transport, "billing", "billing", &topic, never());
    let billing_2 = consumer(&db, &transport, "billing", "billing", &topic, never());
    let shipping = consumer(&db, &transport, "shipping", "shipping", &topic, never());
    let aggregates = aggregates("order", 20);
    commit_all(db.pool(), &topic, &aggregates, 5).await;
    let relay = spawn_relay(relay(&db, &transport));

    until_applied(db.pool(), "both groups to apply everything", 200).await;
    for group in ["billing", "shipping"] {
        assert_each_applied_in_order_once(db.pool(), group, &aggregates).await;
    }
    until_consumers_count(&[&billing_1, &billing_2, &shipping], 200).await;
    let (one, two) = (billing_1.stats(), billing_2.stats());
    assert_eq!(one.applied + two.applied, 100);
    assert!(
        one.applied > 0 && two.applied > 0,
        "both members work: {one:?} {two:?}"
    );
    assert_eq!(shipping.stats().applied, 100);
    shut_down(
        [billing_1, billing_2, shipping],
        relay,
        Duration::from_secs(10),
    )
    .await;
}

/// A handler that keeps failing for one aggregate: the event is handed back each time, dead
/// after `max_attempts` (listed with the events held behind it), while every other event is
/// applied; once the handler is fixed, a replay applies it and then the held ones, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_is_dead_lettered_while_the_others_flow_and_a_replay_applies_it() {
    let db = database().await;
    let transport = in_process();
    let topic = orders_topic(&transport).await;
    let broken = Arc::new(AtomicBool::new(true));
    let fail_if: FailIf = {
        let broken = Arc::clone(&broken);
        Arc::new(move |envelope| broken.load(Ordering::SeqCst) && envelope.aggregate_id == "lost")
    };
    let group = unique_name("stock");
    let consumer = consumer(&db, &transport, &group, "stock", &topic, fail_if);
    commit_all(db.pool(), &topic, &["lost".to_owned()], 3).await;
    commit_all(db.pool(), &topic, &aggregates("good", 50), 4).await;
    let relay = spawn_relay(relay(&db, &transport).max_attempts(3));

    let pool = db.pool().clone();
    until_applied(&pool, "the good events applied", 200).await;
    eventually(
        Duration::from_secs(30),
        "the failing event to be dead",
        async || outbox_stats(&pool).await.unwrap().dead_letters == 1,
    )
    .await;
    let dead = &commerce_outbox::dead_letter::list_dead_letters(db.pool(), 10)
        .await
        .unwrap()[0];
    assert_eq!(
        (dead.aggregate_id.as_str(), dead.aggregate_seq),
        ("lost", 1)
    );
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.held_behind, 2, "the aggregate's later events wait");
    let error = dead.last_error.clone().unwrap_or_default();
    assert!(
        error.contains(&format!("consumer group {group}"))
            && error.contains("cannot apply lost #0"),
        "{error}"
    );
    assert_eq!(consumer.stats().refused, 3);
    assert!(!applied_by(db.pool(), "stock").await.contains_key("lost"));

    broken.store(false, Ordering::SeqCst);
    replay_dead_letter(db.pool(), dead.id).await.unwrap();
    until_applied(&pool, "the replayed aggregate applied", 203).await;
    assert_eq!(applied_by(db.pool(), "stock").await["lost"], vec![0, 1, 2]);
    // Applied comes first, then the acknowledgement, then the relay marks them published.
    eventually(
        Duration::from_secs(10),
        "the replayed events marked published",
        async || outbox_stats(&pool).await.unwrap().pending == 0,
    )
    .await;
    shut_down([consumer], relay, Duration::from_secs(10)).await;
}

/// A group whose member never reads (a subscription nobody drives): its events are applied
/// by the other group but not marked published (no attempt counted: the transport is
/// unavailable for them); the relay still shuts down within the ack timeout; once that
/// member is gone, a new relay publishes them, and the inbox absorbs the repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_never_answers_costs_no_attempt_and_everything_shuts_down_in_time() {
    let db = database().await;
    let in_process = Arc::new(
        InProcessTransport::builder()
            .ack_timeout(Duration::from_secs(1))
            .build(),
    );
    let transport: Arc<dyn EventTransport> = in_process.clone();
    let topic = orders_topic(&transport).await;
    let sleeper = transport.subscribe("sleeper", &[&topic]).unwrap();
    let effects = consumer(&db, &transport, "effects", "effects", &topic, never());
    commit_all(db.pool(), &topic, &aggregates("order", 5), 2).await;
    let first = spawn_relay(relay(&db, &transport));

    let pool = db.pool().clone();
    eventually(
        Duration::from_secs(30),
        "the relay to see the sleeper time out",
        async || first.metrics().await.unwrap().unavailable_total > 0,
    )
    .await;
    // The sleeper's 1 s deadline says nothing of the awake group's pace on a busy machine.
    eventually(
        Duration::from_secs(30),
        "the awake group to apply everything",
        async || effects.stats().applied == 10,
    )
    .await;
    let stats = outbox_stats(db.pool()).await.unwrap();
    assert_eq!(
        stats.pending, 10,
        "not published until every group applied them"
    );
    let attempted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM commerce_outbox.event WHERE attempts > 0")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(
        attempted, 0,
        "an unanswering group is not the events' fault"
    );
    stop(first.shutdown(), Duration::from_secs(5)).await;

    drop(sleeper);
    assert_eq!(
        in_process.subscribers(&topic),
        vec![("effects".to_owned(), 1)]
    );
    let second = spawn_relay(relay(&db, &transport));
    eventually(
        Duration::from_secs(30),
        "the rows to be published",
        async || outbox_stats(&pool).await.unwrap().pending == 0,
    )
    .await;
    let stats = effects.stats();
    assert_eq!((stats.applied, stats.duplicates), (10, 10), "{stats:?}");
    assert_eq!(applied_count(db.pool()).await, 10, "each effect once");
    stop(effects.shutdown(), Duration::from_secs(5)).await;
    assert!(in_process.subscribers(&topic).is_empty());
    stop(second.shutdown(), Duration::from_secs(5)).await;
}

/// A consumer stopped while the relay waits for it: its queued events come back at once as
/// unavailable (the relay does not wait out the 60 s ack timeout), the relay shuts down at
/// once, and a restarted consumer and relay apply every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_stopped_mid_batch_hands_its_events_back_and_a_restart_applies_each_once() {
    let db = database().await;
    let transport: Arc<dyn EventTransport> = Arc::new(
        InProcessTransport::builder()
            .ack_timeout(Duration::from_secs(60))
            .build(),
    );
    let topic = orders_topic(&transport).await;
    let slow = spawn_consumer(
        consumer_builder(&db, &transport, "effects", "effects", &topic),
        "effects",
        never(),
        Duration::from_millis(100),
    );
    let aggregates = aggregates("order", 4);
    commit_all(db.pool(), &topic, &aggregates, 5).await;
    // Once the consumer is gone the topic has no subscriber, and a message published then
    // reaches nobody (see InProcessTransport): this relay must not try the topic again before
    // it is stopped, so its back-off after the unavailable answer outlasts the test.
    let first = spawn_relay(relay(&db, &transport).broker_backoff(Backoff::new(
        Duration::from_secs(60),
        Duration::from_secs(60),
    )));
    let pool = db.pool().clone();
    eventually(
        Duration::from_secs(30),
        "a few events applied",
        async || applied_count(&pool).await >= 3,
    )
    .await;
    stop(slow.shutdown(), Duration::from_secs(5)).await;
    eventually(
        Duration::from_secs(5),
        "the relay to get the events back",
        async || first.metrics().await.unwrap().unavailable_total > 0,
    )
    .await;
    stop(first.shutdown(), Duration::from_secs(5)).await;
    let applied_before = applied_count(db.pool()).await;
    assert!(applied_before < 20, "stopped mid-batch: {applied_before}");

    let restarted = consumer(&db, &transport, "effects", "effects", &topic, never());
    let second = spawn_relay(relay(&db, &transport));
    eventually(Duration::from_secs(30), "every event applied", async || {
        outbox_stats(&pool).await.unwrap().pending == 0
    })
    .await;
    assert_each_applied_in_order_once(db.pool(), "effects", &aggregates).await;
    shut_down([restarted], second, Duration::from_secs(5)).await;
}

/// librdkafka settings belong on the `KafkaTransport`: a relay or consumer given its
/// transport refuses them instead of ignoring them.
#[tokio::test]
async fn kafka_settings_on_a_given_transport_are_refused() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy(&commerce_testkit::database_url())
        .unwrap();
    let transport: Arc<dyn EventTransport> = Arc::new(InProcessTransport::new());
    let relay = Relay::with_transport(pool.clone(), Arc::clone(&transport))
        .producer_config("linger.ms", "5")
        .build();
    assert!(matches!(
        relay,
        Err(Error::InvalidSetting {
            setting: "producer_config",
            ..
        })
    ));
    let consumer = InboxConsumer::with_transport(pool, transport, "g", "c")
        .topics(["t"])
        .consumer_config("session.timeout.ms", "6000")
        .build(Recorder {
            consumer: "c".into(),
            fail_if: never(),
            delay: Duration::ZERO,
        });
    assert!(matches!(
        consumer,
        Err(Error::InvalidSetting {
            setting: "consumer_config",
            ..
        })
    ));
}

/// A `Recorder` that acts only on the events with an even `n` (`EventHandler::handles`).
struct EvenOnly(Recorder);

#[async_trait]
impl EventHandler for EvenOnly {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        self.0.handle(conn, envelope).await
    }

    fn handles(&self, envelope: &Envelope) -> bool {
        envelope.payload["n"].as_i64().is_some_and(|n| n % 2 == 0)
    }
}

/// Events the handler does not act on are acknowledged in their place without a transaction
/// or an inbox row, one by one and in batches alike: the others are applied once each, in
/// order, and nothing stays pending at the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_handler_does_not_act_on_are_acknowledged_without_an_inbox_row() {
    for max_batch in [1, 16] {
        let db = database().await;
        let transport = in_process();
        let topic = orders_topic(&transport).await;
        let consumer = consumer_builder(&db, &transport, "stock", "stock", &topic)
            .max_batch(max_batch)
            .build(EvenOnly(Recorder {
                consumer: "stock".to_owned(),
                fail_if: never(),
                delay: Duration::ZERO,
            }))
            .unwrap()
            .spawn();
        let aggregates = aggregates("agg", 10);
        commit_all(db.pool(), &topic, &aggregates, 5).await;
        let relay = spawn_relay(relay(&db, &transport));

        let pool = db.pool().clone();
        eventually(Duration::from_secs(30), "no event pending", async || {
            outbox_stats(&pool).await.unwrap().pending == 0
        })
        .await;
        until_applied(db.pool(), "the even events applied", 30).await;
        let order = applied_by(db.pool(), "stock").await;
        for aggregate in &aggregates {
            assert_eq!(
                order[aggregate],
                vec![0, 2, 4],
                "max_batch {max_batch}: {aggregate}"
            );
        }
        let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM commerce_outbox.inbox")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(
            inbox, 30,
            "max_batch {max_batch}: inbox rows only for the even events"
        );
        let stats = consumer.stats();
        assert_eq!(
            (stats.applied, stats.ignored, stats.duplicates),
            (30, 20, 0),
            "max_batch {max_batch}: {stats:?}"
        );
        shut_down([consumer], relay, Duration::from_secs(10)).await;
    }
}

/// Writes a follow-up event (`<type>.seen`) for every event it handles, and records the trace
/// context it ran under.
struct Echo {
    topic: String,
    seen: Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

#[async_trait]
impl EventHandler for Echo {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        if envelope.event_type.ends_with(".seen") {
            return Ok(());
        }
        self.seen
            .lock()
            .unwrap()
            .push(commerce_outbox::trace::current());
        let follow_up = NewEvent::new(
            &self.topic,
            format!("{}.seen", envelope.event_type),
            "echo",
            envelope.aggregate_id.clone(),
            json!({}),
        );
        commerce_outbox::enqueue(conn, &follow_up).await?;
        Ok(())
    }
}

/// The trace context of the work that wrote an event reaches its consumer (the message
/// header and the envelope), the handler runs under it, and the event the handler writes
/// carries it on; an event written outside any trace carries none. One by one and in
/// batches alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_carries_its_trace_context_to_the_consumer_and_on() {
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for max_batch in [1, 16] {
        let db = database().await;
        let transport = in_process();
        let topic = orders_topic(&transport).await;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let consumer = consumer_builder(&db, &transport, "echo", "echo", &topic)
            .max_batch(max_batch)
            .build(Echo {
                topic: topic.clone(),
                seen: seen.clone(),
            })
            .unwrap()
            .spawn();
        let mut tx = db.pool().begin().await.unwrap();
        let traced = commerce_outbox::trace::scope(Some(parent.to_owned()), async {
            (0..5)
                .map(|n| {
                    NewEvent::new(&topic, "order.placed", "order", format!("t-{n}"), json!({}))
                })
                .collect::<Vec<_>>()
        })
        .await;
        enqueue_all(&mut tx, &traced).await.unwrap();
        let untraced = NewEvent::new(&topic, "order.placed", "order", "u-1", json!({}));
        commerce_outbox::enqueue(&mut tx, &untraced).await.unwrap();
        tx.commit().await.unwrap();
        let relay = spawn_relay(relay(&db, &transport));

        let pool = db.pool().clone();
        eventually(
            Duration::from_secs(30),
            "the six follow-ups written and relayed",
            async || {
                let stats = outbox_stats(&pool).await.unwrap();
                let follow_ups: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM commerce_outbox.event WHERE event_type = 'order.placed.seen'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
                follow_ups == 6 && stats.pending == 0
            },
        )
        .await;
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT aggregate_id, traceparent FROM commerce_outbox.event
             WHERE event_type = 'order.placed.seen' ORDER BY aggregate_id",
        )
        .fetch_all(db.pool())
        .await
        .unwrap();
        for (aggregate, traceparent) in &rows {
            let expected = aggregate.starts_with("t-").then_some(parent);
            assert_eq!(
                traceparent.as_deref(),
                expected,
                "max_batch {max_batch}: the follow-up of {aggregate}"
            );
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 6, "max_batch {max_batch}");
        assert_eq!(
            seen.iter().filter(|t| t.as_deref() == Some(parent)).count(),
            5,
            "max_batch {max_batch}: {seen:?}"
        );
        shut_down([consumer], relay, Duration::from_secs(10)).await;
    }
}
