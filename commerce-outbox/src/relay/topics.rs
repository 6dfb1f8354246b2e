//! Per-topic backoff: when the transport does not answer for a topic's messages, only that
//! topic's rows wait (the claim skips them); other topics keep flowing.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::transport::{OutboundMessage, PublishOutcome};

/// The relay's per-topic backoff state, shared by its workers.
#[derive(Debug, Default)]
pub(crate) struct Topics {
    states: Mutex<HashMap<String, TopicState>>,
}

/// What one batch showed about one topic.
#[derive(Debug, Default, Clone, Copy)]
struct Learned {
    delivered: bool,
    unreachable: bool,
}

#[derive(Debug, Default)]
struct TopicState {
    /// Consecutive batches in which the transport did not answer for this topic.
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

    /// A message of `topic` was delivered: any backoff of it is over.
    fn delivered(&self, topic: &str) {
        self.with(|states| {
            states.remove(topic);
        });
    }

    /// Learns from a settled batch: a topic with a published message ends its backoff, and
    /// one the transport was unavailable for backs off. Returns the topics that back off,
    /// with their waits.
    pub(crate) fn learn(
        &self,
        messages: &[OutboundMessage],
        outcomes: &[PublishOutcome],
        backoff: Backoff,
        now: Instant,
    ) -> Vec<(String, Duration)> {
        // A batch holds few topics: a short list beats hashing every message's topic twice.
        let mut seen: Vec<(&str, Learned)> = Vec::new();
        for (message, outcome) in messages.iter().zip(outcomes) {
            let index = seen
                .iter()
                .position(|(topic, _)| *topic == message.topic)
                .unwrap_or_else(|| {
                    seen.push((&message.topic, Learned::default()));
                    seen.len() - 1
                });
            let learned = &mut seen[index].1;
            match outcome {
                PublishOutcome::Published => learned.delivered = true,
                PublishOutcome::Unavailable(_) => learned.unreachable = true,
                PublishOutcome::Refused(_) | PublishOutcome::Held => {}
            }
        }
        let mut backing_off = Vec::new();
        for (topic, learned) in seen {
            if learned.delivered {
                self.delivered(topic);
            }
            if learned.unreachable {
                backing_off.push((topic.to_owned(), self.back_off(topic, backoff, now)));
            }
        }
        backing_off
    }

    /// The transport did not answer for `topic`'s messages: its rows wait `backoff` (growing
    /// with each consecutive failure) before they are claimed again. Returns the wait.
    fn back_off(&self, topic: &str, backoff: Backoff, now: Instant) -> Duration {
        self.with(|states| {
            let state = states.entry(topic.to_owned()).or_default();
            state.failures = state.failures.saturating_add(1);
            let delay = backoff.delay_with_random_jitter(state.failures);
            state.cooling_until = Some(now + delay);
            delay
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tests::message;

    const FAST: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));

    #[tokio::test(start_paused = true)]
    async fn a_batch_backs_off_only_the_topics_the_transport_did_not_answer_for() {
        let topics = Topics::default();
        let messages = [
            message("up", "o-1", 1),
            message("refused", "o-2", 1),
            message("down", "o-3", 1),
            message("down", "o-3", 2),
        ];
        let outcomes = [
            PublishOutcome::Published,
            PublishOutcome::Refused("too large".into()),
            PublishOutcome::Unavailable("timed out".into()),
            PublishOutcome::Held,
        ];
        let now = Instant::now();
        let backing_off = topics.learn(&messages, &outcomes, FAST, now);
        assert_eq!(backing_off.len(), 1);
        assert_eq!(backing_off[0].0, "down");
        assert_eq!(topics.cooling(now), vec!["down"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_topic_backs_off_alone_and_longer_each_time_until_a_delivery() {
        let topics = Topics::default();
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
