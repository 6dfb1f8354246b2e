//! [`KafkaTransport`]: the outbox on a Kafka (protocol) broker.
//!
//! Publishing: an idempotent `acks=all` producer (key = aggregate id, so one aggregate's
//! events share a partition and keep their order). Before a topic's first publish, and after
//! any failure of one of its messages, the topic is looked up (`topics`), so a missing topic
//! is refused at once instead of after a delivery timeout; a message without an answer is
//! judged by `fault` (the event's fault: an attempt; the broker's: an outage). The producer
//! is replaced when librdkafka declares it fatally failed, and after repeated outages
//! (`producer`). Consuming: a `StreamConsumer` per subscription, offsets committed on
//! acknowledgement (`consumer`).

mod admin;
mod consumer;
mod fault;
mod producer;
mod topics;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;

pub use admin::{ensure_topics, TopicSettings};
pub use consumer::decode_envelope;
pub(crate) use consumer::subscribe;

use self::fault::{attribute, missing_topic};
use self::producer::{produce_batch, produce_dead_letter, Publisher, Sent};
use self::topics::{by_topic, look_up, TopicMetadata, TopicStatus};
use crate::error::{Error, Result};
use crate::transport::{
    dlq_topic, DeadLetter, EventTransport, OutboundMessage, PublishOutcome, Subscription,
};

/// Consecutive publishes in which the broker was unreachable and nothing was published,
/// after which the producer is replaced (see `Publisher::renew`).
const RENEW_PRODUCER_AFTER: u32 = 3;

/// Configures a [`KafkaTransport`].
#[derive(Debug, Clone)]
#[must_use]
pub struct KafkaTransportBuilder {
    brokers: String,
    producer_overrides: Vec<(String, String)>,
    consumer_overrides: Vec<(String, String)>,
    topic_settings: TopicSettings,
}

impl KafkaTransportBuilder {
    /// Overrides a librdkafka producer setting (e.g. `message.timeout.ms`,
    /// `message.max.bytes`, `linger.ms`). `enable.idempotence=true` and `acks=all` are the
    /// defaults; overriding them gives up the ordering and durability this crate promises.
    pub fn producer_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer_overrides.push((key.into(), value.into()));
        self
    }

    /// Overrides a librdkafka consumer setting of every subscription (e.g.
    /// `auto.offset.reset`, `session.timeout.ms`). Auto-commit stays off: offsets are
    /// committed on acknowledgement.
    pub fn consumer_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.consumer_overrides.push((key.into(), value.into()));
        self
    }

    /// Partitions and replication of the topics [`EventTransport::ensure_topics`] creates
    /// (default [`TopicSettings::default`]: 8 partitions, replication factor 1).
    pub fn topic_settings(mut self, settings: TopicSettings) -> Self {
        self.topic_settings = settings;
        self
    }

    /// Creates the producer (consumers are created per subscription).
    ///
    /// # Errors
    /// [`Error::Kafka`] when librdkafka rejects the producer configuration.
    pub fn build(self) -> Result<KafkaTransport> {
        let publisher = Publisher::new(admin::producer_config(
            &self.brokers,
            &self.producer_overrides,
        ))?;
        Ok(KafkaTransport {
            publisher,
            metadata: TopicMetadata::default(),
            outages: AtomicU32::new(0),
            settings: self,
        })
    }
}

/// The Kafka implementation of [`EventTransport`].
///
/// ```no_run
/// use std::sync::Arc;
/// use commerce_outbox::{EventTransport, KafkaTransport, Relay};
///
/// # async fn run(pool: sqlx::PgPool) -> commerce_outbox::Result<()> {
/// let kafka: Arc<dyn EventTransport> = Arc::new(KafkaTransport::builder("127.0.0.1:9092").build()?);
/// kafka.ensure_topics(&["orders"]).await?;
/// let relay = Relay::with_transport(pool, kafka).build()?.spawn();
/// # relay.shutdown().await }
/// ```
pub struct KafkaTransport {
    settings: KafkaTransportBuilder,
    publisher: Publisher,
    metadata: TopicMetadata,
    /// Consecutive publishes in which nothing got through because the broker was unreachable.
    outages: AtomicU32,
}

impl std::fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("brokers", &self.settings.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaTransport {
    /// A builder for a transport on `brokers` (`host:port[,host:port]`).
    pub fn builder(brokers: impl Into<String>) -> KafkaTransportBuilder {
        KafkaTransportBuilder {
            brokers: brokers.into(),
            producer_overrides: Vec::new(),
            consumer_overrides: Vec::new(),
            topic_settings: TopicSettings::default(),
        }
    }

    /// Looks up the topics of `messages` not seen ready on the broker yet. A topic that does
    /// not exist refuses its messages at once (an attempt each); a lookup the broker did not
    /// answer marks them unavailable without waiting for a delivery timeout.
    async fn refuse_unpublishable_topics(
        &self,
        messages: &[OutboundMessage],
    ) -> HashMap<String, PublishOutcome> {
        let unknown = self
            .metadata
            .unknown(messages.iter().map(|m| m.topic.as_str()));
        self.look_up_and_remember(unknown)
            .await
            .into_iter()
            .filter_map(|(topic, status)| match status {
                TopicStatus::Missing => {
                    let refusal = PublishOutcome::Refused(missing_topic(&topic));
                    Some((topic, refusal))
                }
                TopicStatus::Unreachable(error) => Some((
                    topic,
                    PublishOutcome::Unavailable(format!(
                        "broker did not answer a metadata request: {error}"
                    )),
                )),
                // A degraded topic may still take messages (e.g. one partition without leader).
                TopicStatus::Ready | TopicStatus::Degraded(_) => None,
            })
            .collect()
    }

    /// Settles the messages the broker gave no answer about: their topics are looked up
    /// now, and `fault::attribute` decides whether each is an attempt or an outage.
    async fn settle_undelivered(
        &self,
        messages: &[OutboundMessage],
        verdicts: Vec<Sent>,
    ) -> Vec<PublishOutcome> {
        let mut undelivered: Vec<String> = messages
            .iter()
            .zip(&verdicts)
            .filter(|(_, verdict)| matches!(verdict, Sent::Undelivered(_)))
            .map(|(message, _)| message.topic.clone())
            .collect();
        undelivered.sort_unstable();
        undelivered.dedup();
        let statuses = by_topic(self.look_up_and_remember(undelivered).await);
        attribute(messages, verdicts, &statuses)
    }

    /// Looks `topics` up and remembers what the broker said.
    async fn look_up_and_remember(&self, topics: Vec<String>) -> Vec<(String, TopicStatus)> {
        let statuses = look_up(self.publisher.producer(), topics).await;
        for (topic, status) in &statuses {
            tracing::debug!(%topic, ?status, "looked up kafka topic");
            self.metadata.looked_up(topic, status);
        }
        statuses
    }

    /// Replaces the producer when librdkafka declared it fatally failed, or after
    /// [`RENEW_PRODUCER_AFTER`] publishes in a row in which nothing got through.
    fn recover(&self, outcomes: &[PublishOutcome]) {
        let unavailable = outcomes
            .iter()
            .any(|o| matches!(o, PublishOutcome::Unavailable(_)));
        let published = outcomes.contains(&PublishOutcome::Published);
        if published {
            self.outages.store(0, Ordering::Relaxed);
        }
        if !unavailable {
            return;
        }
        if let Err(error) = self.publisher.recover_if_fatal() {
            tracing::error!(%error, "cannot recreate the fatally failed kafka producer");
        }
        if published {
            return;
        }
        let outages = self.outages.fetch_add(1, Ordering::Relaxed) + 1;
        if outages % RENEW_PRODUCER_AFTER == 0 {
            tracing::warn!(
                consecutive_outages = outages,
                "recreating the kafka producer after repeated failures"
            );
            if let Err(error) = self.publisher.renew() {
                tracing::error!(%error, "cannot recreate the kafka producer");
            }
        }
    }
}

#[async_trait]
impl EventTransport for KafkaTransport {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    async fn ensure_topics(&self, topics: &[&str]) -> Result<()> {
        ensure_topics(&self.settings.brokers, topics, self.settings.topic_settings).await
    }

    async fn publish(&self, messages: &[OutboundMessage]) -> Vec<PublishOutcome> {
        let producer = self.publisher.producer();
        let refused = self.refuse_unpublishable_topics(messages).await;
        let verdicts = produce_batch(&producer, messages, &refused).await;
        let outcomes = self.settle_undelivered(messages, verdicts).await;
        self.metadata.learn(messages, &outcomes);
        self.recover(&outcomes);
        outcomes
    }

    async fn publish_dead_letter(&self, letter: DeadLetter<'_>) -> Result<()> {
        let topic = dlq_topic(&letter.message.topic);
        // A missing `.dlq` topic is known at once instead of after a delivery timeout.
        for (_, status) in self
            .look_up_and_remember(self.metadata.unknown([topic.as_str()]))
            .await
        {
            if status == TopicStatus::Missing {
                return Err(Error::UnknownTopic { topic });
            }
        }
        produce_dead_letter(&self.publisher.producer(), letter)
            .await
            .map_err(|error| Error::Publish {
                topic,
                reason: error.to_string(),
            })
    }

    fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Subscription>> {
        Ok(Box::new(subscribe(
            &self.settings.brokers,
            &self.settings.consumer_overrides,
            group,
            topics,
        )?))
    }

    async fn flush(&self, timeout: Duration) -> Result<()> {
        producer::flush(self.publisher.producer(), timeout).await
    }
}
