//! Shared test support: topics, writing events, reading them back, a private broker.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use commerce_outbox::{
    decode_envelope, enqueue, ensure_topics, Envelope, EventId, NewEvent, TopicSettings,
};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use sqlx::PgPool;

pub const PARTITIONS: i32 = 4;

/// A fresh topic (and its `.dlq`) on `brokers`.
pub async fn new_topic(brokers: &str, prefix: &str) -> String {
    let topic = commerce_testkit::unique_name(prefix);
    ensure_topics(
        brokers,
        &[&topic],
        TopicSettings {
            partitions: PARTITIONS,
            replication_factor: 1,
        },
    )
    .await
    .expect("create topics");
    topic
}

/// Commits one event `{ "n": n }` for `aggregate` in its own transaction.
pub async fn commit_event(pool: &PgPool, topic: &str, aggregate: &str, n: i64) -> EventId {
    let mut tx = pool.begin().await.expect("begin");
    let event = NewEvent::new(topic, "test.happened", "test", aggregate, json!({ "n": n }));
    let id = enqueue(&mut tx, &event).await.expect("enqueue");
    tx.commit().await.expect("commit");
    id
}

/// A message read back from Kafka.
#[derive(Debug, Clone)]
pub struct Received {
    pub envelope: Envelope,
    /// The whole message value (for `.dlq` messages, the wrapper).
    pub value: serde_json::Value,
    pub key: String,
    pub partition: i32,
    pub offset: i64,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning (all partitions, no group offsets).
pub struct Reader {
    consumer: StreamConsumer,
    pub received: Vec<Received>,
}

impl Reader {
    pub fn new(brokers: &str, topic: &str) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", commerce_testkit::unique_name("reader"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "50")
            .set("reconnect.backoff.max.ms", "500")
            .create()
            .expect("consumer");
        let mut assignment = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("assignment");
        }
        consumer.assign(&assignment).expect("assign");
        Self {
            consumer,
            received: Vec::new(),
        }
    }

    /// Reads until `done(&received)` or `timeout`; panics on timeout.
    pub async fn read_until(&mut self, timeout: Duration, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.received) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {timeout:?} with {} messages",
                self.received.len()
            );
            let Ok(message) =
                tokio::time::timeout(left.min(Duration::from_millis(500)), self.consumer.recv())
                    .await
            else {
                continue;
            };
            let Ok(message) = message else { continue };
            // A `.dlq` message wraps the envelope: {"envelope": .., "error": .., ..}.
            let value: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap_or_default()).expect("JSON value");
            let envelope = match value.get("envelope") {
                Some(inner) => serde_json::from_value(inner.clone()).expect("wrapped envelope"),
                None => decode_envelope(&message).expect("envelope"),
            };
            let mut headers = HashMap::new();
            if let Some(h) = message.headers() {
                for header in h.iter() {
                    let value = header
                        .value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default();
                    headers.insert(header.key.to_owned(), value);
                }
            }
            self.received.push(Received {
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default(),
                partition: message.partition(),
                offset: message.offset(),
                envelope,
                value,
                headers,
            });
        }
    }

    /// Reads until `count` messages arrived.
    pub async fn read_count(&mut self, count: usize, timeout: Duration) {
        self.read_until(timeout, |r| r.len() >= count).await;
    }

    /// Reads until every id in `ids` was seen.
    pub async fn read_ids(&mut self, ids: &[EventId], timeout: Duration) {
        self.read_until(timeout, |r| {
            let seen: std::collections::HashSet<EventId> =
                r.iter().map(|m| m.envelope.id).collect();
            ids.iter().all(|id| seen.contains(id))
        })
        .await;
    }
}

/// The `n` payload values per aggregate, in arrival order.
pub fn arrival_order(received: &[Received]) -> HashMap<String, Vec<i64>> {
    let mut order: HashMap<String, Vec<i64>> = HashMap::new();
    for message in received {
        order
            .entry(message.envelope.aggregate_id.clone())
            .or_default()
            .push(message.envelope.payload["n"].as_i64().expect("n"));
    }
    order
}

/// Polls `condition` until true or `timeout` (panics with `what`).
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        commerce_testkit::eventually(timeout, condition).await,
        "timed out waiting for {what}"
    );
}

/// Shows the crate's log lines in a failing test's output (`RUST_LOG` overrides the level).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "commerce_outbox=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Records each applied event in the test's `effects` table; a duplicate application would
/// show as a second row.
pub struct RecordEffect;

#[async_trait::async_trait]
impl commerce_outbox::EventHandler for RecordEffect {
    async fn handle(
        &self,
        conn: &mut sqlx::PgConnection,
        envelope: &Envelope,
    ) -> Result<(), commerce_outbox::HandlerError> {
        sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind(envelope.id.0)
            .execute(conn)
            .await?;
        Ok(())
    }
}
