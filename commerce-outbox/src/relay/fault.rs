//! Whose fault a failed publish is: the event's (an attempt is counted, and enough of them
//! make a dead letter) or the broker's (no attempt; the topic backs off).

use std::collections::HashMap;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::claim::ClaimedRow;
use super::publish::RowOutcome;
use super::topics::TopicStatus;

/// The first verdict from librdkafka's error code alone.
pub(crate) fn classify(error: &KafkaError) -> RowOutcome {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        // No answer about this message: the broker may be down, or only this message's
        // topic or partition may be in trouble. `attribute` decides which.
        Some(
            C::MessageTimedOut
            | C::RequestTimedOut
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::ReplicaNotAvailable
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::KafkaStorageError,
        ) => RowOutcome::Undelivered(error.to_string()),
        // The broker connection or this producer is in trouble: nothing to do with the event.
        Some(
            C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::BrokerDestroy
            | C::DestroyBroker
            | C::Resolve
            | C::QueueFull
            | C::TimedOutQueue
            | C::OperationTimedOut
            | C::NetworkException
            | C::BrokerNotAvailable
            | C::ISRInsufficient
            | C::Fatal
            | C::PurgeQueue
            | C::PurgeInflight
            | C::OutOfOrderSequenceNumber
            | C::UnknownProducerId
            | C::InvalidProducerEpoch
            | C::ProducerFenced
            | C::ThrottlingQuotaExceeded
            | C::Retry,
        ) => RowOutcome::Unavailable(error.to_string()),
        // A refusal of this very message (too large, invalid, unknown topic, policy).
        _ => RowOutcome::Rejected(error.to_string()),
    }
}

/// The error recorded for a row whose topic the broker says does not exist.
pub(crate) fn missing_topic(topic: &str) -> String {
    format!("topic {topic} does not exist on the broker (create it, e.g. with ensure_topics)")
}

/// Settles every `Undelivered` outcome, given what the broker said about the rows' topics
/// just after the failures (`statuses`).
///
/// - The topic does not exist, or the broker reports an error for it: the broker answers
///   and this topic is the problem, so it is an attempt.
/// - The topic is fine and the broker acknowledged other messages of this batch: the broker
///   answers, just not for this message, so it is an attempt too.
/// - Otherwise (no answer to the lookup, or nothing acknowledged at all) this looks like
///   the broker or the producer being down: no attempt, and the topic backs off.
///
/// Without this, a message the broker never answers for would be retried forever, each
/// time holding its batch for the delivery timeout, and never become a dead letter.
pub(crate) fn attribute(
    rows: &[ClaimedRow],
    outcomes: Vec<RowOutcome>,
    statuses: &HashMap<String, TopicStatus>,
) -> Vec<RowOutcome> {
    let broker_acknowledged = outcomes.contains(&RowOutcome::Published);
    rows.iter()
        .zip(outcomes)
        .map(|(row, outcome)| {
            let RowOutcome::Undelivered(error) = outcome else {
                return outcome;
            };
            match statuses.get(&row.topic) {
                Some(TopicStatus::Missing) => {
                    RowOutcome::Rejected(format!("{}; {error}", missing_topic(&row.topic)))
                }
                Some(TopicStatus::Degraded(reason)) => RowOutcome::Rejected(format!(
                    "{error}; the broker reports for topic {}: {reason}",
                    row.topic
                )),
                Some(TopicStatus::Ready) if broker_acknowledged => RowOutcome::Rejected(format!(
                    "{error}, while the broker acknowledged other messages"
                )),
                Some(TopicStatus::Ready | TopicStatus::Unreachable(_)) | None => {
                    RowOutcome::Unavailable(error)
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;

    fn row(topic: &str) -> ClaimedRow {
        ClaimedRow {
            id: Uuid::now_v7(),
            topic: topic.into(),
            event_type: "e".into(),
            aggregate_type: "order".into(),
            aggregate_id: Uuid::now_v7().to_string(),
            aggregate_seq: 1,
            occurred_at: Utc::now(),
            schema_version: 1,
            payload: serde_json::Value::Null,
            attempts: 0,
            aggregate_head: 1,
        }
    }

    fn timed_out() -> RowOutcome {
        RowOutcome::Undelivered("Local: Message timed out".into())
    }

    fn statuses(of: &[(&str, TopicStatus)]) -> HashMap<String, TopicStatus> {
        of.iter()
            .map(|(topic, status)| ((*topic).to_owned(), status.clone()))
            .collect()
    }

    #[test]
    fn broker_outages_are_not_the_events_fault() {
        for code in [
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::Fatal,
        ] {
            assert!(matches!(
                classify(&KafkaError::MessageProduction(code)),
                RowOutcome::Unavailable(_)
            ));
        }
    }

    #[test]
    fn refusals_of_the_message_count_as_attempts() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            assert!(matches!(
                classify(&KafkaError::MessageProduction(code)),
                RowOutcome::Rejected(_)
            ));
        }
    }

    #[test]
    fn a_timeout_is_settled_by_what_the_broker_says_afterwards() {
        assert!(matches!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut
            )),
            RowOutcome::Undelivered(_)
        ));
    }

    #[test]
    fn a_timeout_for_a_missing_topic_is_an_attempt_naming_the_topic() {
        let rows = [row("gone")];
        let outcomes = attribute(
            &rows,
            vec![timed_out()],
            &statuses(&[("gone", TopicStatus::Missing)]),
        );
        let [RowOutcome::Rejected(error)] = outcomes.as_slice() else {
            panic!("{outcomes:?}");
        };
        assert!(error.contains("topic gone does not exist"), "{error}");
    }

    #[test]
    fn a_timeout_while_the_broker_acknowledges_others_is_an_attempt() {
        let rows = [row("t"), row("t")];
        let outcomes = attribute(
            &rows,
            vec![timed_out(), RowOutcome::Published],
            &statuses(&[("t", TopicStatus::Ready)]),
        );
        assert!(
            matches!(outcomes[0], RowOutcome::Rejected(_)),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[1], RowOutcome::Published);
    }

    #[test]
    fn a_timeout_with_a_degraded_topic_is_an_attempt() {
        let rows = [row("t")];
        let outcomes = attribute(
            &rows,
            vec![timed_out()],
            &statuses(&[(
                "t",
                TopicStatus::Degraded("partition 0 has no leader".into()),
            )]),
        );
        assert!(
            matches!(outcomes[0], RowOutcome::Rejected(_)),
            "{outcomes:?}"
        );
    }

    #[test]
    fn timeouts_without_any_answer_are_an_outage() {
        let rows = [row("a"), row("b"), row("c")];
        let outcomes = attribute(
            &rows,
            vec![timed_out(), timed_out(), timed_out()],
            &statuses(&[
                ("a", TopicStatus::Unreachable("timed out".into())),
                // The broker answers metadata requests but acknowledged nothing: a wedged
                // producer, say. Not the event's fault either.
                ("b", TopicStatus::Ready),
            ]),
        );
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, RowOutcome::Unavailable(_))),
            "{outcomes:?}"
        );
    }
}
