//! Producing messages with the idempotent producer, and replacing a wedged producer.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use serde::Serialize;

use super::fault::classify;
use crate::error::Result;
use crate::event::Envelope;
use crate::transport::{dlq_topic, DeadLetter, OutboundMessage, PublishOutcome, HEADER_ERROR};

/// What the producer said about one message, before `fault::attribute` settles the
/// undelivered ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Sent {
    /// A final verdict.
    Settled(PublishOutcome),
    /// No answer about this message (delivery timed out, no partition leader): the broker
    /// may be down, or only this message's topic or partition. `fault::attribute` turns it
    /// into a refusal or an outage.
    Undelivered(String),
}

impl Sent {
    pub(super) fn published() -> Self {
        Self::Settled(PublishOutcome::Published)
    }
}

/// A dead letter's value on the wire: the [`crate::DeadLetterRecord`] fields, borrowed.
#[derive(Serialize)]
struct DeadLetterValue<'a> {
    envelope: &'a Envelope,
    error: &'a str,
    attempts: i32,
    payload_omitted: bool,
}

fn headers(message: &OutboundMessage, error: Option<&str>) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 1);
    for (key, value) in &message.headers {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    match error {
        Some(error) => headers.insert(Header {
            key: HEADER_ERROR,
            value: Some(error),
        }),
        None => headers,
    }
}

/// Owns the producer and replaces it when librdkafka declares it fatally failed (an
/// idempotent producer does so when the broker lost its sequence state, e.g. after a broker
/// restart with non-durable storage), or when asked to after repeated outages.
pub(super) struct Publisher {
    config: ClientConfig,
    producer: Mutex<Arc<FutureProducer>>,
}

impl Publisher {
    pub(super) fn new(config: ClientConfig) -> Result<Self> {
        let producer = Arc::new(config.create()?);
        Ok(Self {
            config,
            producer: Mutex::new(producer),
        })
    }

    pub(super) fn producer(&self) -> Arc<FutureProducer> {
        Arc::clone(&self.producer.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the producer if it is in librdkafka's fatal state; true when replaced.
    pub(super) fn recover_if_fatal(&self) -> Result<bool> {
        let mut current = self.producer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((code, reason)) = current.client().fatal_error() {
            tracing::warn!(%code, %reason, "kafka producer fatally failed; creating a new one");
            *current = Arc::new(self.config.create()?);
            return Ok(true);
        }
        Ok(false)
    }

    /// Replaces the producer with a fresh one (new connections, new idempotent producer id).
    ///
    /// Used after repeated broker failures: a producer can stay wedged after the broker came
    /// back (e.g. a broker that lost its idempotence state keeps timing out its retries
    /// without librdkafka declaring a fatal error). Any message of the old producer that
    /// still gets through is a duplicate of a row that stays pending: at least once, in
    /// order.
    pub(super) fn renew(&self) -> Result<()> {
        let fresh = Arc::new(self.config.create()?);
        *self.producer.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

/// Produces `messages` (each aggregate's messages in sequence order) and waits for every
/// acknowledgement. Returns one verdict per message, in the same order.
///
/// Messages whose topic is in `refused` are not produced: they get that outcome (the topic
/// does not exist, or the broker did not answer its lookup). Once a message of an aggregate
/// is not produced, the aggregate's later messages are not either (`Held`).
pub(super) async fn produce_batch(
    producer: &FutureProducer,
    messages: &[OutboundMessage],
    refused: &HashMap<String, PublishOutcome>,
) -> Vec<Sent> {
    let mut verdicts = vec![Sent::Settled(PublishOutcome::Held); messages.len()];
    let mut halted: HashSet<(&str, &str)> = HashSet::new();
    let mut pending = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        let envelope = &message.envelope;
        let aggregate = (
            envelope.aggregate_type.as_str(),
            envelope.aggregate_id.as_str(),
        );
        if halted.contains(&aggregate) {
            continue;
        }
        if let Some(outcome) = refused.get(&message.topic) {
            verdicts[index] = Sent::Settled(outcome.clone());
            halted.insert(aggregate);
            continue;
        }
        let body = match serde_json::to_vec(envelope) {
            Ok(body) => body,
            Err(error) => {
                verdicts[index] = Sent::Settled(PublishOutcome::Refused(format!(
                    "envelope encoding: {error}"
                )));
                halted.insert(aggregate);
                continue;
            }
        };
        let record = FutureRecord::to(&message.topic)
            .key(&message.key)
            .payload(&body)
            .headers(headers(message, None));
        match producer.send_result(record) {
            Ok(delivery) => pending.push((index, delivery)),
            Err((error, _)) => {
                verdicts[index] = classify(&error);
                halted.insert(aggregate);
            }
        }
    }
    let (indexes, deliveries): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
    let results = futures::future::join_all(deliveries).await;
    for (index, result) in indexes.into_iter().zip(results) {
        verdicts[index] = match result {
            Ok(Ok(_)) => Sent::published(),
            Ok(Err((error, _))) => classify(&error),
            Err(_canceled) => Sent::Settled(PublishOutcome::Unavailable(
                "producer dropped the delivery".into(),
            )),
        };
    }
    verdicts
}

/// Produces a dead letter to `<topic>.dlq`; a payload too large to carry is omitted (the
/// outbox row keeps it for inspection and replay).
pub(super) async fn produce_dead_letter(
    producer: &FutureProducer,
    letter: DeadLetter<'_>,
) -> std::result::Result<(), KafkaError> {
    match send_dead_letter(producer, letter, &letter.message.envelope, false).await {
        Err(error) if is_too_large(&error) => {
            let without_payload = Envelope {
                payload: serde_json::Value::Null,
                ..letter.message.envelope.clone()
            };
            send_dead_letter(producer, letter, &without_payload, true).await
        }
        result => result,
    }
}

async fn send_dead_letter(
    producer: &FutureProducer,
    letter: DeadLetter<'_>,
    envelope: &Envelope,
    payload_omitted: bool,
) -> std::result::Result<(), KafkaError> {
    let message = letter.message;
    let topic = dlq_topic(&message.topic);
    let value = DeadLetterValue {
        envelope,
        error: letter.error,
        attempts: letter.attempts,
        payload_omitted,
    };
    // Serializing strings, numbers and a JSON value cannot fail; were it to, the empty body
    // would still carry the headers (event id, error).
    let body = serde_json::to_vec(&value).unwrap_or_default();
    let record = FutureRecord::to(&topic)
        .key(&message.key)
        .payload(&body)
        .headers(headers(message, Some(letter.error)));
    match producer.send_result(record) {
        Ok(delivery) => match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _))) => Err(error),
            Err(_) => Err(KafkaError::Canceled),
        },
        Err((error, _)) => Err(error),
    }
}

fn is_too_large(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

/// Waits for messages still queued in `producer`, off the async threads (librdkafka blocks).
pub(super) async fn flush(producer: Arc<FutureProducer>, timeout: Duration) -> Result<()> {
    match tokio::task::spawn_blocking(move || producer.flush(timeout)).await {
        Ok(flushed) => Ok(flushed?),
        Err(error) => Err(crate::Error::Task(error.to_string())),
    }
}
