//! What the relay knows about each topic.
//!
//! - Whether the broker has it. A topic is looked up (one metadata request) before its first
//!   publish and again after any failure of one of its messages. A message for a topic that
//!   does not exist is then refused at once, as an attempt, instead of sitting in librdkafka
//!   until its delivery timeout (10 s by default) while the whole batch waits.
//! - Whether it is backing off. When the broker does not answer for a topic's messages, only
//!   that topic's rows wait (the claim skips them); other topics keep flowing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::time::Instant;

use super::claim::ClaimedRow;
use super::publish::RowOutcome;
use crate::backoff::Backoff;

/// How long a metadata request may take before the broker counts as not answering. Long
/// enough for a connection to be set up, short against a delivery timeout.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// What the broker said about a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TopicStatus {
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

/// The relay's per-topic state, shared by its workers.
#[derive(Debug, Default)]
pub(crate) struct Topics {
    states: Mutex<HashMap<String, TopicState>>,
}

/// What one batch showed about one topic.
#[derive(Debug, Default, Clone, Copy)]
struct Learned {
    delivered: bool,
    failed: bool,
    unreachable: bool,
}

#[derive(Debug, Default)]
struct TopicState {
    /// Seen `Ready`, and none of its messages failed since: no lookup before publishing.
    ready: bool,
    /// Consecutive batches in which the broker did not answer for this topic.
    failures: u32,
    /// Its rows are not claimed before this instant.
    cooling_until: Option<Instant>,
}

impl Topics {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, TopicState>) -> R) -> R {
        f(&mut self.states.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Topics waiting out their backoff at `now`: the claim skips their rows.
    pub(crate) fn cooling(&self, now: Instant) -> Vec<String> {
        self.with(|states| {
            states
                .iter()
                .filter(|(_, state)| state.cooling_until.is_some_and(|until| until > now))
                .map(|(topic, _)| topic.clone())
                .collect()
        })
    }

    /// How long until the first cooling topic may be claimed again (`None`: none is cooling).
    pub(crate) fn next_thaw(&self, now: Instant) -> Option<Duration> {
        self.with(|states| {
            states
                .values()
                .filter_map(|state| state.cooling_until)
                .filter(|until| *until > now)
                .min()
                .map(|until| until - now)
        })
    }

    /// The distinct `topics` that must be looked up before publishing to them.
    pub(crate) fn unknown<'a>(&self, topics: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut seen = HashSet::new();
        self.with(|states| {
            topics
                .into_iter()
                .filter(|topic| seen.insert(*topic))
                .filter(|topic| !states.get(*topic).is_some_and(|state| state.ready))
                .map(str::to_owned)
                .collect()
        })
    }

    /// Remembers what a lookup found: only `Ready` spares the next lookup.
    pub(crate) fn looked_up(&self, topic: &str, status: &TopicStatus) {
        self.with(|states| {
            states.entry(topic.to_owned()).or_default().ready = *status == TopicStatus::Ready;
        });
    }

    /// The broker acknowledged a message of `topic`: any backoff of it is over.
    fn delivered(&self, topic: &str) {
        self.with(|states| {
            if let Some(state) = states.get_mut(topic) {
                state.failures = 0;
                state.cooling_until = None;
            }
        });
    }

    /// A message of `topic` failed: look the topic up again before its next publish.
    fn failed(&self, topic: &str) {
        self.with(|states| {
            if let Some(state) = states.get_mut(topic) {
                state.ready = false;
            }
        });
    }

    /// Learns from a settled batch: a topic with an acknowledged row ends its backoff, one
    /// with a failed row is looked up again before its next publish, and one the broker was
    /// unreachable for backs off. Returns the topics that back off, with their waits.
    pub(crate) fn learn(
        &self,
        rows: &[ClaimedRow],
        outcomes: &[RowOutcome],
        backoff: Backoff,
        now: Instant,
    ) -> Vec<(String, Duration)> {
        // A batch holds few topics: a short list beats hashing every row's topic twice.
        let mut seen: Vec<(&str, Learned)> = Vec::new();
        for (row, outcome) in rows.iter().zip(outcomes) {
            let index = seen
                .iter()
                .position(|(topic, _)| *topic == row.topic)
                .unwrap_or_else(|| {
                    seen.push((&row.topic, Learned::default()));
                    seen.len() - 1
                });
            let learned = &mut seen[index].1;
            match outcome {
                RowOutcome::Published => learned.delivered = true,
                RowOutcome::Rejected(_) => learned.failed = true,
                RowOutcome::Unavailable(_) | RowOutcome::Undelivered(_) => {
                    learned.unreachable = true;
                }
                RowOutcome::Held => {}
            }
        }
        let mut backing_off = Vec::new();
        for (topic, learned) in seen {
            if learned.delivered {
                self.delivered(topic);
            }
            if learned.failed {
                self.failed(topic);
            }
            if learned.unreachable {
                backing_off.push((topic.to_owned(), self.back_off(topic, backoff, now)));
            }
        }
        backing_off
    }

    /// The broker did not answer for `topic`'s messages: its rows wait `backoff` (growing
    /// with each consecutive failure) before they are claimed again. Returns the wait.
    fn back_off(&self, topic: &str, backoff: Backoff, now: Instant) -> Duration {
        self.with(|states| {
            let state = states.entry(topic.to_owned()).or_default();
            state.ready = false;
            state.failures = state.failures.saturating_add(1);
            let delay = backoff.delay_with_random_jitter(state.failures);
            state.cooling_until = Some(now + delay);
            delay
        })
    }
}

/// Looks `topics` up on the broker through `producer`'s connections, one metadata request
/// each. Once the broker did not answer, the remaining topics are reported unreachable
/// without waiting again.
pub(crate) async fn look_up(
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

    const FAST: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));

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
        let topics = Topics::default();
        assert_eq!(topics.unknown(["a", "b", "a"]), vec!["a", "b"]);
        topics.looked_up("a", &TopicStatus::Ready);
        topics.looked_up("b", &TopicStatus::Missing);
        assert_eq!(topics.unknown(["a", "b"]), vec!["b"]);
        topics.failed("a");
        assert_eq!(
            topics.unknown(["a"]),
            vec!["a"],
            "a failure re-checks the topic"
        );
    }

    fn row(topic: &str) -> ClaimedRow {
        ClaimedRow {
            id: uuid::Uuid::now_v7(),
            topic: topic.into(),
            event_type: "e".into(),
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            aggregate_seq: 1,
            occurred_at: chrono::Utc::now(),
            schema_version: 1,
            payload: serde_json::Value::Null,
            attempts: 0,
            aggregate_head: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_backs_off_only_the_topics_the_broker_did_not_answer_for() {
        let topics = Topics::default();
        for topic in ["up", "refused", "down"] {
            topics.looked_up(topic, &TopicStatus::Ready);
        }
        let rows = [row("up"), row("refused"), row("down"), row("down")];
        let outcomes = [
            RowOutcome::Published,
            RowOutcome::Rejected("too large".into()),
            RowOutcome::Unavailable("timed out".into()),
            RowOutcome::Held,
        ];
        let now = Instant::now();
        let backing_off = topics.learn(&rows, &outcomes, FAST, now);
        assert_eq!(backing_off.len(), 1);
        assert_eq!(backing_off[0].0, "down");
        assert_eq!(topics.cooling(now), vec!["down"]);
        assert_eq!(
            topics.unknown(["up", "refused", "down"]),
            vec!["refused", "down"],
            "failed topics are looked up again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_topic_backs_off_alone_and_longer_each_time_until_a_delivery() {
        let topics = Topics::default();
        topics.looked_up("quiet", &TopicStatus::Ready);
        let now = Instant::now();
        let first = topics.back_off("down", FAST, now);
        assert!(first <= Duration::from_millis(100));
        assert_eq!(
            topics.cooling(now),
            vec!["down"],
            "only the failing topic waits"
        );
        assert_eq!(topics.next_thaw(now), Some(first));
        assert!(topics.cooling(now + first).is_empty());

        let second = topics.back_off("down", FAST, now);
        assert!(second >= Duration::from_millis(100), "{second:?}: doubled");
        topics.delivered("down");
        assert!(topics.cooling(now).is_empty());
        assert_eq!(topics.next_thaw(now), None);
        assert!(
            topics.back_off("down", FAST, now) <= Duration::from_millis(100),
            "a delivery resets the backoff"
        );
    }
}
