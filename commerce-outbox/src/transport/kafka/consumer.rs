//! A consumer-group member on Kafka: librdkafka's `StreamConsumer`, offsets committed only
//! when the caller acknowledges (after its inbox transaction committed), and a watchdog that
//! makes the member join its group again when a partition it does not own stops being
//! consumed (see [`watch_orphans`]).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::event::Envelope;
use crate::transport::{
    DeadLetterRecord, Delivery, DeliveryContent, DeliveryPosition, Subscription,
};

/// Joins consumer group `group` on `topics` at `brokers`, with librdkafka consumer settings
/// `overrides` (auto-commit stays off whatever they say).
///
/// # Errors
/// [`Error::Kafka`] when librdkafka rejects the configuration or the subscription.
pub(crate) fn subscribe(
    brokers: &str,
    overrides: &[(String, String)],
    group: &str,
    topics: &[&str],
) -> Result<KafkaSubscription> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    for (key, value) in overrides {
        config.set(key, value);
    }
    // After the overrides: committing only after the database commit is the point.
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    let consumer: StreamConsumer = config.create()?;
    consumer.subscribe(topics)?;
    let consumer = Arc::new(consumer);
    let session = overrides
        .iter()
        .rev()
        .find(|(key, _)| key == "session.timeout.ms")
        .and_then(|(_, value)| value.parse().ok())
        .map_or(DEFAULT_SESSION_TIMEOUT, Duration::from_millis);
    let watchdog = tokio::runtime::Handle::try_current().ok().map(|runtime| {
        let topics = topics.iter().map(|&t| t.to_owned()).collect();
        runtime.spawn(watch_orphans(
            Arc::downgrade(&consumer),
            group.to_owned(),
            topics,
            session * ORPHAN_AFTER_SESSIONS,
        ))
    });
    Ok(KafkaSubscription {
        consumer,
        group: group.to_owned(),
        watchdog,
    })
}

/// librdkafka's `session.timeout.ms` when the overrides do not set it.
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(45);

/// A partition not consumed for this many session timeouts has no live owner: by then the
/// coordinator has noticed any dead member and a rebalance has had its time.
const ORPHAN_AFTER_SESSIONS: u32 = 2;

/// How long one probe of the group's offsets may wait for the broker.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Watches, for as long as its subscription lives, the partitions of `topics` that this
/// member does not own: one whose committed offset in `group` stays behind the partition's
/// end without moving for `stall` has no live owner, and the member leaves the group and
/// joins it again, which makes the coordinator hand out every partition anew.
///
/// Against Apache Kafka this should never fire: a dead member's partitions move after its
/// session timeout. tansu 0.6 sometimes leaves them with nobody after a member was killed and
/// another joined (issue 18's fault suite: orders stayed CREATED for minutes on one or two
/// partitions of eight), and a stuck member of any broker looks the same. A live owner that
/// is merely slow costs one rebalance per `stall` at worst.
async fn watch_orphans(
    consumer: Weak<StreamConsumer>,
    group: String,
    topics: Vec<String>,
    stall: Duration,
) {
    let mut stalls = Stalls::new(stall);
    loop {
        tokio::time::sleep(stall / 4).await;
        let Some(member) = consumer.upgrade() else {
            return;
        };
        let probe = {
            let topics = topics.clone();
            tokio::task::spawn_blocking(move || lagging_elsewhere(&member, &topics)).await
        };
        let lagging = match probe {
            Ok(Ok(lagging)) => lagging,
            Ok(Err(error)) => {
                tracing::debug!(%group, %error, "could not probe the group's offsets");
                continue;
            }
            Err(_) => return, // the runtime is shutting down
        };
        let orphans = stalls.observe(lagging, Instant::now());
        if orphans.is_empty() {
            continue;
        }
        let Some(member) = consumer.upgrade() else {
            return;
        };
        tracing::warn!(
            %group,
            ?orphans,
            stalled_for = ?stall,
            "partitions no member consumes: leaving the group and joining again"
        );
        member.unsubscribe();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        if let Err(error) = member.subscribe(&topics) {
            tracing::error!(%group, %error, "could not join the group again");
        }
        stalls = Stalls::new(stall);
    }
}

/// A partition, by topic and number.
type Partition = (String, i32);

/// Which lagging partitions have not moved for the stall bound (see [`watch_orphans`]).
#[derive(Debug)]
struct Stalls {
    stall: Duration,
    /// Each lagging partition's committed offset, and since when it has been that.
    still: HashMap<Partition, (i64, Instant)>,
}

impl Stalls {
    fn new(stall: Duration) -> Self {
        Self {
            stall,
            still: HashMap::new(),
        }
    }

    /// Takes the partitions lagging at `now` with their committed offsets; returns those
    /// whose offset has not moved for the stall bound, sorted.
    fn observe(&mut self, lagging: HashMap<Partition, i64>, now: Instant) -> Vec<Partition> {
        self.still
            .retain(|partition, _| lagging.contains_key(partition));
        let mut orphans = Vec::new();
        for (partition, committed) in lagging {
            match self.still.get(&partition) {
                Some(&(before, since)) if before == committed => {
                    if now.duration_since(since) >= self.stall {
                        orphans.push(partition);
                    }
                }
                _ => {
                    self.still.insert(partition, (committed, now));
                }
            }
        }
        orphans.sort();
        orphans
    }
}

/// The partitions of `topics` that `consumer` does not own and whose committed offset in its
/// group is behind the partition's end, with that offset (the partition's start when the
/// group has none).
fn lagging_elsewhere(
    consumer: &StreamConsumer,
    topics: &[String],
) -> KafkaResult<HashMap<Partition, i64>> {
    let own = consumer.assignment()?;
    let mut others = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), PROBE_TIMEOUT)?;
        for partition in metadata
            .topics()
            .iter()
            .flat_map(rdkafka::metadata::MetadataTopic::partitions)
        {
            if own.find_partition(topic, partition.id()).is_none() {
                others.add_partition(topic, partition.id());
            }
        }
    }
    if others.count() == 0 {
        return Ok(HashMap::new());
    }
    let committed = consumer.committed_offsets(others, PROBE_TIMEOUT)?;
    let mut lagging = HashMap::new();
    for element in committed.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (low, high) = consumer.fetch_watermarks(topic, partition, PROBE_TIMEOUT)?;
        let at = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => low,
        };
        if at < high {
            lagging.insert((topic.to_owned(), partition), at);
        }
    }
    Ok(lagging)
}

/// A Kafka consumer-group member (see [`subscribe`]).
pub(crate) struct KafkaSubscription {
    consumer: Arc<StreamConsumer>,
    group: String,
    /// [`watch_orphans`], stopped with the subscription.
    watchdog: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        if let Some(watchdog) = &self.watchdog {
            watchdog.abort();
        }
    }
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Result<Delivery> {
        let message = self.consumer.recv().await?.detach();
        Ok(delivery_of(&message))
    }

    async fn acknowledge(&mut self, delivery: &Delivery) -> Result<()> {
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(
            &delivery.topic,
            delivery.position.partition,
            Offset::Offset(delivery.position.offset + 1),
        )?;
        // Async: a lost offset commit only means a redelivery, which the inbox absorbs.
        self.consumer.commit(&offsets, CommitMode::Async)?;
        Ok(())
    }

    async fn close(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
        self.consumer.unsubscribe();
    }
}

/// The delivery of a Kafka message: an envelope, a dead letter (the `.dlq` wrapper), or
/// unreadable.
fn delivery_of(message: &OwnedMessage) -> Delivery {
    let content = match message.payload() {
        None => DeliveryContent::Unreadable("no value".into()),
        Some(body) => match serde_json::from_slice::<Envelope>(body) {
            Ok(envelope) => DeliveryContent::Event(Arc::new(envelope)),
            Err(not_envelope) => match serde_json::from_slice::<DeadLetterRecord>(body) {
                Ok(letter) => DeliveryContent::DeadLetter(Arc::new(letter)),
                Err(_) => DeliveryContent::Unreadable(not_envelope.to_string()),
            },
        },
    };
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        header
                            .value
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Delivery {
        topic: message.topic().to_owned(),
        key: message
            .key()
            .map(|key| String::from_utf8_lossy(key).into_owned()),
        headers,
        position: DeliveryPosition {
            partition: message.partition(),
            offset: message.offset(),
        },
        content,
    }
}

/// Decodes an outbox message's value into its [`Envelope`].
///
/// # Errors
/// [`Error::NotAnEnvelope`] when the message has no value or it is not an envelope.
pub fn decode_envelope<M: Message>(message: &M) -> Result<Envelope> {
    let not_envelope = |reason: String| Error::NotAnEnvelope {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        reason,
    };
    let body = message
        .payload()
        .ok_or_else(|| not_envelope("no value".into()))?;
    serde_json::from_slice(body).map_err(|e| not_envelope(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(20);

    fn lagging(partitions: &[(i32, i64)]) -> HashMap<Partition, i64> {
        partitions
            .iter()
            .map(|&(p, offset)| (("orders".to_owned(), p), offset))
            .collect()
    }

    #[test]
    fn a_partition_whose_offset_does_not_move_for_the_bound_is_an_orphan() {
        let mut stalls = Stalls::new(STALL);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(stalls.observe(lagging(&[(3, 10), (5, 7)]), t0).is_empty());
        assert!(stalls
            .observe(lagging(&[(3, 10), (5, 9)]), t0 + s(10))
            .is_empty());
        // Partition 3 has not moved for 20 s; 5 moved 10 s ago.
        assert_eq!(
            stalls.observe(lagging(&[(3, 10), (5, 9)]), t0 + s(20)),
            vec![("orders".to_owned(), 3)]
        );
        assert_eq!(
            stalls.observe(lagging(&[(3, 10), (5, 9)]), t0 + s(30)),
            vec![("orders".to_owned(), 3), ("orders".to_owned(), 5)]
        );
    }

    #[test]
    fn a_partition_that_caught_up_starts_over_when_it_lags_again() {
        let mut stalls = Stalls::new(STALL);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(stalls.observe(lagging(&[(1, 4)]), t0).is_empty());
        // Caught up (not lagging), then behind again at the same offset: a new stall.
        assert!(stalls.observe(lagging(&[]), t0 + s(15)).is_empty());
        assert!(stalls.observe(lagging(&[(1, 4)]), t0 + s(25)).is_empty());
        assert!(stalls.observe(lagging(&[(1, 4)]), t0 + s(40)).is_empty());
        assert_eq!(stalls.observe(lagging(&[(1, 4)]), t0 + s(45)).len(), 1);
    }
}
