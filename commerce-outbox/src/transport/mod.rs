//! The event transport: the seam between the outbox (relay, consumers) and whatever carries
//! the events between them.
//!
//! The relay publishes through [`EventTransport::publish`] and settles each row from the
//! [`PublishOutcome`] it gets back; [`crate::InboxConsumer`] receives through a
//! [`Subscription`] and acknowledges only after its inbox transaction committed. Neither knows
//! which transport it runs on:
//!
//! - [`KafkaTransport`]: an idempotent `acks=all` producer and consumer groups on a Kafka
//!   (protocol) broker, for services in several processes;
//! - [`InProcessTransport`]: bounded in-memory queues inside one process, for running with
//!   Postgres alone. A publish returns only once every subscribed consumer group has applied
//!   the messages, so the outbox row stays the durable copy until then.

mod in_process;
mod kafka;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::Envelope;

pub use in_process::{InProcessTransport, InProcessTransportBuilder};
pub(crate) use kafka::subscribe as kafka_subscribe;
pub use kafka::{
    decode_envelope, ensure_topics, KafkaTransport, KafkaTransportBuilder, TopicSettings,
};

/// Header carrying the event id (the envelope's `id`), so consumers can route without parsing.
pub const HEADER_EVENT_ID: &str = "event-id";
/// Header carrying the event type (the envelope's `event_type`).
pub const HEADER_EVENT_TYPE: &str = "event-type";
/// Header of a dead letter carrying the last publish error.
pub const HEADER_ERROR: &str = "error";

/// The dead-letter topic of `topic`: `<topic>.dlq`.
#[must_use]
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// One event on its way out: what the relay hands a transport for each claimed row.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    /// The topic it is published to.
    pub topic: String,
    /// The partition key: the aggregate id, so one aggregate's events stay in order.
    pub key: String,
    /// The event (the message value; JSON on Kafka).
    pub envelope: Envelope,
    /// `event-id`, `event-type` (and `traceparent`), repeated from the envelope for routing
    /// and tracing without parsing.
    pub headers: Vec<(String, String)>,
}

impl OutboundMessage {
    /// The message of `envelope` on `topic`: key = aggregate id, headers `event-id`,
    /// `event-type` and, when it has one, `traceparent` (W3C trace context).
    pub fn new(topic: impl Into<String>, envelope: Envelope) -> Self {
        let mut headers = vec![
            (HEADER_EVENT_ID.to_owned(), envelope.id.to_string()),
            (HEADER_EVENT_TYPE.to_owned(), envelope.event_type.clone()),
        ];
        if let Some(traceparent) = &envelope.traceparent {
            headers.push((crate::trace::TRACEPARENT.to_owned(), traceparent.clone()));
        }
        Self {
            topic: topic.into(),
            key: envelope.aggregate_id.clone(),
            headers,
            envelope,
        }
    }
}

/// What happened to one message of a publish; the relay settles the row from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Delivered for good (Kafka: acknowledged with `acks=all`; in-process: applied by every
    /// subscribed consumer group). The row is marked published.
    Published,
    /// Refused because of the message itself (too large, topic missing, a consumer's handler
    /// kept failing): **counts as an attempt**; after the relay's `max_attempts` the row is a
    /// dead letter.
    Refused(String),
    /// The transport could not be reached or did not answer (broker down, a consumer group
    /// left or timed out): says nothing about the event, so **no attempt** is counted, the
    /// row stays pending and its topic backs off.
    Unavailable(String),
    /// Not delivered because an earlier message of the same aggregate in this publish was
    /// not: the row stays pending, no attempt, and goes out after its predecessor.
    Held,
}

/// A row that became a dead letter, for [`EventTransport::publish_dead_letter`].
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// The message that kept failing.
    pub message: &'a OutboundMessage,
    /// Its last error.
    pub error: &'a str,
    /// Failed attempts, including the last one.
    pub attempts: i32,
}

/// A dead letter as delivered on `<topic>.dlq` (on Kafka, the JSON message value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// The event that kept failing (`payload` null when `payload_omitted`).
    pub envelope: Envelope,
    /// Its last error.
    pub error: String,
    /// Failed attempts.
    pub attempts: i32,
    /// True when the payload was too large to carry; the outbox row keeps it.
    pub payload_omitted: bool,
}

/// Where a delivery sits in its transport: the position a consumer acknowledges.
///
/// Kafka: the partition and offset. In-process: partition 0 and the delivery's number within
/// its subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryPosition {
    /// Kafka partition (0 in-process).
    pub partition: i32,
    /// Kafka offset, or the in-process delivery number.
    pub offset: i64,
}

/// What a delivery carries.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryContent {
    /// An outbox event.
    Event(Arc<Envelope>),
    /// A dead letter (a delivery of a `<topic>.dlq` topic).
    DeadLetter(Arc<DeadLetterRecord>),
    /// Neither: a message some other producer wrote, with why it could not be read.
    Unreadable(String),
}

/// One message received through a [`Subscription`].
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The topic it came from.
    pub topic: String,
    /// Its key (the aggregate id for outbox messages).
    pub key: Option<String>,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its position, for acknowledging.
    pub position: DeliveryPosition,
    /// What it carries.
    pub content: DeliveryContent,
}

impl Delivery {
    /// The value of header `name`, if present.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The event, when the delivery carries one.
    #[must_use]
    pub fn envelope(&self) -> Option<&Envelope> {
        match &self.content {
            DeliveryContent::Event(envelope) => Some(envelope),
            DeliveryContent::DeadLetter(_) | DeliveryContent::Unreadable(_) => None,
        }
    }
}

/// Carries committed outbox events from the relay to consumer groups.
///
/// Object safe: the relay and [`crate::InboxConsumer`] hold an `Arc<dyn EventTransport>`
/// (build them with [`crate::Relay::with_transport`] and
/// [`crate::InboxConsumer::with_transport`]). Implementations: [`KafkaTransport`] and
/// [`InProcessTransport`].
#[async_trait]
pub trait EventTransport: Send + Sync + fmt::Debug + 'static {
    /// A short name for log lines (`"kafka"`, `"in-process"`).
    fn kind(&self) -> &'static str;

    /// Creates each of `topics` and its `<topic>.dlq` companion unless they exist.
    ///
    /// # Errors
    /// When the transport refuses a topic or cannot be reached.
    async fn ensure_topics(&self, topics: &[&str]) -> Result<()>;

    /// Publishes `messages` and returns one outcome per message, in the same order. Never
    /// fails as a whole: trouble is reported per message.
    ///
    /// The relay passes each aggregate's messages in sequence order and relies on this
    /// contract: a message is [`PublishOutcome::Published`] only once it is delivered for
    /// good; once a message of an aggregate is not published, later messages of that
    /// aggregate should not be sent ([`PublishOutcome::Held`]). (If one is published anyway,
    /// the relay does not mark it and publishes it again after its predecessor.)
    async fn publish(&self, messages: &[OutboundMessage]) -> Vec<PublishOutcome>;

    /// Sends a dead letter to `<topic>.dlq`. The outbox row is the dead letter's durable
    /// record either way; this copy is for whoever watches the dead-letter topic.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`] when `<topic>.dlq` does not exist; [`Error::Publish`] when it
    /// could not be delivered.
    async fn publish_dead_letter(&self, letter: DeadLetter<'_>) -> Result<()>;

    /// Joins consumer `group` on `topics`. Subscriptions of one group share the work (each
    /// message goes to one of them, one aggregate always to the same one while the
    /// membership is stable); every group gets every message.
    ///
    /// # Errors
    /// When the transport rejects the subscription or its configuration.
    fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Subscription>>;

    /// Waits up to `timeout` for messages still buffered in the transport (the relay calls
    /// it when it shuts down).
    ///
    /// # Errors
    /// When the buffered messages could not be delivered in time.
    async fn flush(&self, timeout: Duration) -> Result<()>;
}

/// A consumer group member's stream of deliveries, handled one at a time: receive with
/// [`Subscription::next`], then [`Subscription::acknowledge`] once the effect committed (or
/// [`Subscription::refuse`] it, where supported).
#[async_trait]
pub trait Subscription: Send + fmt::Debug {
    /// The next delivery. Cancel safe: dropping the future loses nothing.
    ///
    /// # Errors
    /// When receiving failed (the caller may try again), or [`Error::SubscriptionClosed`]
    /// after [`Subscription::close`].
    async fn next(&mut self) -> Result<Delivery>;

    /// Confirms that `delivery` was handled (its inbox transaction committed): it is not
    /// delivered to this group again, except after a crash (at least once).
    ///
    /// # Errors
    /// When the transport refused the acknowledgement (it may then be delivered again).
    async fn acknowledge(&mut self, delivery: &Delivery) -> Result<()>;

    /// Whether [`Subscription::refuse`] can hand a delivery back to its publisher. Without it
    /// (Kafka: the producer is long gone) a consumer retries a failing event until it
    /// succeeds, holding the events behind it.
    fn can_refuse(&self) -> bool {
        false
    }

    /// Gives `delivery` back as not applicable (its handler kept failing with `error`): the
    /// relay counts a failed attempt and retries the row later; this group's later deliveries
    /// of the same aggregate from the same publish are held, those already received included
    /// (the caller must not apply or acknowledge those: they come again).
    ///
    /// # Errors
    /// [`Error::Unsupported`] when [`Subscription::can_refuse`] is false.
    async fn refuse(&mut self, delivery: &Delivery, error: &str) -> Result<()> {
        let _ = (delivery, error);
        Err(Error::Unsupported {
            operation: "refusing a delivery",
        })
    }

    /// Leaves the group; deliveries received but not acknowledged are delivered again (to
    /// another member, or after a restart).
    async fn close(&mut self);
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::Utc;

    use super::OutboundMessage;
    use crate::event::{Envelope, EventId};

    /// A message of event `seq` of aggregate `("order", aggregate)` on `topic`.
    pub(crate) fn message(topic: &str, aggregate: &str, seq: i64) -> OutboundMessage {
        OutboundMessage::new(
            topic,
            Envelope {
                id: EventId::new_v7(),
                event_type: "test.happened".into(),
                aggregate_type: "order".into(),
                aggregate_id: aggregate.into(),
                aggregate_seq: seq,
                occurred_at: Utc::now(),
                schema_version: 1,
                payload: serde_json::json!({ "n": seq }),
                traceparent: None,
            },
        )
    }
}
