//! Shared test support: the transports, topics, writing events, reading them back.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use commerce_outbox::{
    decode_envelope, enqueue, ensure_topics, ConsumerHandle, Delivery, DeliveryContent, Envelope,
    EventId, EventTransport, InProcessTransport, KafkaTransport, KafkaTransportBuilder, NewEvent,
    RelayHandle, RelayMetrics, TopicSettings,
};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const PARTITIONS: i32 = 4;

/// Runs each scenario `async fn name(kind: Kind)` once per transport: `name::kafka` and
/// `name::in_process` (filter with `kafka` or `in_process` to run one side).
#[macro_export]
macro_rules! on_both_transports {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kafka() {
                super::$scenario($crate::common::Kind::Kafka).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_process() {
                super::$scenario($crate::common::Kind::InProcess).await;
            }
        }
    )*};
}

/// Which transport a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `KafkaTransport` on the shared broker (`KAFKA_BROKERS`).
    Kafka,
    /// `InProcessTransport`.
    InProcess,
}

/// The transports of one scenario: the one consumers and probes subscribe through, and a
/// way to give each relay its own.
#[derive(Debug, Clone)]
pub struct Transports {
    pub kind: Kind,
    /// Consumers and probes subscribe here; in-process, relays publish here too.
    pub shared: Arc<dyn EventTransport>,
}

impl Transports {
    pub fn new(kind: Kind) -> Self {
        let shared: Arc<dyn EventTransport> = match kind {
            Kind::Kafka => Arc::new(kafka().build().expect("kafka transport")),
            Kind::InProcess => Arc::new(InProcessTransport::new()),
        };
        Self { kind, shared }
    }

    /// An in-process scenario with its own transport settings.
    pub fn in_process(transport: InProcessTransport) -> Self {
        Self {
            kind: Kind::InProcess,
            shared: Arc::new(transport),
        }
    }

    /// The transport of one more relay: on Kafka a producer of its own (as another process
    /// would have), in-process the shared one (it is one process).
    pub fn for_relay(&self) -> Arc<dyn EventTransport> {
        self.for_relay_with(|kafka| kafka)
    }

    /// [`Transports::for_relay`] with Kafka settings (ignored in-process).
    pub fn for_relay_with(
        &self,
        configure: impl FnOnce(KafkaTransportBuilder) -> KafkaTransportBuilder,
    ) -> Arc<dyn EventTransport> {
        match self.kind {
            Kind::Kafka => Arc::new(configure(kafka()).build().expect("kafka transport")),
            Kind::InProcess => Arc::clone(&self.shared),
        }
    }

    /// A fresh topic (and its `.dlq`).
    pub async fn new_topic(&self, prefix: &str) -> String {
        let topic = commerce_testkit::unique_name(prefix);
        self.shared
            .ensure_topics(&[&topic])
            .await
            .expect("create topics");
        topic
    }
}

/// A Kafka transport builder on the shared broker, topics of [`PARTITIONS`].
pub fn kafka() -> KafkaTransportBuilder {
    KafkaTransport::builder(commerce_testkit::kafka_brokers()).topic_settings(TopicSettings {
        partitions: PARTITIONS,
        replication_factor: 1,
    })
}

/// Whether a probe refuses a delivery it receives (where the transport lets it).
pub type RefuseIf = Arc<dyn Fn(&Envelope) -> bool + Send + Sync>;

/// A consumer group of its own on some topics, through the transport under test: records
/// every delivery it acknowledges, in arrival order (duplicates included).
pub struct Probe {
    received: Arc<Mutex<Vec<Delivery>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Probe {
    /// Subscribes now (build it before the relay: in-process, later subscribers miss what
    /// was published before).
    pub fn start(transport: &Arc<dyn EventTransport>, topics: &[&str]) -> Self {
        Self::refusing(transport, topics, Arc::new(|_| false))
    }

    /// A probe that refuses the events `refuse_if` picks (in-process: they go back to the
    /// relay as failed attempts; Kafka cannot refuse, so it takes them).
    pub fn refusing(
        transport: &Arc<dyn EventTransport>,
        topics: &[&str],
        refuse_if: RefuseIf,
    ) -> Self {
        let mut subscription = transport
            .subscribe(&commerce_testkit::unique_name("probe"), topics)
            .expect("subscribe");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let received = Arc::clone(&received);
            let stop = stop.clone();
            async move {
                loop {
                    let delivery = tokio::select! {
                        () = stop.cancelled() => break,
                        delivery = subscription.next() => delivery,
                    };
                    let Ok(delivery) = delivery else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let refuse = subscription.can_refuse()
                        && delivery
                            .envelope()
                            .is_some_and(|envelope| refuse_if(envelope));
                    if refuse {
                        subscription
                            .refuse(&delivery, "the probe refuses it")
                            .await
                            .expect("refuse");
                    } else {
                        subscription.acknowledge(&delivery).await.expect("ack");
                        received
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(delivery);
                    }
                }
                subscription.close().await;
            }
        });
        Self {
            received,
            stop,
            task,
        }
    }

    /// What arrived so far.
    pub fn received(&self) -> Vec<Delivery> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The events that arrived so far.
    pub fn envelopes(&self) -> Vec<Envelope> {
        self.received()
            .iter()
            .filter_map(|d| d.envelope().cloned())
            .collect()
    }

    /// Waits until every id in `ids` arrived; panics after `timeout`.
    pub async fn wait_ids(&self, ids: &[EventId], timeout: Duration) {
        eventually(timeout, &format!("{} events to arrive", ids.len()), || {
            let seen: std::collections::HashSet<EventId> =
                self.envelopes().iter().map(|e| e.id).collect();
            std::future::ready(ids.iter().all(|id| seen.contains(id)))
        })
        .await;
    }

    /// Waits until `count` deliveries arrived; panics after `timeout`.
    pub async fn wait_count(&self, count: usize, timeout: Duration) {
        eventually(timeout, &format!("{count} deliveries"), || {
            std::future::ready(self.received().len() >= count)
        })
        .await;
    }

    /// Leaves the group.
    pub async fn stop(self) {
        self.stop.cancel();
        commerce_testkit::within(Duration::from_secs(10), self.task)
            .await
            .expect("probe task");
    }
}

/// The dead letters among `deliveries`.
pub fn dead_letters(deliveries: &[Delivery]) -> Vec<commerce_outbox::DeadLetterRecord> {
    deliveries
        .iter()
        .filter_map(|d| match &d.content {
            DeliveryContent::DeadLetter(letter) => Some((**letter).clone()),
            DeliveryContent::Event(_) | DeliveryContent::Unreadable(_) => None,
        })
        .collect()
}

/// The `n` payload values per aggregate of `envelopes`, in arrival order.
pub fn order_of(envelopes: &[Envelope]) -> HashMap<String, Vec<i64>> {
    let mut order: HashMap<String, Vec<i64>> = HashMap::new();
    for envelope in envelopes {
        order
            .entry(envelope.aggregate_id.clone())
            .or_default()
            .push(envelope.payload["n"].as_i64().expect("n"));
    }
    order
}

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
pub async fn eventually(timeout: Duration, what: &str, condition: impl AsyncFnMut() -> bool) {
    assert!(
        commerce_testkit::eventually(timeout, condition).await,
        "timed out waiting for {what}"
    );
}

/// Waits (up to 10 s) until `consumers` have counted `applied` events applied between them.
/// A consumer counts an event after its transaction commits, a moment after a test can see
/// the event's rows: a test that saw them waits for the count before asserting on it.
pub async fn until_consumers_count(consumers: &[&ConsumerHandle], applied: u64) {
    eventually(
        Duration::from_secs(10),
        &format!("the consumers to count {applied} applied"),
        || async move { consumers.iter().map(|c| c.stats().applied).sum::<u64>() == applied },
    )
    .await;
}

/// Waits (up to 10 s) until `counter` of `relays`' metrics adds up to `expected` between
/// them. A relay counts a batch's events after its commit, a moment after a consumer has them
/// or their rows read published or dead.
pub async fn until_relays_count(
    relays: &[&RelayHandle],
    counter: fn(&RelayMetrics) -> u64,
    expected: u64,
) {
    eventually(
        Duration::from_secs(10),
        &format!("the relays to count {expected}"),
        || async move {
            let mut total = 0;
            for relay in relays {
                total += counter(&relay.metrics().await.unwrap());
            }
            total == expected
        },
    )
    .await;
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
