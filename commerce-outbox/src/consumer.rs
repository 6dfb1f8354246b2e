//! An idempotent Kafka consumer: inbox + handler in one transaction, offsets after commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::event::Envelope;
use crate::inbox::record_once;
use crate::shutdown::sleep_or_shutdown;

/// What a handler returns on failure: any error; the event is retried.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Applies one event's effect inside the consumer's transaction.
///
/// The runner has already recorded the event in the inbox on `conn`; the handler's writes
/// (and any events it enqueues) commit together with that record. Returning an error rolls
/// everything back and the same event is retried with backoff, blocking its partition so
/// order holds: report business failures as data (e.g. emit a compensation event), not as
/// errors.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Handles `envelope` on `conn` (inside the transaction).
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> std::result::Result<(), HandlerError>;
}

/// Configures an [`InboxConsumer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct InboxConsumerBuilder {
    pool: PgPool,
    brokers: String,
    group_id: String,
    consumer_name: String,
    topics: Vec<String>,
    overrides: Vec<(String, String)>,
    retry_backoff: Backoff,
}

impl InboxConsumerBuilder {
    /// Topics to subscribe to.
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }

    /// Overrides a librdkafka consumer setting (e.g. `auto.offset.reset`,
    /// `session.timeout.ms`). Auto-commit stays off: the runner commits offsets itself.
    pub fn consumer_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.overrides.push((key.into(), value.into()));
        self
    }

    /// Wait between retries of a failing handler (default 100 ms up to 30 s).
    pub fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Creates the Kafka consumer and subscribes.
    ///
    /// # Errors
    /// [`Error::Kafka`] when librdkafka rejects the configuration or the subscription.
    pub fn build<H: EventHandler>(self, handler: H) -> Result<InboxConsumer<H>> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        for (key, value) in &self.overrides {
            config.set(key, value);
        }
        // After the overrides: committing only after the database commit is the point.
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let consumer: StreamConsumer = config.create()?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(InboxConsumer {
            consumer,
            handler,
            settings: self,
            stats: Arc::new(Counters::default()),
        })
    }
}

#[derive(Debug, Default)]
struct Counters {
    applied: AtomicU64,
    duplicates: AtomicU64,
    failures: AtomicU64,
    skipped: AtomicU64,
}

/// Counters of an [`InboxConsumer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsumerStats {
    /// Events whose effect was applied (first delivery).
    pub applied: u64,
    /// Redeliveries absorbed by the inbox.
    pub duplicates: u64,
    /// Handler or database failures (each retried).
    pub failures: u64,
    /// Messages that are not outbox envelopes (logged and skipped).
    pub skipped: u64,
}

/// A consumer-group member that applies each event exactly once through the inbox.
///
/// Per message: begin, [`record_once`], the handler (only for a first delivery), commit,
/// then commit the Kafka offset. A crash between the database commit and the offset
/// commit redelivers the message, and the inbox skips it. Instances with the same group id
/// share the partitions.
pub struct InboxConsumer<H> {
    consumer: StreamConsumer,
    handler: H,
    settings: InboxConsumerBuilder,
    stats: Arc<Counters>,
}

impl<H> std::fmt::Debug for InboxConsumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxConsumer")
            .field("group_id", &self.settings.group_id)
            .field("consumer_name", &self.settings.consumer_name)
            .finish_non_exhaustive()
    }
}

impl InboxConsumer<()> {
    /// A builder: `consumer_name` keys the inbox (one per logical consumer; instances of it
    /// share it), `group_id` is the Kafka consumer group.
    pub fn builder(
        pool: PgPool,
        brokers: impl Into<String>,
        group_id: impl Into<String>,
        consumer_name: impl Into<String>,
    ) -> InboxConsumerBuilder {
        InboxConsumerBuilder {
            pool,
            brokers: brokers.into(),
            group_id: group_id.into(),
            consumer_name: consumer_name.into(),
            topics: Vec::new(),
            overrides: Vec::new(),
            retry_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
        }
    }
}

impl<H: EventHandler> InboxConsumer<H> {
    /// Runs the consumer in a task owned by the returned handle.
    #[must_use]
    pub fn spawn(self) -> ConsumerHandle {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let stats = Arc::clone(&self.stats);
        let task = tasks.spawn(self.run(shutdown.clone()));
        tasks.close();
        ConsumerHandle {
            shutdown,
            tasks,
            stats,
            task,
        }
    }

    async fn run(self, shutdown: CancellationToken) -> Result<()> {
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                received = self.consumer.recv() => received.map(|m| m.detach()),
            };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(consumer = %self.settings.consumer_name, %error, "kafka receive failed; retrying");
                    if sleep_or_shutdown(Duration::from_millis(200), &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            if !self.apply_with_retry(&message, &shutdown).await {
                break;
            }
            self.commit_offset(&message)?;
        }
        self.consumer.unsubscribe();
        Ok(())
    }

    /// Returns false when shutdown interrupted the retries (the offset is then not committed).
    async fn apply_with_retry(&self, message: &OwnedMessage, shutdown: &CancellationToken) -> bool {
        let envelope = match decode_envelope(message) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::error!(consumer = %self.settings.consumer_name, %error, "skipping a message that is not an outbox envelope");
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        };
        let mut failures = 0_u32;
        loop {
            match self.apply(&envelope).await {
                Ok(true) => {
                    self.stats.applied.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Ok(false) => {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(error) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    failures = failures.saturating_add(1);
                    let delay = self
                        .settings
                        .retry_backoff
                        .delay_with_random_jitter(failures);
                    tracing::warn!(
                        consumer = %self.settings.consumer_name, event_id = %envelope.id,
                        event_type = %envelope.event_type, attempts = failures, %error, ?delay,
                        "event handler failed; retrying (partition held to keep order)"
                    );
                    if sleep_or_shutdown(delay, shutdown).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn apply(&self, envelope: &Envelope) -> std::result::Result<bool, HandlerError> {
        let mut tx = self.settings.pool.begin().await?;
        if !record_once(&mut tx, &self.settings.consumer_name, envelope.id).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        self.handler.handle(&mut tx, envelope).await?;
        tx.commit().await?;
        Ok(true)
    }

    fn commit_offset(&self, message: &OwnedMessage) -> Result<()> {
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(
            message.topic(),
            message.partition(),
            Offset::Offset(message.offset() + 1),
        )?;
        // Async: a lost offset commit only means a redelivery, which the inbox absorbs.
        self.consumer.commit(&offsets, CommitMode::Async)?;
        Ok(())
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

/// Owns a running [`InboxConsumer`].
#[derive(Debug)]
pub struct ConsumerHandle {
    shutdown: CancellationToken,
    tasks: TaskTracker,
    stats: Arc<Counters>,
    /// The consumer loop's own handle, for its result.
    task: JoinHandle<Result<()>>,
}

impl ConsumerHandle {
    /// Counters so far.
    #[must_use]
    pub fn stats(&self) -> ConsumerStats {
        ConsumerStats {
            applied: self.stats.applied.load(Ordering::Relaxed),
            duplicates: self.stats.duplicates.load(Ordering::Relaxed),
            failures: self.stats.failures.load(Ordering::Relaxed),
            skipped: self.stats.skipped.load(Ordering::Relaxed),
        }
    }

    /// Stops after the message in hand (its transaction commits or rolls back first) and
    /// leaves the consumer group.
    ///
    /// # Errors
    /// The loop's error (an offset commit librdkafka refused), or [`Error::Task`] on a panic.
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown.cancel();
        let outcome = self.task.await.map_err(|e| Error::Task(e.to_string()));
        self.tasks.wait().await;
        outcome?
    }
}
