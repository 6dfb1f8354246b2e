//! The crate's error type.

use crate::event::EventId;

/// Everything that can go wrong in commerce-outbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database statement failed (connection lost, constraint violated, ...).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// Applying the crate's migrations failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// A Kafka client could not be created or an admin/consume call failed.
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),

    /// Creating a topic failed for a reason other than "it already exists".
    #[error("cannot create topic {topic}: {reason}")]
    TopicCreation {
        /// The topic that could not be created.
        topic: String,
        /// The broker's reason.
        reason: String,
    },

    /// A payload could not be encoded to or decoded from JSON.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),

    /// A Kafka message is not an outbox envelope (no body, or not the envelope's JSON).
    #[error("message at {topic}/{partition}@{offset} is not an outbox envelope: {reason}")]
    NotAnEnvelope {
        /// Topic of the message.
        topic: String,
        /// Partition of the message.
        partition: i32,
        /// Offset of the message.
        offset: i64,
        /// Why it could not be decoded.
        reason: String,
    },

    /// An event is invalid before it reaches the database (empty topic, type or aggregate).
    #[error("invalid event: {0}")]
    InvalidEvent(String),

    /// No topic is routed for this aggregate type and the routes have no default.
    #[error("no topic routed for aggregate type {aggregate_type:?}")]
    NoRoute {
        /// The aggregate type that has no route.
        aggregate_type: String,
    },

    /// The event does not exist (or was pruned).
    #[error("event {0} not found")]
    EventNotFound(EventId),

    /// The event exists but is not a dead letter, so it cannot be replayed or discarded.
    #[error("event {id} is {status}, not a dead letter")]
    NotDeadLetter {
        /// The event.
        id: EventId,
        /// Its current status.
        status: String,
    },

    /// A consumer has no dead letter of this event (never set aside, or already replayed
    /// or discarded).
    #[error("consumer {consumer} has no dead letter of event {event_id}")]
    ConsumerDeadLetterNotFound {
        /// The consumer (its inbox name).
        consumer: String,
        /// The event.
        event_id: EventId,
    },

    /// Replaying a consumer dead letter failed: the handler returned `source` (an
    /// [`crate::UnprocessableEvent`] if it still cannot apply the event). Nothing was
    /// written; the dead letter stays.
    #[error("replaying event {event_id} for consumer {consumer} failed: {source}")]
    ReplayFailed {
        /// The consumer (its inbox name).
        consumer: String,
        /// The event.
        event_id: EventId,
        /// The handler's error.
        source: crate::consumer::HandlerError,
    },

    /// A topic does not exist on the transport (create it with `ensure_topics`).
    #[error("topic {topic} does not exist")]
    UnknownTopic {
        /// The missing topic.
        topic: String,
    },

    /// A message (e.g. a dead letter) could not be delivered to its topic.
    #[error("cannot publish to {topic}: {reason}")]
    Publish {
        /// The topic.
        topic: String,
        /// What the transport said.
        reason: String,
    },

    /// A builder setting does not apply to the chosen transport (e.g. a librdkafka setting
    /// on a relay built with a transport: set it on the `KafkaTransport` instead).
    #[error("setting {setting} does not apply here: {reason}")]
    InvalidSetting {
        /// The setting.
        setting: &'static str,
        /// Why, and where it belongs.
        reason: String,
    },

    /// The transport cannot do this (e.g. refusing a delivery on Kafka).
    #[error("the transport does not support {operation}")]
    Unsupported {
        /// What was asked.
        operation: &'static str,
    },

    /// The subscription was closed; it delivers nothing more.
    #[error("the subscription is closed")]
    SubscriptionClosed,

    /// A consumer's handler failed; the message is retried and its offset not committed.
    #[error("handler failed: {0}")]
    Handler(String),

    /// A background task (relay worker, consumer) ended abnormally.
    #[error("task failed: {0}")]
    Task(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
