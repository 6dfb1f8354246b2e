//! Whose fault a failed publish is: the event's (an attempt is counted, and enough of them
//! make a dead letter) or the broker's (no attempt; the topic backs off).

use std::collections::HashMap;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::producer::Sent;
use super::topics::TopicStatus;
use crate::transport::{OutboundMessage, PublishOutcome};

/// The first verdict from librdkafka's error code alone.
pub(super) fn classify(error: &KafkaError) -> Sent {
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
        ) => Sent::Undelivered(error.to_string()),
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
        ) => Sent::Settled(PublishOutcome::Unavailable(error.to_string())),
        // A refusal of this very message (too large, invalid, unknown topic, policy).
        _ => Sent::Settled(PublishOutcome::Refused(error.to_string())),
    }
}

/// The error recorded for a row whose topic the broker says does not exist.
pub(super) fn missing_topic(topic: &str) -> String {
    format!("topic {topic} does not exist on the broker (create it, e.g. with ensure_topics)")
}

/// Settles every `Undelivered` verdict, given what the broker said about the messages'
/// topics just after the failures (`statuses`).
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
pub(super) fn attribute(
    messages: &[OutboundMessage],
    verdicts: Vec<Sent>,
    statuses: &HashMap<String, TopicStatus>,
) -> Vec<PublishOutcome> {
    let broker_acknowledged = verdicts.contains(&Sent::published());
    messages
        .iter()
        .zip(verdicts)
        .map(|(message, verdict)| {
            let error = match verdict {
                Sent::Settled(outcome) => return outcome,
                Sent::Undelivered(error) => error,
            };
            let topic = &message.topic;
            match statuses.get(topic) {
                Some(TopicStatus::Missing) => {
                    PublishOutcome::Refused(format!("{}; {error}", missing_topic(topic)))
                }
                Some(TopicStatus::Degraded(reason)) => PublishOutcome::Refused(format!(
                    "{error}; the broker reports for topic {topic}: {reason}"
                )),
                Some(TopicStatus::Ready) if broker_acknowledged => PublishOutcome::Refused(
                    format!("{error}, while the broker acknowledged other messages"),
                ),
                Some(TopicStatus::Ready | TopicStatus::Unreachable(_)) | None => {
                    PublishOutcome::Unavailable(error)
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tests::message;

    fn timed_out() -> Sent {
        Sent::Undelivered("Local: Message timed out".into())
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
                Sent::Settled(PublishOutcome::Unavailable(_))
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
                Sent::Settled(PublishOutcome::Refused(_))
            ));
        }
    }

    #[test]
    fn a_timeout_is_settled_by_what_the_broker_says_afterwards() {
        assert!(matches!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut
            )),
            Sent::Undelivered(_)
        ));
    }

    #[test]
    fn a_timeout_for_a_missing_topic_is_an_attempt_naming_the_topic() {
        let messages = [message("gone", "o-1", 1)];
        let outcomes = attribute(
            &messages,
            vec![timed_out()],
            &statuses(&[("gone", TopicStatus::Missing)]),
        );
        let [PublishOutcome::Refused(error)] = outcomes.as_slice() else {
            panic!("{outcomes:?}");
        };
        assert!(error.contains("topic gone does not exist"), "{error}");
    }

    #[test]
    fn a_timeout_while_the_broker_acknowledges_others_is_an_attempt() {
        let messages = [message("t", "o-1", 1), message("t", "o-2", 1)];
        let outcomes = attribute(
            &messages,
            vec![timed_out(), Sent::published()],
            &statuses(&[("t", TopicStatus::Ready)]),
        );
        assert!(
            matches!(outcomes[0], PublishOutcome::Refused(_)),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[1], PublishOutcome::Published);
    }

    #[test]
    fn a_timeout_with_a_degraded_topic_is_an_attempt() {
        let messages = [message("t", "o-1", 1)];
        let outcomes = attribute(
            &messages,
            vec![timed_out()],
            &statuses(&[(
                "t",
                TopicStatus::Degraded("partition 0 has no leader".into()),
            )]),
        );
        assert!(
            matches!(outcomes[0], PublishOutcome::Refused(_)),
            "{outcomes:?}"
        );
    }

    #[test]
    fn timeouts_without_any_answer_are_an_outage() {
        let messages = [
            message("a", "o-1", 1),
            message("b", "o-2", 1),
            message("c", "o-3", 1),
        ];
        let outcomes = attribute(
            &messages,
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
                .all(|o| matches!(o, PublishOutcome::Unavailable(_))),
            "{outcomes:?}"
        );
    }
}
