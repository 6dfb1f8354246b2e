//! [`InProcessTransport`]: the outbox's events delivered inside one process, with Postgres as
//! the only server.
//!
//! A publish routes each message to one member of every consumer group subscribed to its
//! topic (`registry`: by the hash of the key, so an aggregate stays with one member), puts it
//! in that member's bounded queue, and **waits until every group answered**: applied (its
//! inbox transaction committed), refused (its handler kept failing) or held (an earlier
//! message of the aggregate was refused). Only then does the relay mark the row published, so
//! the outbox row is the durable copy until every group has applied the event.

mod registry;
mod subscription;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use self::registry::{AbandonOnDrop, Parcel, Registry, Reply, Routed, Routing};
use self::subscription::InProcessSubscription;
use crate::error::{Error, Result};
use crate::transport::{
    dlq_topic, DeadLetter, DeadLetterRecord, DeliveryContent, EventTransport, OutboundMessage,
    PublishOutcome, Subscription,
};

/// Configures an [`InProcessTransport`].
#[derive(Debug, Clone)]
#[must_use]
pub struct InProcessTransportBuilder {
    queue_capacity: usize,
    ack_timeout: Duration,
}

impl InProcessTransportBuilder {
    /// Messages a consumer group member's queue holds before a publish waits for room
    /// (default 256; at least 1): the relay never runs further ahead of a slow consumer.
    pub fn queue_capacity(mut self, messages: usize) -> Self {
        self.queue_capacity = messages.max(1);
        self
    }

    /// How long a publish waits for every group to answer (default 30 s). A group that does
    /// not answer in time (its consumer stopped, or is stuck) makes the message
    /// [`PublishOutcome::Unavailable`]: no attempt counted, the row stays pending and the
    /// relay publishes it again after backing off; what the group still has queued of it is
    /// skipped. Keep it above a handler's retries (`InboxConsumerBuilder::handler_attempts`
    /// times its backoff), or a failing handler is reported as an outage instead of a
    /// refusal.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// The transport.
    #[must_use]
    pub fn build(self) -> InProcessTransport {
        InProcessTransport {
            registry: Arc::new(Registry::default()),
            settings: self,
        }
    }
}

/// The in-process implementation of [`EventTransport`]: events from the relay to consumers
/// in the same process, through bounded queues, with the guarantees of Kafka plus the inbox.
///
/// - **Committed before delivered**: only committed outbox rows reach it (the relay claims
///   those only).
/// - **Durable**: a publish returns only when every consumer group subscribed to the topic
///   has applied the message; a crash before that leaves the row pending, and it is published
///   again at restart (the inbox absorbs the duplicate).
/// - **Per-aggregate order per group**: one aggregate's messages of a publish go to one
///   member, in order; if the member refuses one, the later ones are held; the relay
///   publishes an aggregate's next event only after this one was applied everywhere.
/// - **Failures**: a refusal counts as a failed attempt; after the relay's `max_attempts`
///   the row is a dead letter (listed and replayed as with Kafka).
/// - **Backpressure**: bounded queues ([`InProcessTransportBuilder::queue_capacity`]).
///
/// A message reaches the groups subscribed **when it is published**: subscribe the
/// consumers (build them) before starting the relay. A topic that exists (created by
/// [`EventTransport::ensure_topics`] or by a subscription) but has no subscriber takes
/// messages and delivers them to nobody, as a Kafka topic nobody reads; a topic that does not
/// exist refuses them (an attempt each: a wrong route ends as a dead letter, as on a broker
/// without auto-creation).
///
/// ```no_run
/// use std::sync::Arc;
/// use commerce_outbox::{EventTransport, InProcessTransport, Relay};
///
/// # async fn run(pool: sqlx::PgPool) -> commerce_outbox::Result<()> {
/// let events: Arc<dyn EventTransport> = Arc::new(InProcessTransport::new());
/// events.ensure_topics(&["orders"]).await?;
/// // Build the consumers first (InboxConsumer::with_transport), then the relay.
/// let relay = Relay::with_transport(pool, events).build()?.spawn();
/// # relay.shutdown().await }
/// ```
#[derive(Debug)]
pub struct InProcessTransport {
    registry: Arc<Registry>,
    settings: InProcessTransportBuilder,
}

impl Default for InProcessTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessTransport {
    /// A transport with the default settings (see [`InProcessTransportBuilder`]).
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder.
    pub fn builder() -> InProcessTransportBuilder {
        InProcessTransportBuilder {
            queue_capacity: 256,
            ack_timeout: Duration::from_secs(30),
        }
    }

    /// The consumer groups subscribed to `topic` now, with their member counts, by name:
    /// the groups a message published now would reach.
    #[must_use]
    pub fn subscribers(&self, topic: &str) -> Vec<(String, usize)> {
        self.registry.groups(topic)
    }

    /// Delivers routed messages and collects every group's answer, within the ack timeout.
    /// Returns, per wait, the message index and the group's verdict.
    async fn deliver(&self, routing: Routing) -> Vec<(usize, PublishOutcome)> {
        let Routing {
            sends,
            waits,
            batches,
        } = routing;
        // However this ends, what is still queued of this publish is skipped afterwards.
        let _abandon = AbandonOnDrop(batches);
        let timeout = self.settings.ack_timeout;
        let deadline = Instant::now() + timeout;
        // In message order, so each member's queue holds an aggregate's messages in sequence
        // order. A full queue makes this wait: the backpressure.
        let sent = tokio::time::timeout_at(deadline, async move {
            for (queue, queued) in sends {
                // A member that left drops the message, and its reply with it.
                let _ = queue.send(queued).await;
            }
        })
        .await
        .is_ok();
        let mut verdicts = Vec::with_capacity(waits.len());
        for wait in waits {
            let verdict = match tokio::time::timeout_at(deadline, wait.reply).await {
                Ok(Ok(Reply::Applied)) => PublishOutcome::Published,
                Ok(Ok(Reply::Held)) => PublishOutcome::Held,
                Ok(Ok(Reply::Refused(error))) => {
                    PublishOutcome::Refused(format!("consumer group {}: {error}", wait.group))
                }
                Ok(Err(_)) if sent && Instant::now() < deadline => PublishOutcome::Unavailable(
                    format!("consumer group {} left before applying it", wait.group),
                ),
                Ok(Err(_)) | Err(_) => PublishOutcome::Unavailable(format!(
                    "consumer group {} did not apply it within {timeout:?}",
                    wait.group
                )),
            };
            verdicts.push((wait.index, verdict));
        }
        verdicts
    }
}

/// How bad an outcome is, to combine the answers of several groups: one refusal refuses the
/// message, one group that did not answer makes it unavailable, one hold holds it.
fn severity(outcome: &PublishOutcome) -> u8 {
    match outcome {
        PublishOutcome::Published => 0,
        PublishOutcome::Held => 1,
        PublishOutcome::Unavailable(_) => 2,
        PublishOutcome::Refused(_) => 3,
    }
}

fn unknown_topic(topic: &str) -> String {
    format!("topic {topic} does not exist in the in-process transport (create it with ensure_topics, or subscribe to it)")
}

#[async_trait]
impl EventTransport for InProcessTransport {
    fn kind(&self) -> &'static str {
        "in-process"
    }

    async fn ensure_topics(&self, topics: &[&str]) -> Result<()> {
        self.registry
            .declare(topics.iter().flat_map(|t| [(*t).to_owned(), dlq_topic(t)]));
        Ok(())
    }

    async fn publish(&self, messages: &[OutboundMessage]) -> Vec<PublishOutcome> {
        let parcels: Vec<Arc<Parcel>> = messages
            .iter()
            .map(|message| {
                let content = DeliveryContent::Event(Arc::new(message.envelope.clone()));
                Arc::new(Parcel::of(message, content))
            })
            .collect();
        let (routing, routed) = self.registry.route(&parcels);
        let mut outcomes: Vec<PublishOutcome> = messages
            .iter()
            .zip(routed)
            .map(|(message, routed)| match routed {
                Routed::ToGroups => PublishOutcome::Published,
                Routed::UnknownTopic => PublishOutcome::Refused(unknown_topic(&message.topic)),
                Routed::Held => PublishOutcome::Held,
            })
            .collect();
        for (index, verdict) in self.deliver(routing).await {
            if severity(&verdict) > severity(&outcomes[index]) {
                outcomes[index] = verdict;
            }
        }
        outcomes
    }

    async fn publish_dead_letter(&self, letter: DeadLetter<'_>) -> Result<()> {
        let topic = dlq_topic(&letter.message.topic);
        if !self.registry.is_declared(&topic) {
            return Err(Error::UnknownTopic { topic });
        }
        let record = DeadLetterRecord {
            envelope: letter.message.envelope.clone(),
            error: letter.error.to_owned(),
            attempts: letter.attempts,
            payload_omitted: false,
        };
        let mut parcel = Parcel::of(
            letter.message,
            DeliveryContent::DeadLetter(Arc::new(record)),
        );
        parcel.topic.clone_from(&topic);
        parcel.headers.push((
            crate::transport::HEADER_ERROR.to_owned(),
            letter.error.to_owned(),
        ));
        let (routing, _) = self.registry.route(&[Arc::new(parcel)]);
        let problems: Vec<String> = self
            .deliver(routing)
            .await
            .into_iter()
            .filter_map(|(_, verdict)| match verdict {
                PublishOutcome::Published | PublishOutcome::Held => None,
                PublishOutcome::Refused(error) | PublishOutcome::Unavailable(error) => Some(error),
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Publish {
                topic,
                reason: problems.join("; "),
            })
        }
    }

    fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Subscription>> {
        Ok(Box::new(InProcessSubscription::join(
            Arc::clone(&self.registry),
            group,
            topics,
            self.settings.queue_capacity,
        )))
    }

    async fn flush(&self, _timeout: Duration) -> Result<()> {
        // A publish returns only once every group answered or it gave up: nothing is ever
        // left buffered here.
        Ok(())
    }
}

#[cfg(test)]
mod tests;
