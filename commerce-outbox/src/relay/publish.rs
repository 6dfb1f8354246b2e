//! Publishing claimed rows with the idempotent producer, and classifying failures.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use serde::Serialize;
use uuid::Uuid;

use super::claim::ClaimedRow;
use super::fault::classify;
use crate::error::Result;
use crate::kafka::dlq_topic;

/// What happened to one claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RowOutcome {
    /// The broker acknowledged it (`acks=all`).
    Published,
    /// The broker or producer refused this message itself (too large, invalid, unknown
    /// topic...), or the broker answers but not for it: counted as an attempt,
    /// dead-lettered after the configured number.
    Rejected(String),
    /// No answer about this message (delivery timed out, no partition leader): the broker
    /// may be down, or only this message's topic or partition. `fault::attribute` turns it
    /// into `Rejected` or `Unavailable` before the batch is settled.
    Undelivered(String),
    /// The broker could not be reached; says nothing about the event, so no attempt is
    /// counted and the topic backs off.
    Unavailable(String),
    /// Not sent because an earlier row of the same aggregate failed in this batch.
    Held,
}

/// The envelope as serialized on the wire; field for field the same as [`crate::Envelope`].
#[derive(Serialize)]
struct WireEnvelope<'a> {
    id: Uuid,
    event_type: &'a str,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    aggregate_seq: i64,
    occurred_at: DateTime<Utc>,
    schema_version: i32,
    payload: &'a serde_json::Value,
}

impl<'a> WireEnvelope<'a> {
    fn of(row: &'a ClaimedRow, payload: &'a serde_json::Value) -> Self {
        Self {
            id: row.id,
            event_type: &row.event_type,
            aggregate_type: &row.aggregate_type,
            aggregate_id: &row.aggregate_id,
            aggregate_seq: row.aggregate_seq,
            occurred_at: row.occurred_at,
            schema_version: row.schema_version,
            payload,
        }
    }
}

/// The body of a `<topic>.dlq` message.
#[derive(Serialize)]
struct DeadLetterMessage<'a> {
    envelope: WireEnvelope<'a>,
    error: &'a str,
    attempts: i32,
    /// True when the payload itself was too large to carry; the outbox row keeps it.
    payload_omitted: bool,
}

/// Header names every outbox message carries, so consumers can route without parsing.
pub(crate) const HEADER_EVENT_ID: &str = "event-id";
pub(crate) const HEADER_EVENT_TYPE: &str = "event-type";
const HEADER_ERROR: &str = "error";

fn headers(row: &ClaimedRow, id: &str, error: Option<&str>) -> OwnedHeaders {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: HEADER_EVENT_ID,
            value: Some(id),
        })
        .insert(Header {
            key: HEADER_EVENT_TYPE,
            value: Some(row.event_type.as_str()),
        });
    match error {
        Some(error) => headers.insert(Header {
            key: HEADER_ERROR,
            value: Some(error),
        }),
        None => headers,
    }
}

/// Owns the relay's producer and replaces it when librdkafka declares it fatally failed
/// (an idempotent producer does so when the broker lost its sequence state, e.g. after a
/// broker restart with non-durable storage).
pub(crate) struct Publisher {
    config: ClientConfig,
    producer: Mutex<Arc<FutureProducer>>,
}

impl Publisher {
    pub(crate) fn new(config: ClientConfig) -> Result<Self> {
        let producer = Arc::new(config.create()?);
        Ok(Self {
            config,
            producer: Mutex::new(producer),
        })
    }

    pub(crate) fn producer(&self) -> Arc<FutureProducer> {
        Arc::clone(&self.producer.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the producer if it is in librdkafka's fatal state; true when replaced.
    pub(crate) fn recover_if_fatal(&self) -> Result<bool> {
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
    pub(crate) fn renew(&self) -> Result<()> {
        let fresh = Arc::new(self.config.create()?);
        *self.producer.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// Waits for messages still queued in the producer (used on shutdown).
    pub(crate) fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer().flush(timeout) {
            tracing::warn!(%error, "kafka producer flush on shutdown failed");
        }
    }
}

/// Produces `rows` (each aggregate's rows in sequence order) and waits for every
/// acknowledgement. Returns one outcome per row, in the same order.
///
/// Rows whose topic is in `refused` are not produced: they get that outcome (the topic
/// does not exist, or the broker did not answer its lookup). Once a row of an aggregate is
/// not produced, the aggregate's later rows are not either (`Held`).
pub(crate) async fn publish_batch(
    producer: &FutureProducer,
    rows: &[ClaimedRow],
    refused: &HashMap<String, RowOutcome>,
) -> Vec<RowOutcome> {
    let mut outcomes = vec![RowOutcome::Held; rows.len()];
    let mut halted: HashSet<(&str, &str)> = HashSet::new();
    let mut pending = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let aggregate = (row.aggregate_type.as_str(), row.aggregate_id.as_str());
        if halted.contains(&aggregate) {
            continue;
        }
        if let Some(outcome) = refused.get(&row.topic) {
            outcomes[index] = outcome.clone();
            halted.insert(aggregate);
            continue;
        }
        let body = match serde_json::to_vec(&WireEnvelope::of(row, &row.payload)) {
            Ok(body) => body,
            Err(error) => {
                outcomes[index] = RowOutcome::Rejected(format!("envelope encoding: {error}"));
                halted.insert(aggregate);
                continue;
            }
        };
        let id = row.id.to_string();
        let record = FutureRecord::to(&row.topic)
            .key(&row.aggregate_id)
            .payload(&body)
            .headers(headers(row, &id, None));
        match producer.send_result(record) {
            Ok(delivery) => pending.push((index, delivery)),
            Err((error, _)) => {
                outcomes[index] = classify(&error);
                halted.insert(aggregate);
            }
        }
    }
    let (indexes, deliveries): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
    let results = futures::future::join_all(deliveries).await;
    for (index, result) in indexes.into_iter().zip(results) {
        outcomes[index] = match result {
            Ok(Ok(_)) => RowOutcome::Published,
            Ok(Err((error, _))) => classify(&error),
            Err(_canceled) => RowOutcome::Unavailable("producer dropped the delivery".into()),
        };
    }
    outcomes
}

/// Publishes a dead letter to `<topic>.dlq`; a payload too large to carry is omitted (the
/// outbox row keeps it for inspection and replay).
pub(crate) async fn publish_dead_letter(
    producer: &FutureProducer,
    row: &ClaimedRow,
    error: &str,
    attempts: i32,
) -> std::result::Result<(), String> {
    let topic = dlq_topic(&row.topic);
    let id = row.id.to_string();
    let null = serde_json::Value::Null;
    let mut omit_payload = false;
    loop {
        let message = DeadLetterMessage {
            envelope: WireEnvelope::of(row, if omit_payload { &null } else { &row.payload }),
            error,
            attempts,
            payload_omitted: omit_payload,
        };
        let body = serde_json::to_vec(&message).map_err(|e| e.to_string())?;
        let record = FutureRecord::to(&topic)
            .key(&row.aggregate_id)
            .payload(&body)
            .headers(headers(row, &id, Some(error)));
        let result = match producer.send_result(record) {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(error),
                Err(_) => return Err("producer dropped the delivery".into()),
            },
            Err((error, _)) => Err(error),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(error) if !omit_payload && is_too_large(&error) => omit_payload = true,
            Err(error) => return Err(error.to_string()),
        }
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
