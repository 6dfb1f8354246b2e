//! Topic creation and the producer's settings.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::error::{Error, Result};
use crate::transport::dlq_topic;

/// Partitions and replication for [`ensure_topics`] and [`super::KafkaTransport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSettings {
    /// Partitions per topic; one aggregate always maps to one partition.
    pub partitions: i32,
    /// Replication factor (1 on a single local broker, 3 in production).
    pub replication_factor: i32,
}

impl Default for TopicSettings {
    /// 8 partitions, replication factor 1.
    fn default() -> Self {
        Self {
            partitions: 8,
            replication_factor: 1,
        }
    }
}

/// Creates each of `topics` and its `<topic>.dlq` companion on `brokers` unless they exist
/// (the Kafka shorthand of [`crate::EventTransport::ensure_topics`]).
///
/// Brokers with topic auto-creation off (tansu, hardened Kafka) need this before the
/// relay publishes; a topic that already exists is not an error.
///
/// # Errors
/// [`Error::Kafka`] when the admin client cannot be created or the request fails;
/// [`Error::TopicCreation`] when the broker refuses a topic.
pub async fn ensure_topics(brokers: &str, topics: &[&str], settings: TopicSettings) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let names: Vec<String> = topics
        .iter()
        .flat_map(|t| [(*t).to_owned(), dlq_topic(t)])
        .collect();
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::TopicCreation {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// The producer's settings: idempotent, `acks=all`, no linger (a batch's messages are
/// all queued at once, so they are sent together anyway, and a lone event is not held
/// back), and `overrides` applied last.
pub(super) fn producer_config(brokers: &str, overrides: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("batch.num.messages", "10000")
        .set("message.timeout.ms", "10000")
        .set("socket.keepalive.enable", "true")
        .set("socket.nagle.disable", "true");
    for (key, value) in overrides {
        config.set(key, value);
    }
    config
}
