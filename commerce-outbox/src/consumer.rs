//! An idempotent consumer on any [`EventTransport`]: inbox + handler in one transaction, the
//! delivery acknowledged only after that commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::dead_letter::set_aside;
use crate::error::{Error, Result};
use crate::event::Envelope;
use crate::event::EventId;
use crate::inbox::{record_all_once, record_once};
use crate::shutdown::sleep_or_shutdown;
use crate::transport::{kafka_subscribe, Delivery, DeliveryContent, EventTransport, Subscription};
use crate::unprocessable::UnprocessableEvent;

/// What a handler returns on failure: any error. The event is retried, unless the error is
/// (or wraps) an [`UnprocessableEvent`]: then it is set aside as a consumer dead letter.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Applies one event's effect inside the consumer's transaction.
///
/// The runner has already recorded the event in the inbox on `conn`; the handler's writes
/// (and any events it enqueues) commit together with that record. Returning an error rolls
/// everything back; what happens next depends on the error:
///
/// - **A plain error means "not now"** (database down, a lock timeout, a service not
///   answering): the same event is retried with backoff, holding the events behind it so
///   order holds. On Kafka it is retried until it succeeds, however long the outage lasts
///   (no bound: an outage must not turn events into dead letters); in-process
///   [`InboxConsumerBuilder::handler_attempts`] times, then it goes back to the relay as a
///   failed attempt.
/// - **An [`UnprocessableEvent`] means "never"**: data no retry can fix (a payload that does
///   not deserialize: use [`Envelope::decode_payload`] or
///   [`.unprocessable()`](crate::UnprocessableExt::unprocessable); a value the domain
///   refuses for good). The runner records the event in the inbox and in the consumer dead
///   letters ([`crate::dead_letter::list_consumer_dead_letters`]) in a new transaction,
///   logs it at ERROR and acknowledges the delivery, so the events behind it go on. An
///   operator replays it through the handler once the cause is fixed
///   ([`crate::dead_letter::replay_consumer_dead_letter`]) or discards it. If that write
///   fails too, the event is retried as for a plain error: a delivery is acknowledged only
///   once the event was applied or recorded.
///
/// Report business outcomes as data (e.g. emit a compensation event), not as errors.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Handles `envelope` on `conn` (inside the transaction).
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> std::result::Result<(), HandlerError>;

    /// Handles several first deliveries, in delivery order, on `conn` inside one
    /// transaction (a consumer built with [`InboxConsumerBuilder::max_batch`] above 1). The
    /// default handles each in turn with [`EventHandler::handle`], each under its own trace
    /// context ([`crate::trace`]); override it to write many effects in one statement (the
    /// batch then runs under its events' trace only when they share one). Any error rolls the
    /// whole batch back, and the runner then applies the events one by one with
    /// [`EventHandler::handle`] (so an unprocessable event is set aside alone, and the others
    /// still apply).
    async fn handle_batch(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> std::result::Result<(), HandlerError> {
        for envelope in envelopes {
            crate::trace::scope(
                envelope.traceparent.clone(),
                self.handle(&mut *conn, envelope),
            )
            .await?;
        }
        Ok(())
    }

    /// Whether this handler acts on `envelope` at all (by its type, say). An event it does
    /// not act on is acknowledged in its place in the delivery order without a transaction
    /// or an inbox row: there is no effect to apply, so none to deduplicate. The default acts
    /// on every event; a handler whose `handle` ignores some types says so here, and saves a
    /// transaction (or a batch's inbox rows) for each of them.
    fn handles(&self, envelope: &Envelope) -> bool {
        let _ = envelope;
        true
    }
}

/// Where the consumer receives from.
#[derive(Debug, Clone)]
enum Source {
    /// A Kafka consumer of its own, at these brokers.
    Kafka(String),
    /// A transport given by the caller.
    Transport(Arc<dyn EventTransport>),
}

/// Configures an [`InboxConsumer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct InboxConsumerBuilder {
    pool: PgPool,
    source: Source,
    group_id: String,
    consumer_name: String,
    topics: Vec<String>,
    consumer_overrides: Vec<(String, String)>,
    retry_backoff: Backoff,
    handler_attempts: u32,
    max_batch: usize,
}

impl InboxConsumerBuilder {
    fn new(pool: PgPool, source: Source, group_id: String, consumer_name: String) -> Self {
        Self {
            pool,
            source,
            group_id,
            consumer_name,
            topics: Vec::new(),
            consumer_overrides: Vec::new(),
            retry_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            handler_attempts: 3,
            max_batch: 1,
        }
    }

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
    /// `session.timeout.ms`) of the consumer [`InboxConsumer::builder`] creates. Auto-commit
    /// stays off: the runner commits offsets itself. A consumer built
    /// [`InboxConsumer::with_transport`] refuses it at [`InboxConsumerBuilder::build`]: set
    /// it on the [`crate::KafkaTransport`] instead.
    pub fn consumer_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.consumer_overrides.push((key.into(), value.into()));
        self
    }

    /// Wait between retries of a failing handler (default 100 ms up to 30 s).
    pub fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Tries of a failing handler before its event goes back to the relay as a failed
    /// attempt (default 3; at least 1), on transports that can take a delivery back
    /// ([`Subscription::can_refuse`]: in-process). On Kafka a failing event is retried until
    /// it succeeds. Either way this bounds transient failures only: an
    /// [`UnprocessableEvent`] is set aside at the first try (see [`EventHandler`]).
    pub fn handler_attempts(mut self, attempts: u32) -> Self {
        self.handler_attempts = attempts.max(1);
        self
    }

    /// Deliveries applied in one transaction, at most (default 1: one transaction per
    /// event). Above 1, the consumer takes the deliveries already waiting when one arrives
    /// (it never waits to fill a batch), records them in the inbox at once and hands the
    /// first deliveries to [`EventHandler::handle_batch`]; a batch that fails is applied
    /// again one event at a time, with the usual retries and dead letters. Order within the
    /// batch is delivery order.
    pub fn max_batch(mut self, deliveries: usize) -> Self {
        self.max_batch = deliveries.max(1);
        self
    }

    /// Joins the consumer group (Kafka: creates the consumer and subscribes; in-process:
    /// from now on the group gets every message published to the topics).
    ///
    /// # Errors
    /// [`Error::Kafka`] when librdkafka rejects the configuration or the subscription;
    /// [`Error::InvalidSetting`] for librdkafka settings on a consumer with a given transport.
    pub fn build<H: EventHandler>(self, handler: H) -> Result<InboxConsumer<H>> {
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        let subscription: Box<dyn Subscription> = match &self.source {
            Source::Kafka(brokers) => Box::new(kafka_subscribe(
                brokers,
                &self.consumer_overrides,
                &self.group_id,
                &topics,
            )?),
            Source::Transport(_) if !self.consumer_overrides.is_empty() => {
                return Err(Error::InvalidSetting {
                    setting: "consumer_config",
                    reason: "the consumer was given its transport; set librdkafka settings on the KafkaTransport".into(),
                });
            }
            Source::Transport(transport) => transport.subscribe(&self.group_id, &topics)?,
        };
        Ok(InboxConsumer {
            subscription,
            applier: Applier {
                handler,
                settings: self,
                stats: Arc::new(Counters::default()),
            },
        })
    }
}

#[derive(Debug, Default)]
struct Counters {
    applied: AtomicU64,
    duplicates: AtomicU64,
    failures: AtomicU64,
    refused: AtomicU64,
    skipped: AtomicU64,
    ignored: AtomicU64,
    dead_lettered: AtomicU64,
}

/// Counters of an [`InboxConsumer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsumerStats {
    /// Events whose effect was applied (first delivery).
    pub applied: u64,
    /// Redeliveries absorbed by the inbox.
    pub duplicates: u64,
    /// Transient handler or database failures (each retried), including failed writes of
    /// a consumer dead letter.
    pub failures: u64,
    /// Events handed back to the relay after `handler_attempts` failures (in-process).
    pub refused: u64,
    /// Deliveries that are not outbox events (dead letters, foreign messages): logged and
    /// skipped.
    pub skipped: u64,
    /// Events the handler does not act on ([`EventHandler::handles`]): acknowledged without
    /// a transaction or an inbox row.
    pub ignored: u64,
    /// Events the handler declared unprocessable ([`crate::UnprocessableEvent`]): recorded as
    /// consumer dead letters (see [`crate::dead_letter`]) and acknowledged, not retried.
    pub dead_lettered: u64,
}

/// A consumer-group member that applies each event exactly once through the inbox.
///
/// Per delivery: begin, [`record_once`], the handler (only for a first delivery), commit,
/// then acknowledge the delivery (Kafka: commit the offset). A crash between the database
/// commit and the acknowledgement delivers the event again, and the inbox skips it.
/// Instances with the same group id share the work.
pub struct InboxConsumer<H> {
    subscription: Box<dyn Subscription>,
    applier: Applier<H>,
}

/// Everything but the subscription: what handles one delivery (kept apart so handling
/// borrows nothing that is not `Sync`).
struct Applier<H> {
    handler: H,
    settings: InboxConsumerBuilder,
    stats: Arc<Counters>,
}

impl<H> std::fmt::Debug for InboxConsumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxConsumer")
            .field("group_id", &self.applier.settings.group_id)
            .field("consumer_name", &self.applier.settings.consumer_name)
            .finish_non_exhaustive()
    }
}

impl InboxConsumer<()> {
    /// A builder for a Kafka consumer at `brokers`: `consumer_name` keys the inbox (one per
    /// logical consumer; instances of it share it), `group_id` is the Kafka consumer group.
    /// The shorthand of [`InboxConsumer::with_transport`] with a Kafka consumer of its own.
    pub fn builder(
        pool: PgPool,
        brokers: impl Into<String>,
        group_id: impl Into<String>,
        consumer_name: impl Into<String>,
    ) -> InboxConsumerBuilder {
        InboxConsumerBuilder::new(
            pool,
            Source::Kafka(brokers.into()),
            group_id.into(),
            consumer_name.into(),
        )
    }

    /// A builder for a consumer receiving through `transport`: `consumer_name` keys the
    /// inbox, `group_id` is the consumer group.
    ///
    /// On the in-process transport, build (subscribe) the consumers before starting the
    /// relay: a message reaches the groups subscribed when it is published.
    pub fn with_transport(
        pool: PgPool,
        transport: Arc<dyn EventTransport>,
        group_id: impl Into<String>,
        consumer_name: impl Into<String>,
    ) -> InboxConsumerBuilder {
        InboxConsumerBuilder::new(
            pool,
            Source::Transport(transport),
            group_id.into(),
            consumer_name.into(),
        )
    }
}

/// What one try of an event came to, when it did not fail.
enum Outcome {
    /// The handler's effect committed with the inbox record.
    Applied,
    /// The inbox already held it: a redelivery.
    Duplicate,
    /// The handler declared it unprocessable: recorded in the inbox and set aside as a
    /// consumer dead letter.
    SetAside,
}

/// What became of one delivery.
enum Handled {
    /// Applied, absorbed as a duplicate, set aside or skipped: acknowledge it.
    Done,
    /// The handler kept failing: give it back (`can_refuse` subscriptions only).
    GaveUp(String),
    /// Shutdown came first: leave it unacknowledged (it is delivered again).
    Interrupted,
}

impl<H: EventHandler> InboxConsumer<H> {
    /// Runs the consumer in a task owned by the returned handle.
    #[must_use]
    pub fn spawn(self) -> ConsumerHandle {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let stats = Arc::clone(&self.applier.stats);
        let task = tasks.spawn(self.run(shutdown.clone()));
        tasks.close();
        ConsumerHandle {
            shutdown,
            tasks,
            stats,
            task,
        }
    }

    async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let outcome = self.consume(&shutdown).await;
        self.subscription.close().await;
        outcome
    }

    async fn consume(&mut self, shutdown: &CancellationToken) -> Result<()> {
        let applier = &self.applier;
        let give_up_after = self
            .subscription
            .can_refuse()
            .then_some(applier.settings.handler_attempts);
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                received = self.subscription.next() => received,
            };
            let delivery = match received {
                Ok(delivery) => delivery,
                Err(Error::SubscriptionClosed) => return Ok(()),
                Err(error) => {
                    tracing::warn!(consumer = %applier.settings.consumer_name, %error, "receive failed; retrying");
                    if sleep_or_shutdown(Duration::from_millis(200), shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            let mut deliveries = vec![delivery];
            // Only what is already waiting: a batch never delays an event.
            while deliveries.len() < applier.settings.max_batch {
                match self.subscription.next().now_or_never() {
                    Some(Ok(more)) => deliveries.push(more),
                    // Closed or failing: the next `next` reports it.
                    Some(Err(_)) | None => break,
                }
            }
            if deliveries.len() > 1 && applier.apply_batch(&deliveries).await {
                for delivery in &deliveries {
                    self.subscription.acknowledge(delivery).await?;
                }
                continue;
            }
            // Aggregates given back: their later deliveries in this batch are held by the
            // transport and come again, so applying them now would overtake.
            let mut given_back: Vec<(&str, &str)> = Vec::new();
            for delivery in &deliveries {
                let aggregate = aggregate_of(delivery);
                if aggregate.is_some_and(|aggregate| given_back.contains(&aggregate)) {
                    continue;
                }
                match applier.handle(delivery, give_up_after, shutdown).await {
                    Handled::Done => self.subscription.acknowledge(delivery).await?,
                    Handled::GaveUp(error) => {
                        applier.stats.refused.fetch_add(1, Ordering::Relaxed);
                        self.subscription.refuse(delivery, &error).await?;
                        given_back.extend(aggregate);
                    }
                    Handled::Interrupted => return Ok(()),
                }
            }
        }
    }
}

/// The aggregate (type, id) of an event delivery.
fn aggregate_of(delivery: &Delivery) -> Option<(&str, &str)> {
    match &delivery.content {
        DeliveryContent::Event(envelope) => Some((
            envelope.aggregate_type.as_str(),
            envelope.aggregate_id.as_str(),
        )),
        DeliveryContent::DeadLetter(_) | DeliveryContent::Unreadable(_) => None,
    }
}

impl<H: EventHandler> Applier<H> {
    /// Applies one delivery, retrying a failing handler; after `give_up_after` failures (a
    /// subscription that can refuse) it gives up.
    async fn handle(
        &self,
        delivery: &Delivery,
        give_up_after: Option<u32>,
        shutdown: &CancellationToken,
    ) -> Handled {
        let envelope = match &delivery.content {
            DeliveryContent::Event(envelope) => envelope,
            DeliveryContent::DeadLetter(letter) => {
                tracing::warn!(
                    consumer = %self.settings.consumer_name, topic = %delivery.topic,
                    event_id = %letter.envelope.id, "skipping a dead letter: not an event to apply"
                );
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                return Handled::Done;
            }
            DeliveryContent::Unreadable(reason) => {
                let error = Error::NotAnEnvelope {
                    topic: delivery.topic.clone(),
                    partition: delivery.position.partition,
                    offset: delivery.position.offset,
                    reason: reason.clone(),
                };
                tracing::error!(consumer = %self.settings.consumer_name, %error, "skipping a message that is not an outbox envelope");
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                return Handled::Done;
            }
        };
        if !self.handler.handles(envelope) {
            self.stats.ignored.fetch_add(1, Ordering::Relaxed);
            return Handled::Done;
        }
        // Under the trace of the work that wrote the event: the handler's log lines carry its
        // id, and the events it writes carry it on.
        let traceparent = envelope.traceparent.clone().or_else(|| {
            delivery
                .header(crate::trace::TRACEPARENT)
                .map(str::to_owned)
        });
        let span = tracing::info_span!(
            "event",
            consumer = %self.settings.consumer_name,
            event_type = %envelope.event_type,
            trace = traceparent.as_deref().and_then(crate::trace::trace_id).unwrap_or("-"),
        );
        crate::trace::scope(
            traceparent,
            tracing::Instrument::instrument(
                self.handle_event(delivery, envelope, give_up_after, shutdown),
                span,
            ),
        )
        .await
    }

    /// [`Applier::handle`] for an event the handler takes.
    async fn handle_event(
        &self,
        delivery: &Delivery,
        envelope: &Envelope,
        give_up_after: Option<u32>,
        shutdown: &CancellationToken,
    ) -> Handled {
        let mut failures = 0_u32;
        loop {
            let error = match self.try_once(&delivery.topic, envelope).await {
                Ok(outcome) => {
                    let counter = match outcome {
                        Outcome::Applied => &self.stats.applied,
                        Outcome::Duplicate => &self.stats.duplicates,
                        Outcome::SetAside => &self.stats.dead_lettered,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return Handled::Done;
                }
                Err(error) => error,
            };
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            failures = failures.saturating_add(1);
            if give_up_after.is_some_and(|attempts| failures >= attempts) {
                tracing::warn!(
                    consumer = %self.settings.consumer_name, event_id = %envelope.id,
                    event_type = %envelope.event_type, attempts = failures, %error,
                    "event handler keeps failing; handing the event back to the relay (a failed attempt)"
                );
                return Handled::GaveUp(error.to_string());
            }
            let delay = self
                .settings
                .retry_backoff
                .delay_with_random_jitter(failures);
            tracing::warn!(
                consumer = %self.settings.consumer_name, event_id = %envelope.id,
                event_type = %envelope.event_type, attempts = failures, %error, ?delay,
                "event handler failed; retrying (later events of this member wait, to keep order)"
            );
            if sleep_or_shutdown(delay, shutdown).await {
                return Handled::Interrupted;
            }
        }
    }

    /// Applies `deliveries` in one transaction: every event recorded in the inbox at once,
    /// the first deliveries handed to [`EventHandler::handle_batch`]. `false` (nothing
    /// written) when the batch holds something other than events or anything failed: the
    /// caller then handles each delivery alone.
    async fn apply_batch(&self, deliveries: &[Delivery]) -> bool {
        let mut envelopes = Vec::with_capacity(deliveries.len());
        let mut ignored = 0_u64;
        for delivery in deliveries {
            match &delivery.content {
                DeliveryContent::Event(envelope) if self.handler.handles(envelope) => {
                    envelopes.push(envelope.as_ref());
                }
                // Acknowledged with the batch, in its place.
                DeliveryContent::Event(_) => ignored += 1,
                // Skipped with a log line by the one-by-one path.
                DeliveryContent::DeadLetter(_) | DeliveryContent::Unreadable(_) => return false,
            }
        }
        if envelopes.is_empty() {
            self.stats.ignored.fetch_add(ignored, Ordering::Relaxed);
            return true;
        }
        // One trace for the batch when its events share one (a batch mixes requests
        // otherwise: each event still carries its own to the handler).
        let first = envelopes[0].traceparent.clone();
        let shared = envelopes
            .iter()
            .all(|e| e.traceparent == first)
            .then_some(first)
            .flatten();
        let span = tracing::info_span!(
            "events",
            consumer = %self.settings.consumer_name,
            count = envelopes.len(),
            trace = shared.as_deref().and_then(crate::trace::trace_id).unwrap_or("-"),
        );
        let tried = crate::trace::scope(
            shared,
            tracing::Instrument::instrument(self.try_batch(&envelopes), span),
        )
        .await;
        match tried {
            Ok(applied) => {
                self.stats.ignored.fetch_add(ignored, Ordering::Relaxed);
                let duplicates = envelopes.len() - applied;
                self.stats
                    .applied
                    .fetch_add(applied as u64, Ordering::Relaxed);
                self.stats
                    .duplicates
                    .fetch_add(duplicates as u64, Ordering::Relaxed);
                true
            }
            Err(error) => {
                tracing::debug!(
                    consumer = %self.settings.consumer_name, events = envelopes.len(), %error,
                    "a batch of events failed; applying them one by one"
                );
                false
            }
        }
    }

    /// One transaction for the batch; returns how many events were first deliveries.
    async fn try_batch(&self, envelopes: &[&Envelope]) -> std::result::Result<usize, HandlerError> {
        let mut tx = self.settings.pool.begin().await?;
        let ids: Vec<EventId> = envelopes.iter().map(|envelope| envelope.id).collect();
        let mut fresh = record_all_once(&mut tx, &self.settings.consumer_name, &ids).await?;
        // An event delivered twice within the batch is applied once, at its first place.
        let firsts: Vec<&Envelope> = envelopes
            .iter()
            .copied()
            .filter(|envelope| fresh.remove(&envelope.id))
            .collect();
        if !firsts.is_empty() {
            if let Err(error) = self.handler.handle_batch(&mut tx, &firsts).await {
                tx.rollback().await?;
                return Err(error);
            }
        }
        tx.commit().await?;
        Ok(firsts.len())
    }

    /// One try of an event from `topic`: applied, a duplicate, or (the handler declared it
    /// unprocessable) set aside. An error is transient: the caller retries.
    async fn try_once(
        &self,
        topic: &str,
        envelope: &Envelope,
    ) -> std::result::Result<Outcome, HandlerError> {
        match self.apply(envelope).await {
            Ok(true) => Ok(Outcome::Applied),
            Ok(false) => Ok(Outcome::Duplicate),
            Err(error) if UnprocessableEvent::find(error.as_ref()).is_some() => {
                self.set_aside(topic, envelope, &error.to_string()).await
            }
            Err(error) => Err(error),
        }
    }

    async fn apply(&self, envelope: &Envelope) -> std::result::Result<bool, HandlerError> {
        let mut tx = self.settings.pool.begin().await?;
        if !record_once(&mut tx, &self.settings.consumer_name, envelope.id).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Err(error) = self.handler.handle(&mut tx, envelope).await {
            // At once, not when the connection is next used: setting the event aside inserts
            // the same inbox row, and would wait for this transaction's.
            tx.rollback().await?;
            return Err(error);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Records the unprocessable event in the inbox and the consumer dead letters, so the
    /// delivery can be acknowledged. If that write fails, the event was neither applied nor
    /// recorded: a transient error, retried (the handler runs again).
    async fn set_aside(
        &self,
        topic: &str,
        envelope: &Envelope,
        reason: &str,
    ) -> std::result::Result<Outcome, HandlerError> {
        let consumer = &self.settings.consumer_name;
        match set_aside(&self.settings.pool, consumer, topic, envelope, reason).await {
            Ok(true) => {
                tracing::error!(
                    consumer = %consumer, topic, event_id = %envelope.id,
                    event_type = %envelope.event_type, aggregate_type = %envelope.aggregate_type,
                    aggregate_id = %envelope.aggregate_id, aggregate_seq = envelope.aggregate_seq,
                    error = %reason,
                    "event handler declared the event unprocessable; set aside as a consumer dead letter, the events behind it go on"
                );
                Ok(Outcome::SetAside)
            }
            // Another member of the group handled it meanwhile.
            Ok(false) => Ok(Outcome::Duplicate),
            Err(write) => Err(format!(
                "cannot set the unprocessable event aside as a consumer dead letter ({write}); the handler said: {reason}"
            )
            .into()),
        }
    }
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
            refused: self.stats.refused.load(Ordering::Relaxed),
            skipped: self.stats.skipped.load(Ordering::Relaxed),
            ignored: self.stats.ignored.load(Ordering::Relaxed),
            dead_lettered: self.stats.dead_lettered.load(Ordering::Relaxed),
        }
    }

    /// Stops after the delivery in hand (its transaction commits or rolls back first) and
    /// leaves the consumer group. Deliveries not acknowledged are delivered again (Kafka: to
    /// the group's next member or after a restart; in-process: the relay publishes them
    /// again).
    ///
    /// # Errors
    /// The loop's error (an acknowledgement the transport refused), or [`Error::Task`] on a
    /// panic.
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown.cancel();
        let outcome = self.task.await.map_err(|e| Error::Task(e.to_string()));
        self.tasks.wait().await;
        outcome?
    }
}
