//! A consumer-group member on Kafka: librdkafka's `StreamConsumer`, offsets committed only
//! when the caller acknowledges (after its inbox transaction committed).

use std::sync::Arc;

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::event::Envelope;
use crate::transport::{
    DeadLetterRecord, Delivery, DeliveryContent, DeliveryPosition, Subscription,
};

/// Joins consumer group `group` on `topics` at `brokers`, with librdkafka consumer settings
/// `overrides` (auto-commit stays off whatever they say).
///
/// # Errors
/// [`Error::Kafka`] when librdkafka rejects the configuration or the subscription.
pub(crate) fn subscribe(
    brokers: &str,
    overrides: &[(String, String)],
    group: &str,
    topics: &[&str],
) -> Result<KafkaSubscription> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    for (key, value) in overrides {
        config.set(key, value);
    }
    // After the overrides: committing only after the database commit is the point.
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    let consumer: StreamConsumer = config.create()?;
    consumer.subscribe(topics)?;
    Ok(KafkaSubscription {
        consumer,
        group: group.to_owned(),
    })
}

/// A Kafka consumer-group member (see [`subscribe`]).
pub(crate) struct KafkaSubscription {
    consumer: StreamConsumer,
    group: String,
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Result<Delivery> {
        let message = self.consumer.recv().await?.detach();
        Ok(delivery_of(&message))
    }

    async fn acknowledge(&mut self, delivery: &Delivery) -> Result<()> {
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(
            &delivery.topic,
            delivery.position.partition,
            Offset::Offset(delivery.position.offset + 1),
        )?;
        // Async: a lost offset commit only means a redelivery, which the inbox absorbs.
        self.consumer.commit(&offsets, CommitMode::Async)?;
        Ok(())
    }

    async fn close(&mut self) {
        self.consumer.unsubscribe();
    }
}

/// The delivery of a Kafka message: an envelope, a dead letter (the `.dlq` wrapper), or
/// unreadable.
fn delivery_of(message: &OwnedMessage) -> Delivery {
    let content = match message.payload() {
        None => DeliveryContent::Unreadable("no value".into()),
        Some(body) => match serde_json::from_slice::<Envelope>(body) {
            Ok(envelope) => DeliveryContent::Event(Arc::new(envelope)),
            Err(not_envelope) => match serde_json::from_slice::<DeadLetterRecord>(body) {
                Ok(letter) => DeliveryContent::DeadLetter(Arc::new(letter)),
                Err(_) => DeliveryContent::Unreadable(not_envelope.to_string()),
            },
        },
    };
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        header
                            .value
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Delivery {
        topic: message.topic().to_owned(),
        key: message
            .key()
            .map(|key| String::from_utf8_lossy(key).into_owned()),
        headers,
        position: DeliveryPosition {
            partition: message.partition(),
            offset: message.offset(),
        },
        content,
    }
}

/// Decodes an outbox message's value into its [`Envelope`].
///
/// # Errors
/// [`Error::NotAnEnvelope`] when the message has no value or it is not an envelope.
pub fn decode_envelope<M: Message>(message: &M) -> Result<Envelope> {
    let not_envelope = |reason: String| Error::NotAnEnvelope {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        reason,
    };
    let body = message
        .payload()
        .ok_or_else(|| not_envelope("no value".into()))?;
    serde_json::from_slice(body).map_err(|e| not_envelope(e.to_string()))
}
