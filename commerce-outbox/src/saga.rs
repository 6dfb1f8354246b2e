//! Saga primitives for choreography: "on event X run step S; on failure emit compensation C",
//! with a persisted log of where each saga stands.
//!
//! They live in this crate, not in commerce-core, because a step is only correct when four
//! writes share one transaction: the inbox record (exactly once), the step's business
//! change, its outgoing events (the outbox) and its saga-log entry. All four tables and the
//! consumer runner are here; commerce-core stays free of Kafka and only supplies the
//! business functions a step calls.
//!
//! A [`Saga`] is an [`EventHandler`]: run it with an [`crate::InboxConsumer`]. For each
//! event whose type has a step, inside the consumer's transaction:
//! 1. a savepoint, then [`SagaStep::run`] with the decoded event;
//! 2. on `Ok(events)`: the events are enqueued, the log says `completed`;
//! 3. on [`StepError::Failed`]: the step's writes roll back to the savepoint, the events of
//!    [`SagaStep::compensate`] are enqueued, the log says `compensated` (or `failed` when
//!    there is nothing to compensate);
//! 4. on [`StepError::Retry`] (infrastructure trouble): everything rolls back and the
//!    event is retried later.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::consumer::{EventHandler, HandlerError};
use crate::enqueue::enqueue_all;
use crate::error::Result;
use crate::event::{DomainEvent, Envelope, EventId, NewEvent};

/// Where a saga step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaStatus {
    /// The saga began (written by whoever starts it, e.g. next to the order insert).
    Started,
    /// The step ran and its events were emitted.
    Completed,
    /// The step failed for a business reason and had nothing to compensate.
    Failed,
    /// The step failed for a business reason and its compensation events were emitted.
    Compensated,
}

impl SagaStatus {
    /// The value stored in the log.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Compensated => "compensated",
        }
    }
}

/// One line of the saga log.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SagaLogEntry {
    /// The saga's name (e.g. `"order-fulfilment"`).
    pub saga: String,
    /// The saga instance (e.g. the order id).
    pub saga_id: String,
    /// The step.
    pub step: String,
    /// `started`, `completed`, `failed` or `compensated`.
    pub status: String,
    /// The event that triggered the step.
    pub event_id: Option<Uuid>,
    /// Failure reason or note.
    pub detail: Option<String>,
    /// When it was written.
    pub recorded_at: DateTime<Utc>,
}

/// Appends to the saga log on `conn` (inside the caller's transaction).
///
/// # Errors
/// [`crate::Error::Database`] when the insert fails.
pub async fn record_saga_step(
    conn: &mut PgConnection,
    saga: &str,
    saga_id: &str,
    step: &str,
    status: SagaStatus,
    event_id: Option<EventId>,
    detail: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO commerce_outbox.saga_log (saga, saga_id, step, status, event_id, detail)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(saga)
    .bind(saga_id)
    .bind(step)
    .bind(status.as_str())
    .bind(event_id.map(|id| id.0))
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// One step of one saga instance, as [`record_saga_steps`] writes it (the arguments of
/// [`record_saga_step`] but the saga's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaStepRecord {
    /// The saga instance (e.g. the order id).
    pub saga_id: String,
    /// The step.
    pub step: &'static str,
    /// Where it stands.
    pub status: SagaStatus,
    /// The event that triggered it.
    pub event_id: Option<EventId>,
    /// Failure reason or note.
    pub detail: Option<String>,
}

/// Appends many steps of saga `saga` to the log in one statement, in the order given, on
/// `conn` (inside the caller's transaction): for a consumer or worker that settles many
/// instances at once.
///
/// # Errors
/// [`crate::Error::Database`] when the insert fails.
pub async fn record_saga_steps(
    conn: &mut PgConnection,
    saga: &str,
    steps: &[SagaStepRecord],
) -> Result<()> {
    if steps.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = steps.iter().map(|s| s.saga_id.as_str()).collect();
    let names: Vec<&str> = steps.iter().map(|s| s.step).collect();
    let statuses: Vec<&str> = steps.iter().map(|s| s.status.as_str()).collect();
    let events: Vec<Option<Uuid>> = steps.iter().map(|s| s.event_id.map(|id| id.0)).collect();
    let details: Vec<Option<&str>> = steps.iter().map(|s| s.detail.as_deref()).collect();
    sqlx::query(
        "INSERT INTO commerce_outbox.saga_log (saga, saga_id, step, status, event_id, detail)
         SELECT $1, t.saga_id, t.step, t.status, t.event_id, t.detail
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[])
              WITH ORDINALITY AS t(saga_id, step, status, event_id, detail, n)
         ORDER BY t.n",
    )
    .bind(saga)
    .bind(&ids)
    .bind(&names)
    .bind(&statuses)
    .bind(&events)
    .bind(&details)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every log entry of saga instance `saga_id`, oldest first: where it stands.
///
/// # Errors
/// [`crate::Error::Database`] when the query fails.
pub async fn saga_log(pool: &PgPool, saga_id: &str) -> Result<Vec<SagaLogEntry>> {
    Ok(sqlx::query_as(
        "SELECT saga, saga_id, step, status, event_id, detail, recorded_at
         FROM commerce_outbox.saga_log WHERE saga_id = $1 ORDER BY entry_id",
    )
    .bind(saga_id)
    .fetch_all(pool)
    .await?)
}

/// How a step failed.
#[derive(Debug)]
pub enum StepError {
    /// A business failure (out of stock, payment declined): compensate, do not retry.
    Failed(String),
    /// Infrastructure trouble: roll everything back and retry the event later. (An
    /// [`crate::UnprocessableEvent`] here, e.g. from `.unprocessable()?` in a step, rolls
    /// back too but is not retried: the consumer sets the event aside as a consumer dead
    /// letter.)
    Retry(HandlerError),
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for StepError {
    fn from(error: E) -> Self {
        Self::Retry(Box::new(error))
    }
}

/// One step of a choreographed saga, triggered by one typed event.
#[async_trait]
pub trait SagaStep: Send + Sync + 'static {
    /// The event that triggers the step.
    type Trigger: DomainEvent + 'static;

    /// The step's name in the saga log.
    fn name(&self) -> &'static str;

    /// Which saga instance the event belongs to (default: its aggregate id).
    fn saga_id(&self, envelope: &Envelope, _event: &Self::Trigger) -> String {
        envelope.aggregate_id.clone()
    }

    /// The step: its writes on `conn` and the events it emits, committed together.
    async fn run(
        &self,
        conn: &mut PgConnection,
        event: &Self::Trigger,
        envelope: &Envelope,
    ) -> std::result::Result<Vec<NewEvent>, StepError>;

    /// The compensation events emitted when [`SagaStep::run`] fails with
    /// [`StepError::Failed`] (e.g. `payment.refund_requested`).
    ///
    /// # Errors
    /// When they cannot be built (e.g. no route); the event is then retried.
    fn compensate(
        &self,
        event: &Self::Trigger,
        envelope: &Envelope,
        reason: &str,
    ) -> Result<Vec<NewEvent>>;
}

#[async_trait]
trait DynStep: Send + Sync {
    async fn handle(
        &self,
        saga: &str,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> std::result::Result<(), HandlerError>;
}

#[async_trait]
impl<S: SagaStep> DynStep for S {
    async fn handle(
        &self,
        saga: &str,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> std::result::Result<(), HandlerError> {
        let event: S::Trigger = match envelope.decode() {
            Ok(event) => event,
            Err(error) => {
                // Retrying cannot fix a payload that does not match its type: log and move on.
                tracing::error!(saga, step = self.name(), event_id = %envelope.id, %error, "saga event does not decode; step skipped");
                record_saga_step(
                    conn,
                    saga,
                    &envelope.aggregate_id,
                    self.name(),
                    SagaStatus::Failed,
                    Some(envelope.id),
                    Some(&format!("undecodable event: {error}")),
                )
                .await?;
                return Ok(());
            }
        };
        let saga_id = self.saga_id(envelope, &event);
        let mut savepoint = conn.begin().await?;
        match self.run(&mut savepoint, &event, envelope).await {
            Ok(events) => {
                enqueue_all(&mut savepoint, &events).await?;
                savepoint.commit().await?;
                record_saga_step(
                    conn,
                    saga,
                    &saga_id,
                    self.name(),
                    SagaStatus::Completed,
                    Some(envelope.id),
                    None,
                )
                .await?;
            }
            Err(StepError::Failed(reason)) => {
                savepoint.rollback().await?;
                let compensation = self.compensate(&event, envelope, &reason)?;
                enqueue_all(conn, &compensation).await?;
                let status = if compensation.is_empty() {
                    SagaStatus::Failed
                } else {
                    SagaStatus::Compensated
                };
                record_saga_step(
                    conn,
                    saga,
                    &saga_id,
                    self.name(),
                    status,
                    Some(envelope.id),
                    Some(&reason),
                )
                .await?;
            }
            Err(StepError::Retry(error)) => return Err(error),
        }
        Ok(())
    }
}

/// A saga participant: the steps one service runs, keyed by their trigger's event type.
///
/// ```
/// # use commerce_outbox::saga::Saga;
/// let saga = Saga::new("order-fulfilment"); // .on(ReserveStock { .. }).on(...)
/// assert!(saga.event_types().is_empty());
/// ```
pub struct Saga {
    name: String,
    steps: HashMap<&'static str, Box<dyn DynStep>>,
}

impl std::fmt::Debug for Saga {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saga")
            .field("name", &self.name)
            .field("event_types", &self.event_types())
            .finish()
    }
}

impl Saga {
    /// A saga participant named `name` (the log's `saga` column).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            steps: HashMap::new(),
        }
    }

    /// Runs `step` on every event of type `S::Trigger::EVENT_TYPE` (replacing an earlier
    /// step for that type).
    #[must_use]
    pub fn on<S: SagaStep>(mut self, step: S) -> Self {
        self.steps
            .insert(<S::Trigger as DomainEvent>::EVENT_TYPE, Box::new(step));
        self
    }

    /// The event types this participant reacts to, sorted.
    #[must_use]
    pub fn event_types(&self) -> Vec<&'static str> {
        let mut types: Vec<&'static str> = self.steps.keys().copied().collect();
        types.sort_unstable();
        types
    }

    /// The saga's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait]
impl EventHandler for Saga {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> std::result::Result<(), HandlerError> {
        match self.steps.get(envelope.event_type.as_str()) {
            Some(step) => step.handle(&self.name, conn, envelope).await,
            // Other services' events share the topic; not ours to react to.
            None => Ok(()),
        }
    }
}
