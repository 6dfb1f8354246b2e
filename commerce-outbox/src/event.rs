//! The event envelope: what `enqueue` takes and what consumers receive.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::unprocessable::UnprocessableEvent;

/// An event's identity: a UUID v7, so ids sort roughly by creation time.
///
/// It is also the inbox key: a consumer that sees the same id twice applies it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A fresh UUID v7.
    #[must_use]
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Uuid> for EventId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// A typed domain event: its payload type knows its name, version and aggregate.
///
/// Implement it for each event payload so producers build [`NewEvent`]s with
/// [`NewEvent::from_event`] and consumers decode with [`Envelope::decode`].
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync {
    /// The event type on the wire, e.g. `"order.created"`.
    const EVENT_TYPE: &'static str;
    /// The aggregate type, e.g. `"order"`; the default route key.
    const AGGREGATE_TYPE: &'static str;
    /// The payload's schema version; bump it on incompatible payload changes.
    const SCHEMA_VERSION: i32 = 1;

    /// The aggregate instance this event belongs to (the Kafka message key).
    fn aggregate_id(&self) -> String;
}

/// An event to write to the outbox, inside the caller's transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Id of the event (UUID v7 by default).
    pub id: EventId,
    /// Kafka topic it is published to.
    pub topic: String,
    /// Event type, e.g. `"order.created"`.
    pub event_type: String,
    /// Aggregate type, e.g. `"order"`.
    pub aggregate_type: String,
    /// Aggregate id; the Kafka key, so one aggregate's events share a partition.
    pub aggregate_id: String,
    /// When the business fact happened.
    pub occurred_at: DateTime<Utc>,
    /// Payload schema version.
    pub schema_version: i32,
    /// The payload.
    pub payload: serde_json::Value,
    /// The W3C trace context it travels under: by default the one where it was made
    /// ([`crate::trace::scope`], or its aggregate's in [`crate::trace::scope_by_aggregate`]),
    /// `None` outside any.
    pub traceparent: Option<String>,
}

impl NewEvent {
    /// An event with a fresh UUID v7, `occurred_at` now and schema version 1.
    pub fn new(
        topic: impl Into<String>,
        event_type: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        payload: serde_json::Value,
    ) -> Self {
        let aggregate_id = aggregate_id.into();
        Self {
            id: EventId::new_v7(),
            topic: topic.into(),
            event_type: event_type.into(),
            aggregate_type: aggregate_type.into(),
            traceparent: crate::trace::current_for(&aggregate_id),
            aggregate_id,
            occurred_at: Utc::now(),
            schema_version: 1,
            payload,
        }
    }

    /// The event for a typed payload, on the topic `routes` gives its aggregate type.
    ///
    /// # Errors
    /// [`Error::NoRoute`] when no topic is routed; [`Error::Json`] when the payload does not
    /// serialize.
    pub fn from_event<E: DomainEvent>(routes: &TopicRoutes, event: &E) -> Result<Self> {
        let topic = routes.topic_for(E::AGGREGATE_TYPE)?;
        Ok(Self::new(
            topic,
            E::EVENT_TYPE,
            E::AGGREGATE_TYPE,
            event.aggregate_id(),
            serde_json::to_value(event)?,
        )
        .with_schema_version(E::SCHEMA_VERSION))
    }

    /// Sets the schema version.
    #[must_use]
    pub fn with_schema_version(mut self, version: i32) -> Self {
        self.schema_version = version;
        self
    }

    /// Sets when the fact happened (defaults to now).
    #[must_use]
    pub fn with_occurred_at(mut self, at: DateTime<Utc>) -> Self {
        self.occurred_at = at;
        self
    }

    /// Sets the trace context it travels under (a value that is not W3C's counts as none).
    #[must_use]
    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent.filter(|t| crate::trace::is_traceparent(t));
        self
    }

    /// Sets the id (e.g. a deterministic one derived from a command id).
    #[must_use]
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let empty = [
            ("topic", &self.topic),
            ("event_type", &self.event_type),
            ("aggregate_type", &self.aggregate_type),
            ("aggregate_id", &self.aggregate_id),
        ]
        .into_iter()
        .find(|(_, v)| v.is_empty());
        match empty {
            Some((field, _)) => Err(Error::InvalidEvent(format!("{field} is empty"))),
            None => Ok(()),
        }
    }
}

/// The envelope as published to Kafka (the message value, as JSON) and stored in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Event id (UUID v7); the inbox key.
    pub id: EventId,
    /// Event type.
    pub event_type: String,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id (also the Kafka message key).
    pub aggregate_id: String,
    /// Position of the event within its aggregate, 1-based, in commit order.
    pub aggregate_seq: i64,
    /// When the business fact happened.
    pub occurred_at: DateTime<Utc>,
    /// Payload schema version.
    pub schema_version: i32,
    /// The payload.
    pub payload: serde_json::Value,
    /// The W3C trace context of the work that wrote it (absent on the wire when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Envelope {
    /// Decodes the payload as `E`.
    ///
    /// # Errors
    /// [`Error::InvalidEvent`] when the event type is not `E::EVENT_TYPE`; [`Error::Json`]
    /// when the payload does not match `E`.
    pub fn decode<E: DomainEvent>(&self) -> Result<E> {
        if self.event_type != E::EVENT_TYPE {
            return Err(Error::InvalidEvent(format!(
                "expected event type {}, got {}",
                E::EVENT_TYPE,
                self.event_type
            )));
        }
        Ok(serde_json::from_value(self.payload.clone())?)
    }

    /// Deserializes the payload as `T`, for an [`crate::EventHandler`]: a payload that does
    /// not match is an [`UnprocessableEvent`] (no retry can change it), so
    /// `envelope.decode_payload()?` in a handler sets such an event aside as a consumer dead
    /// letter instead of retrying it forever.
    ///
    /// Unlike [`Envelope::decode`], it takes any `T` and does not check the event type.
    ///
    /// # Errors
    /// [`UnprocessableEvent`] naming the event and what serde said.
    pub fn decode_payload<T: DeserializeOwned>(
        &self,
    ) -> std::result::Result<T, UnprocessableEvent> {
        serde_json::from_value(self.payload.clone()).map_err(|error| {
            let reason = format!(
                "the payload of {} {} (schema v{}) does not decode as {}: {error}",
                self.event_type,
                self.id,
                self.schema_version,
                std::any::type_name::<T>()
            );
            UnprocessableEvent::with_cause(reason, Box::new(error))
        })
    }
}

/// Which topic each aggregate type's events go to.
///
/// ```
/// use commerce_outbox::TopicRoutes;
/// let routes = TopicRoutes::new().route("order", "orders").with_default("misc");
/// assert_eq!(routes.topic_for("order").unwrap(), "orders");
/// assert_eq!(routes.topic_for("stock").unwrap(), "misc");
/// ```
#[derive(Debug, Clone, Default)]
pub struct TopicRoutes {
    routes: HashMap<String, String>,
    default: Option<String>,
}

impl TopicRoutes {
    /// No routes.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `aggregate_type`'s events to `topic`.
    #[must_use]
    pub fn route(mut self, aggregate_type: impl Into<String>, topic: impl Into<String>) -> Self {
        self.routes.insert(aggregate_type.into(), topic.into());
        self
    }

    /// The topic for aggregate types without a route.
    #[must_use]
    pub fn with_default(mut self, topic: impl Into<String>) -> Self {
        self.default = Some(topic.into());
        self
    }

    /// The topic for `aggregate_type`.
    ///
    /// # Errors
    /// [`Error::NoRoute`] when neither a route nor a default exists.
    pub fn topic_for(&self, aggregate_type: &str) -> Result<&str> {
        self.routes
            .get(aggregate_type)
            .or(self.default.as_ref())
            .map(String::as_str)
            .ok_or_else(|| Error::NoRoute {
                aggregate_type: aggregate_type.to_owned(),
            })
    }

    /// Every routed topic (and the default), e.g. for [`crate::ensure_topics`].
    #[must_use]
    pub fn topics(&self) -> Vec<&str> {
        let mut topics: Vec<&str> = self
            .routes
            .values()
            .chain(self.default.as_ref())
            .map(String::as_str)
            .collect();
        topics.sort_unstable();
        topics.dedup();
        topics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize, Deserialize)]
    struct OrderPlaced {
        order_id: String,
    }

    impl DomainEvent for OrderPlaced {
        const EVENT_TYPE: &'static str = "order.placed";
        const AGGREGATE_TYPE: &'static str = "order";
        const SCHEMA_VERSION: i32 = 2;
        fn aggregate_id(&self) -> String {
            self.order_id.clone()
        }
    }

    #[test]
    fn from_event_uses_the_route_and_the_type_constants() {
        let routes = TopicRoutes::new().route("order", "orders");
        let event = NewEvent::from_event(
            &routes,
            &OrderPlaced {
                order_id: "o-1".into(),
            },
        )
        .unwrap();
        assert_eq!(event.topic, "orders");
        assert_eq!(event.event_type, "order.placed");
        assert_eq!(event.aggregate_id, "o-1");
        assert_eq!(event.schema_version, 2);
        assert_eq!(event.payload, json!({"order_id": "o-1"}));
    }

    #[test]
    fn unrouted_aggregate_without_default_is_an_error() {
        let routes = TopicRoutes::new().route("order", "orders");
        assert!(matches!(
            routes.topic_for("stock"),
            Err(Error::NoRoute { aggregate_type }) if aggregate_type == "stock"
        ));
    }

    #[test]
    fn empty_fields_are_rejected() {
        let event = NewEvent::new("t", "e", "a", "", json!({}));
        assert!(
            matches!(event.validate(), Err(Error::InvalidEvent(m)) if m.contains("aggregate_id"))
        );
    }

    #[test]
    fn decode_checks_the_event_type() {
        let envelope = Envelope {
            id: EventId::new_v7(),
            event_type: "order.cancelled".into(),
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            aggregate_seq: 1,
            occurred_at: Utc::now(),
            schema_version: 1,
            payload: json!({"order_id": "o-1"}),
            traceparent: None,
        };
        assert!(envelope.decode::<OrderPlaced>().is_err());
        let placed = Envelope {
            event_type: "order.placed".into(),
            ..envelope
        };
        assert_eq!(placed.decode::<OrderPlaced>().unwrap().order_id, "o-1");
    }
}
