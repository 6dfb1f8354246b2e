//! What the broker says about each topic.
//!
//! A topic is looked up (one metadata request) before its first publish and again after any
//! failure of one of its messages. A message for a topic that does not exist is then refused
//! at once, as an attempt, instead of sitting in librdkafka until its delivery timeout (10 s
//! by default) while the whole batch waits.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, Producer};

use crate::transport::{OutboundMessage, PublishOutcome};

/// How long a metadata request may take before the broker counts as not answering. Long
/// enough for a connection to be set up, short against a delivery timeout.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// What the broker said about a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TopicStatus {
    /// The topic exists and every partition has a leader.
    Ready,
    /// The broker answered: there is no such topic.
    Missing,
    /// The broker answered, but reports an error for the topic or one of its partitions
    /// (no leader, not authorized, ...).
    Degraded(String),
    /// The broker did not answer the metadata request.
    Unreachable(String),
}

/// The topics seen `Ready` with none of their messages failed since: they are published to
/// without a lookup. Shared by every publish of one transport.
#[derive(Debug, Default)]
pub(super) struct TopicMetadata {
    ready: Mutex<HashSet<String>>,
}

impl TopicMetadata {
    fn with<R>(&self, f: impl FnOnce(&mut HashSet<String>) -> R) -> R {
        f(&mut self.ready.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The distinct `topics` that must be looked up before publishing to them.
    pub(super) fn unknown<'a>(&self, topics: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut seen = HashSet::new();
        self.with(|ready| {
            topics
                .into_iter()
                .filter(|topic| seen.insert(*topic))
                .filter(|topic| !ready.contains(*topic))
                .map(str::to_owned)
                .collect()
        })
    }

    /// Remembers what a lookup found: only `Ready` spares the next lookup.
    pub(super) fn looked_up(&self, topic: &str, status: &TopicStatus) {
        self.with(|ready| {
            if *status == TopicStatus::Ready {
                ready.insert(topic.to_owned());
            } else {
                ready.remove(topic);
            }
        });
    }

    /// Learns from a settled publish: a topic with a failed message is looked up again
    /// before its next publish.
    pub(super) fn learn(&self, messages: &[OutboundMessage], outcomes: &[PublishOutcome]) {
        self.with(|ready| {
            for (message, outcome) in messages.iter().zip(outcomes) {
                if matches!(
                    outcome,
                    PublishOutcome::Refused(_) | PublishOutcome::Unavailable(_)
                ) {
                    ready.remove(&message.topic);
                }
            }
        });
    }
}

/// Looks `topics` up on the broker through `producer`'s connections, one metadata request
/// each. Once the broker did not answer, the remaining topics are reported unreachable
/// without waiting again.
pub(super) async fn look_up(
    producer: Arc<FutureProducer>,
    topics: Vec<String>,
) -> Vec<(String, TopicStatus)> {
    if topics.is_empty() {
        return Vec::new();
    }
    let names = topics.clone();
    // librdkafka's metadata call blocks its thread until the reply or the timeout.
    let looked_up = tokio::task::spawn_blocking(move || {
        let mut unreachable: Option<String> = None;
        names
            .into_iter()
            .map(|topic| {
                let status = match &unreachable {
                    Some(error) => TopicStatus::Unreachable(error.clone()),
                    None => match producer
                        .client()
                        .fetch_metadata(Some(&topic), LOOKUP_TIMEOUT)
                    {
                        Ok(metadata) => status_in(&metadata, &topic),
                        Err(error) => {
                            unreachable = Some(error.to_string());
                            TopicStatus::Unreachable(error.to_string())
                        }
                    },
                };
                (topic, status)
            })
            .collect()
    })
    .await;
    looked_up.unwrap_or_else(|error| {
        let error = format!("metadata lookup failed: {error}");
        topics
            .into_iter()
            .map(|topic| (topic, TopicStatus::Unreachable(error.clone())))
            .collect()
    })
}

/// The statuses of `looked_up` as a map.
pub(super) fn by_topic(looked_up: Vec<(String, TopicStatus)>) -> HashMap<String, TopicStatus> {
    looked_up.into_iter().collect()
}

fn status_in(metadata: &Metadata, topic: &str) -> TopicStatus {
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return TopicStatus::Missing;
    };
    let partitions: Vec<PartitionView> = found
        .partitions()
        .iter()
        .map(|p| PartitionView {
            id: p.id(),
            leader: p.leader(),
            error: p.error().map(RDKafkaErrorCode::from),
        })
        .collect();
    status_of(found.error().map(RDKafkaErrorCode::from), &partitions)
}

/// One partition as a metadata reply describes it.
#[derive(Debug, Clone, Copy)]
struct PartitionView {
    id: i32,
    leader: i32,
    error: Option<RDKafkaErrorCode>,
}

fn status_of(topic_error: Option<RDKafkaErrorCode>, partitions: &[PartitionView]) -> TopicStatus {
    match topic_error {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            return TopicStatus::Missing
        }
        Some(error) => return TopicStatus::Degraded(error.to_string()),
        None => {}
    }
    if partitions.is_empty() {
        return TopicStatus::Missing;
    }
    match partitions
        .iter()
        .find(|p| p.error.is_some() || p.leader < 0)
    {
        Some(p) => TopicStatus::Degraded(format!(
            "partition {} {}",
            p.id,
            p.error
                .map_or_else(|| "has no leader".to_owned(), |e| e.to_string())
        )),
        None => TopicStatus::Ready,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tests::message;

    fn healthy(id: i32) -> PartitionView {
        PartitionView {
            id,
            leader: 1,
            error: None,
        }
    }

    #[test]
    fn a_topic_the_broker_does_not_know_is_missing() {
        assert_eq!(
            status_of(Some(RDKafkaErrorCode::UnknownTopicOrPartition), &[]),
            TopicStatus::Missing
        );
        assert_eq!(status_of(None, &[]), TopicStatus::Missing);
    }

    #[test]
    fn a_partition_without_leader_degrades_the_topic() {
        let leaderless = PartitionView {
            id: 3,
            leader: -1,
            error: None,
        };
        assert_eq!(
            status_of(None, &[healthy(0), leaderless]),
            TopicStatus::Degraded("partition 3 has no leader".into())
        );
        assert!(matches!(
            status_of(
                Some(RDKafkaErrorCode::TopicAuthorizationFailed),
                &[healthy(0)]
            ),
            TopicStatus::Degraded(_)
        ));
        assert_eq!(
            status_of(None, &[healthy(0), healthy(1)]),
            TopicStatus::Ready
        );
    }

    #[test]
    fn only_topics_not_seen_ready_are_looked_up() {
        let topics = TopicMetadata::default();
        assert_eq!(topics.unknown(["a", "b", "a"]), vec!["a", "b"]);
        topics.looked_up("a", &TopicStatus::Ready);
        topics.looked_up("b", &TopicStatus::Missing);
        assert_eq!(topics.unknown(["a", "b"]), vec!["b"]);
    }

    #[test]
    fn a_failed_message_makes_its_topic_looked_up_again() {
        let topics = TopicMetadata::default();
        for topic in ["up", "refused", "down"] {
            topics.looked_up(topic, &TopicStatus::Ready);
        }
        topics.learn(
            &[
                message("up", "o-1", 1),
                message("refused", "o-2", 1),
                message("down", "o-3", 1),
            ],
            &[
                PublishOutcome::Published,
                PublishOutcome::Refused("too large".into()),
                PublishOutcome::Unavailable("timed out".into()),
            ],
        );
        assert_eq!(
            topics.unknown(["up", "refused", "down"]),
            vec!["refused", "down"]
        );
    }
}
