//! Consumer dead letters: an event the handler declares unprocessable is set aside (inbox +
//! `consumer_dead_letter`, one transaction) and the events behind it go on, on both
//! transports (`<scenario>::kafka`, `<scenario>::in_process`); a transient failure is still
//! retried; replay and discard.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use commerce_outbox::dead_letter::{
    count_consumer_dead_letters, discard_consumer_dead_letter, list_consumer_dead_letters,
    replay_consumer_dead_letter,
};
use commerce_outbox::{
    enqueue, ensure_topics, outbox_stats, Backoff, ConsumerHandle, Envelope, Error, EventHandler,
    EventId, HandlerError, InboxConsumer, NewEvent, Relay, RelayHandle, TopicSettings,
    UnprocessableEvent, MIGRATOR,
};
use commerce_testkit::{unique_name, within, TestDb};
use common::{eventually, until_consumers_count, Kind, Transports};
use serde::Deserialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};

on_both_transports!(
    an_unprocessable_event_is_set_aside_and_the_events_behind_it_are_applied,
    a_transient_failure_is_retried_and_applied_once_the_handler_succeeds,
    an_unprocessable_event_whose_dead_letter_cannot_be_written_is_not_acknowledged,
);

/// The inbox name of the consumers here.
const CONSUMER: &str = "tally";

/// What the handler expects in a payload.
#[derive(Deserialize)]
struct Numbered {
    n: i64,
}

/// Records each event it applies as (aggregate, n) in `applied`. A payload without a numeric
/// `n` is unprocessable, or, `lenient` (the fixed handler of a replay), recorded as -1 after
/// `delay`. The first `transient_failures` calls fail with a plain error, as when the
/// database is down.
#[derive(Clone)]
struct Tally {
    lenient: bool,
    delay: Duration,
    transient_failures: Arc<AtomicU32>,
}

impl Tally {
    fn strict() -> Self {
        Self {
            lenient: false,
            delay: Duration::ZERO,
            transient_failures: Arc::new(AtomicU32::new(0)),
        }
    }

    fn failing_first(calls: u32) -> Self {
        Self {
            transient_failures: Arc::new(AtomicU32::new(calls)),
            ..Self::strict()
        }
    }

    /// Slow enough that two replays at once overlap.
    fn lenient() -> Self {
        Self {
            lenient: true,
            delay: Duration::from_millis(200),
            ..Self::strict()
        }
    }
}

#[async_trait]
impl EventHandler for Tally {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        let failing = self
            .transient_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err("the database is down (pretend)".into());
        }
        let n = if self.lenient {
            tokio::time::sleep(self.delay).await;
            envelope.payload["n"].as_i64().unwrap_or(-1)
        } else {
            envelope.decode_payload::<Numbered>()?.n
        };
        sqlx::query("INSERT INTO applied (event_id, aggregate, n) VALUES ($1, $2, $3)")
            .bind(envelope.id.0)
            .bind(&envelope.aggregate_id)
            .bind(n)
            .execute(conn)
            .await?;
        Ok(())
    }
}

async fn database() -> TestDb {
    let db = TestDb::new(&[&MIGRATOR]).await;
    sqlx::query(
        "CREATE TABLE applied (seq bigserial PRIMARY KEY, event_id uuid NOT NULL,
         aggregate text NOT NULL, n bigint NOT NULL)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    db
}

/// A fresh topic with a single partition on Kafka, so every event here queues behind the
/// ones before it, whatever its aggregate (in-process a group member has one queue anyway).
async fn single_partition_topic(transports: &Transports, prefix: &str) -> String {
    match transports.kind {
        Kind::Kafka => {
            let topic = unique_name(prefix);
            let settings = TopicSettings {
                partitions: 1,
                replication_factor: 1,
            };
            ensure_topics(&commerce_testkit::kafka_brokers(), &[&topic], settings)
                .await
                .expect("create topics");
            topic
        }
        Kind::InProcess => transports.new_topic(prefix).await,
    }
}

/// The consumer `tally` (a group of its own) on `topic`, retrying quickly.
fn consumer(db: &TestDb, transports: &Transports, topic: &str, handler: Tally) -> ConsumerHandle {
    InboxConsumer::with_transport(
        db.pool().clone(),
        transports.shared.clone(),
        unique_name("tally"),
        CONSUMER,
    )
    .topics([topic])
    .retry_backoff(Backoff::new(
        Duration::from_millis(20),
        Duration::from_millis(100),
    ))
    .build(handler)
    .unwrap()
    .spawn()
}

/// A relay retrying refused rows quickly and patiently (in-process, a refusal is the
/// consumer handing an event back).
fn relay(db: &TestDb, transports: &Transports) -> RelayHandle {
    Relay::with_transport(db.pool().clone(), transports.for_relay())
        .poll_interval(Duration::from_millis(100))
        .retry_backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(200),
        ))
        .max_attempts(100)
        .build()
        .unwrap()
        .spawn()
}

/// Commits one event of `aggregate` with `payload`.
async fn commit(
    pool: &PgPool,
    topic: &str,
    aggregate: &str,
    payload: serde_json::Value,
) -> EventId {
    let mut tx = pool.begin().await.unwrap();
    let event = NewEvent::new(topic, "test.counted", "test", aggregate, payload);
    let id = enqueue(&mut tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    id
}

/// What was applied: per aggregate, the `n`s in apply order.
async fn applied(pool: &PgPool) -> HashMap<String, Vec<i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT aggregate, n FROM applied ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut order: HashMap<String, Vec<i64>> = HashMap::new();
    for (aggregate, n) in rows {
        order.entry(aggregate).or_default().push(n);
    }
    order
}

async fn applied_count(pool: &PgPool) -> usize {
    applied(pool).await.values().map(Vec::len).sum()
}

async fn in_inbox(pool: &PgPool, id: EventId) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM commerce_outbox.inbox WHERE consumer = $1 AND event_id = $2)",
    )
    .bind(CONSUMER)
    .bind(id.0)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn stop(consumer: ConsumerHandle, relay: RelayHandle) {
    within(Duration::from_secs(10), consumer.shutdown())
        .await
        .unwrap();
    within(Duration::from_secs(10), relay.shutdown())
        .await
        .unwrap();
}

/// An event whose payload the handler cannot read, followed by a good event of the same
/// aggregate and one of another aggregate (behind it in the same partition on Kafka, in the
/// same member's queue in-process): the bad one is set aside at once (no retry), recorded in
/// the inbox and the consumer dead letters with its error, and both others are applied.
/// Before consumer dead letters, Kafka retried the bad one forever and in-process the relay
/// dead-lettered it and held its aggregate, so the good event of that aggregate never came.
async fn an_unprocessable_event_is_set_aside_and_the_events_behind_it_are_applied(kind: Kind) {
    common::init_logs();
    let db = database().await;
    let transports = Transports::new(kind);
    let topic = single_partition_topic(&transports, "tally-poison").await;
    let consumer = consumer(&db, &transports, &topic, Tally::strict());
    let relay = relay(&db, &transports);
    let bad = commit(db.pool(), &topic, "poisoned", json!({ "n": "zero" })).await;
    commit(db.pool(), &topic, "poisoned", json!({ "n": 1 })).await;
    commit(db.pool(), &topic, "healthy", json!({ "n": 0 })).await;

    let pool = db.pool().clone();
    eventually(
        Duration::from_secs(30),
        "the events behind the bad one",
        || {
            let pool = pool.clone();
            async move { applied_count(&pool).await == 2 }
        },
    )
    .await;
    let order = applied(db.pool()).await;
    assert_eq!(order["poisoned"], vec![1]);
    assert_eq!(order["healthy"], vec![0]);

    let letters = list_consumer_dead_letters(db.pool(), CONSUMER, 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.consumer, CONSUMER);
    assert_eq!(letter.topic, topic);
    assert_eq!(letter.envelope.id, bad);
    assert_eq!(letter.envelope.event_type, "test.counted");
    assert_eq!(
        (
            letter.envelope.aggregate_type.as_str(),
            letter.envelope.aggregate_id.as_str(),
            letter.envelope.aggregate_seq
        ),
        ("test", "poisoned", 1)
    );
    assert_eq!(letter.envelope.payload, json!({ "n": "zero" }));
    assert!(
        letter
            .error
            .contains(&format!("the payload of test.counted {bad}"))
            && letter.error.contains("invalid type"),
        "{}",
        letter.error
    );
    assert!(in_inbox(db.pool(), bad).await, "a redelivery is skipped");

    until_consumers_count(&[&consumer], 2).await;
    let stats = consumer.stats();
    assert_eq!(
        (
            stats.applied,
            stats.dead_lettered,
            stats.failures,
            stats.refused
        ),
        (2, 1, 0, 0),
        "set aside at once, not retried: {stats:?}"
    );
    eventually(Duration::from_secs(10), "every row published", || {
        let pool = pool.clone();
        async move { outbox_stats(&pool).await.unwrap().pending == 0 }
    })
    .await;
    let outbox = outbox_stats(db.pool()).await.unwrap();
    assert_eq!((outbox.dead_letters, outbox.consumer_dead_letters), (0, 1));
    assert_eq!(
        count_consumer_dead_letters(db.pool()).await.unwrap(),
        BTreeMap::from([(CONSUMER.to_owned(), 1)])
    );
    assert_eq!(relay.metrics().await.unwrap().refused_total, 0);
    stop(consumer, relay).await;
}

/// A plain error is transient: the event is retried (the events behind it wait) and applied
/// once the handler succeeds; nothing is dead-lettered.
async fn a_transient_failure_is_retried_and_applied_once_the_handler_succeeds(kind: Kind) {
    common::init_logs();
    let db = database().await;
    let transports = Transports::new(kind);
    let topic = single_partition_topic(&transports, "tally-transient").await;
    let consumer = consumer(&db, &transports, &topic, Tally::failing_first(2));
    let relay = relay(&db, &transports);
    commit(db.pool(), &topic, "order", json!({ "n": 0 })).await;
    commit(db.pool(), &topic, "order", json!({ "n": 1 })).await;

    let pool = db.pool().clone();
    eventually(Duration::from_secs(30), "both events applied", || {
        let pool = pool.clone();
        async move { applied_count(&pool).await == 2 }
    })
    .await;
    assert_eq!(applied(db.pool()).await["order"], vec![0, 1], "in order");
    until_consumers_count(&[&consumer], 2).await;
    let stats = consumer.stats();
    assert_eq!(
        (stats.applied, stats.failures, stats.dead_lettered),
        (2, 2, 0),
        "{stats:?}"
    );
    assert!(list_consumer_dead_letters(db.pool(), CONSUMER, 10)
        .await
        .unwrap()
        .is_empty());
    stop(consumer, relay).await;
}

/// When the dead letter cannot be written (here its table is gone), the unprocessable event
/// is neither applied nor recorded, so it is not acknowledged: it is retried as a transient
/// failure and the events of its aggregate wait. Once the write works again it is set aside
/// and they go on.
async fn an_unprocessable_event_whose_dead_letter_cannot_be_written_is_not_acknowledged(
    kind: Kind,
) {
    common::init_logs();
    let db = database().await;
    let transports = Transports::new(kind);
    let topic = single_partition_topic(&transports, "tally-unwritable").await;
    let hide =
        "ALTER TABLE commerce_outbox.consumer_dead_letter RENAME TO consumer_dead_letter_gone";
    let restore =
        "ALTER TABLE commerce_outbox.consumer_dead_letter_gone RENAME TO consumer_dead_letter";
    sqlx::query(hide).execute(db.pool()).await.unwrap();
    let consumer = consumer(&db, &transports, &topic, Tally::strict());
    let relay = relay(&db, &transports);
    let bad = commit(db.pool(), &topic, "poisoned", json!({ "n": "zero" })).await;
    commit(db.pool(), &topic, "poisoned", json!({ "n": 1 })).await;

    eventually(Duration::from_secs(30), "failed dead-letter writes", || {
        let failures = consumer.stats().failures;
        async move { failures >= 3 }
    })
    .await;
    assert_eq!(applied_count(db.pool()).await, 0, "the next event waits");
    assert!(!in_inbox(db.pool(), bad).await, "not recorded");
    assert_eq!(consumer.stats().dead_lettered, 0);

    sqlx::query(restore).execute(db.pool()).await.unwrap();
    let pool = db.pool().clone();
    eventually(Duration::from_secs(30), "the next event applied", || {
        let pool = pool.clone();
        async move { applied_count(&pool).await == 1 }
    })
    .await;
    assert_eq!(applied(db.pool()).await["poisoned"], vec![1]);
    let letters = list_consumer_dead_letters(db.pool(), CONSUMER, 10)
        .await
        .unwrap();
    assert_eq!(
        letters.iter().map(|l| l.envelope.id).collect::<Vec<_>>(),
        vec![bad]
    );
    assert!(in_inbox(db.pool(), bad).await);
    assert_eq!(consumer.stats().dead_lettered, 1);
    stop(consumer, relay).await;
}

/// Replay applies a dead letter through a (fixed) handler and removes it; a handler that
/// still cannot apply it leaves it in place; discard removes it and the inbox keeps skipping
/// the event when it is delivered again. In-process: the API is the database's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_dead_letters_are_listed_replayed_through_the_handler_and_discarded() {
    common::init_logs();
    let db = database().await;
    let transports = Transports::new(Kind::InProcess);
    let topic = transports.new_topic("tally-replay").await;
    let consumer = consumer(&db, &transports, &topic, Tally::strict());
    let relay = relay(&db, &transports);
    let first = commit(db.pool(), &topic, "x", json!({ "n": "one" })).await;
    let second = commit(db.pool(), &topic, "y", json!({ "n": "two" })).await;
    commit(db.pool(), &topic, "z", json!({ "n": 3 })).await;
    let pool = db.pool().clone();
    eventually(
        Duration::from_secs(30),
        "two set aside, one applied",
        || {
            let pool = pool.clone();
            let dead = consumer.stats().dead_lettered;
            async move { dead == 2 && applied_count(&pool).await == 1 }
        },
    )
    .await;

    let ids = |letters: Vec<commerce_outbox::dead_letter::ConsumerDeadLetter>| {
        letters.iter().map(|l| l.envelope.id).collect::<Vec<_>>()
    };
    let list = |limit| list_consumer_dead_letters(db.pool(), CONSUMER, limit);
    assert_eq!(
        ids(list(10).await.unwrap()),
        vec![first, second],
        "oldest first"
    );
    assert_eq!(ids(list(1).await.unwrap()), vec![first]);
    assert!(list_consumer_dead_letters(db.pool(), "someone-else", 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        outbox_stats(db.pool()).await.unwrap().consumer_dead_letters,
        2
    );

    let still_broken =
        replay_consumer_dead_letter(db.pool(), CONSUMER, first, &Tally::strict()).await;
    let Err(Error::ReplayFailed {
        source, event_id, ..
    }) = still_broken
    else {
        panic!("a handler that still cannot apply it fails the replay: {still_broken:?}");
    };
    assert_eq!(event_id, first);
    assert!(
        UnprocessableEvent::find(source.as_ref()).is_some(),
        "{source}"
    );
    assert_eq!(ids(list(10).await.unwrap()), vec![first, second], "kept");

    // Two operators at once: the second waits for the first's lock, then finds nothing.
    let fixed = Tally::lenient();
    let (one, two) = tokio::join!(
        replay_consumer_dead_letter(db.pool(), CONSUMER, first, &fixed),
        replay_consumer_dead_letter(db.pool(), CONSUMER, first, &fixed),
    );
    let not_found = |r: &Result<(), Error>| matches!(r, Err(Error::ConsumerDeadLetterNotFound { event_id, .. }) if *event_id == first);
    assert!(
        (one.is_ok() && not_found(&two)) || (not_found(&one) && two.is_ok()),
        "{one:?} {two:?}"
    );
    assert_eq!(
        applied(db.pool()).await["x"],
        vec![-1],
        "applied by the replay, once"
    );
    assert_eq!(ids(list(10).await.unwrap()), vec![second]);
    assert!(in_inbox(db.pool(), first).await);
    assert!(matches!(
        replay_consumer_dead_letter(db.pool(), CONSUMER, first, &Tally::lenient()).await,
        Err(Error::ConsumerDeadLetterNotFound { event_id, .. }) if event_id == first
    ));

    discard_consumer_dead_letter(db.pool(), CONSUMER, second)
        .await
        .unwrap();
    assert!(list(10).await.unwrap().is_empty());
    assert!(matches!(
        discard_consumer_dead_letter(db.pool(), CONSUMER, second).await,
        Err(Error::ConsumerDeadLetterNotFound { .. })
    ));
    assert!(count_consumer_dead_letters(db.pool())
        .await
        .unwrap()
        .is_empty());

    // Delivered again (the row republished): the inbox skips it, nothing is set aside.
    sqlx::query(
        "UPDATE commerce_outbox.event SET status = 'pending', published_at = NULL WHERE id = $1",
    )
    .bind(second.0)
    .execute(db.pool())
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "the redelivery absorbed", || {
        let duplicates = consumer.stats().duplicates;
        async move { duplicates == 1 }
    })
    .await;
    assert!(list(10).await.unwrap().is_empty());
    assert_eq!(consumer.stats().dead_lettered, 2);
    assert_eq!(applied_count(db.pool()).await, 2);
    stop(consumer, relay).await;
}
