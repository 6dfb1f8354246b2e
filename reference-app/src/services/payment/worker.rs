//! The payment worker: claims due payments, calls the gateway outside any transaction, and
//! records each outcome with its event in one transaction.

use std::sync::Arc;
use std::time::Duration;

use commerce_outbox::saga::{record_saga_step, SagaStatus};
use commerce_outbox::{enqueue, NewEvent};
use futures::stream::{self, StreamExt};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::{Charge, ChargeAnswer, Gateway, GatewayFailure};
use crate::services::contracts::{
    PaymentOutcome, PAYMENT_APPROVED, PAYMENT_FAILED, PAYMENT_REFUNDED, SAGA,
};

/// How the worker paces itself.
#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    /// Look for due payments at least this often (the consumer also wakes it).
    pub poll: Duration,
    /// A claimed payment is another worker's to retry after this (a worker that died
    /// mid-call): longer than a gateway call, shorter than the saga timeout (default 15 s).
    pub lease: Duration,
    /// Payments claimed per round, and gateway calls in flight.
    pub batch: i64,
    /// First wait before a parked payment is tried again (doubling per attempt, at most
    /// `max_backoff`).
    pub backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(200),
            lease: Duration::from_secs(15),
            batch: 16,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// The payment worker. Several (in several processes) may run: claims skip each other's rows.
#[derive(Clone)]
pub struct PaymentWorker {
    pool: PgPool,
    /// Where the answers go (the payments topic).
    topic: String,
    gateway: Arc<dyn Gateway>,
    settings: WorkerSettings,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for PaymentWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentWorker")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A payment the worker claimed.
#[derive(Debug, sqlx::FromRow)]
struct Due {
    order_id: Uuid,
    amount: i64,
    currency: String,
    /// `charging` or `refunding` (what it was claimed for).
    status: String,
    charge_id: Option<String>,
    attempts: i32,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl PaymentWorker {
    /// A worker charging through `gateway` and answering on `topic`; `wake` is the
    /// consumer's signal.
    #[must_use]
    pub fn new(
        pool: PgPool,
        topic: impl Into<String>,
        gateway: Arc<dyn Gateway>,
        settings: WorkerSettings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            pool,
            topic: topic.into(),
            gateway,
            settings,
            wake,
        }
    }

    /// The signal that wakes the worker (give it to the consumer).
    #[must_use]
    pub fn wake(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// The gateway client's breaker state, for metrics.
    #[must_use]
    pub fn breaker_state(&self) -> &'static str {
        self.gateway.breaker_state()
    }

    /// Runs until `shutdown`; the round in progress finishes first (its calls are bounded by
    /// the gateway client's overall timeout).
    pub fn spawn(self, shutdown: CancellationToken, tasks: &TaskTracker) {
        tasks.spawn(async move {
            loop {
                let worked = match self.round().await {
                    Ok(worked) => worked,
                    Err(error) => {
                        tracing::warn!(%error, "payment worker round failed; retrying");
                        0
                    }
                };
                if worked > 0 {
                    continue;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(self.settings.poll) => {}
                }
            }
        });
    }

    /// Claims due payments and works them; returns how many.
    async fn round(&self) -> Result<usize, BoxError> {
        let due: Vec<Due> = sqlx::query_as(
            "UPDATE payment.payments p SET \
             status = CASE WHEN p.status IN ('pending', 'charging') THEN 'charging' ELSE 'refunding' END, \
             attempts = p.attempts + 1, \
             next_attempt_at = now() + make_interval(secs => $2), updated_at = now() \
             FROM (SELECT order_id FROM payment.payments \
                   WHERE status IN ('pending', 'charging', 'refund_pending', 'refunding') \
                   AND next_attempt_at <= now() \
                   ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due \
             WHERE p.order_id = due.order_id \
             RETURNING p.order_id, p.amount, p.currency, p.status, p.charge_id, p.attempts",
        )
        .bind(self.settings.batch)
        .bind(self.settings.lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        let worked = due.len();
        let concurrency = usize::try_from(self.settings.batch).unwrap_or(1).max(1);
        stream::iter(due)
            .for_each_concurrent(concurrency, |payment| async move {
                let order = payment.order_id;
                let outcome = if payment.status == "refunding" {
                    self.refund(payment).await
                } else {
                    self.charge(payment).await
                };
                if let Err(error) = outcome {
                    // The lease runs out and the payment is claimed again.
                    tracing::warn!(%error, %order, "payment step failed; retried after its lease");
                }
            })
            .await;
        Ok(worked)
    }

    fn backoff(&self, attempts: i32) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(16);
        self.settings
            .backoff
            .saturating_mul(1 << doublings)
            .min(self.settings.max_backoff)
    }

    async fn charge(&self, payment: Due) -> Result<(), BoxError> {
        let charge = Charge {
            order_id: payment.order_id,
            amount: payment.amount,
            currency: payment.currency.clone(),
            idempotency_key: format!("charge-{}", payment.order_id),
        };
        let answer = self.gateway.charge(&charge).await;
        let mut tx = self.pool.begin().await?;
        let current: Option<(String, bool)> = sqlx::query_as(
            "SELECT status, cancel_requested FROM payment.payments WHERE order_id = $1 FOR UPDATE",
        )
        .bind(payment.order_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((status, cancel_requested)) = current else {
            return Ok(());
        };
        if status != "charging" {
            // Settled by another worker after our lease ran out.
            return Ok(());
        }
        let saga_id = payment.order_id.to_string();
        match answer {
            Ok(ChargeAnswer::Approved { charge_id }) if cancel_requested => {
                // The order was cancelled while we charged: give the money back.
                sqlx::query(
                    "UPDATE payment.payments SET status = 'refund_pending', charge_id = $2, \
                     next_attempt_at = now(), updated_at = now() WHERE order_id = $1",
                )
                .bind(payment.order_id)
                .bind(&charge_id)
                .execute(&mut *tx)
                .await?;
                record_saga_step(
                    &mut tx,
                    SAGA,
                    &saga_id,
                    "charged_after_cancel",
                    SagaStatus::Compensated,
                    None,
                    Some(&charge_id),
                )
                .await?;
                self.wake.notify_one();
            }
            Ok(ChargeAnswer::Approved { charge_id }) => {
                sqlx::query(
                    "UPDATE payment.payments SET status = 'approved', charge_id = $2, \
                     last_error = NULL, updated_at = now() WHERE order_id = $1",
                )
                .bind(payment.order_id)
                .bind(&charge_id)
                .execute(&mut *tx)
                .await?;
                let outcome = PaymentOutcome {
                    order_id: payment.order_id,
                    amount: payment.amount,
                    charge_id: Some(charge_id.clone()),
                    reason: None,
                };
                answer_with(&mut tx, &self.topic, PAYMENT_APPROVED, &outcome).await?;
                record_saga_step(
                    &mut tx,
                    SAGA,
                    &saga_id,
                    "charged",
                    SagaStatus::Completed,
                    None,
                    Some(&charge_id),
                )
                .await?;
            }
            Ok(ChargeAnswer::Declined { reason }) => {
                self.fail(
                    &mut tx,
                    &payment,
                    "declined",
                    &format!("declined: {reason}"),
                )
                .await?;
            }
            Err(GatewayFailure::Refused(why)) => {
                self.fail(
                    &mut tx,
                    &payment,
                    "failed",
                    &format!("gateway refused the charge: {why}"),
                )
                .await?;
            }
            Err(failure) if cancel_requested => {
                // The order was cancelled while we called (the saga timeout): nothing was
                // taken that we know of, so void rather than park; parking would charge a
                // cancelled order once the gateway is back.
                sqlx::query(
                    "UPDATE payment.payments SET status = 'voided', last_error = $2, \
                     updated_at = now() WHERE order_id = $1",
                )
                .bind(payment.order_id)
                .bind(failure.to_string())
                .execute(&mut *tx)
                .await?;
                record_saga_step(
                    &mut tx,
                    SAGA,
                    &saga_id,
                    "charge_voided",
                    SagaStatus::Compensated,
                    None,
                    Some(&format!("{failure}; the order was cancelled meanwhile")),
                )
                .await?;
            }
            Err(failure) => {
                // Parked: tried again later; the order side's saga timeout bounds the wait.
                let wait = self.backoff(payment.attempts);
                sqlx::query(
                    "UPDATE payment.payments SET status = 'pending', last_error = $2, \
                     next_attempt_at = now() + make_interval(secs => $3), updated_at = now() \
                     WHERE order_id = $1",
                )
                .bind(payment.order_id)
                .bind(failure.to_string())
                .bind(wait.as_secs_f64())
                .execute(&mut *tx)
                .await?;
                record_saga_step(
                    &mut tx,
                    SAGA,
                    &saga_id,
                    "charge_parked",
                    SagaStatus::Failed,
                    None,
                    Some(&format!("{failure}; next try in {} ms", wait.as_millis())),
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn fail(
        &self,
        tx: &mut sqlx::PgConnection,
        payment: &Due,
        status: &str,
        reason: &str,
    ) -> Result<(), BoxError> {
        sqlx::query(
            "UPDATE payment.payments SET status = $2, last_error = $3, updated_at = now() \
             WHERE order_id = $1",
        )
        .bind(payment.order_id)
        .bind(status)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        let outcome = PaymentOutcome {
            order_id: payment.order_id,
            amount: payment.amount,
            charge_id: None,
            reason: Some(reason.to_owned()),
        };
        answer_with(tx, &self.topic, PAYMENT_FAILED, &outcome).await?;
        record_saga_step(
            tx,
            SAGA,
            &payment.order_id.to_string(),
            "charge_failed",
            SagaStatus::Failed,
            None,
            Some(reason),
        )
        .await?;
        Ok(())
    }

    async fn refund(&self, payment: Due) -> Result<(), BoxError> {
        let Some(charge_id) = payment.charge_id.clone() else {
            return Err(format!("payment {} to refund has no charge id", payment.order_id).into());
        };
        let refunded = self
            .gateway
            .refund(&charge_id, &format!("refund-{}", payment.order_id))
            .await;
        let mut tx = self.pool.begin().await?;
        match refunded {
            Ok(()) => {
                sqlx::query(
                    "UPDATE payment.payments SET status = 'refunded', last_error = NULL, \
                     updated_at = now() WHERE order_id = $1 AND status = 'refunding'",
                )
                .bind(payment.order_id)
                .execute(&mut *tx)
                .await?;
                let outcome = PaymentOutcome {
                    order_id: payment.order_id,
                    amount: payment.amount,
                    charge_id: Some(charge_id.clone()),
                    reason: Some("order cancelled".into()),
                };
                answer_with(&mut tx, &self.topic, PAYMENT_REFUNDED, &outcome).await?;
                record_saga_step(
                    &mut tx,
                    SAGA,
                    &payment.order_id.to_string(),
                    "refunded",
                    SagaStatus::Compensated,
                    None,
                    Some(&charge_id),
                )
                .await?;
            }
            Err(failure) => {
                let wait = self.backoff(payment.attempts);
                sqlx::query(
                    "UPDATE payment.payments SET status = 'refund_pending', last_error = $2, \
                     next_attempt_at = now() + make_interval(secs => $3), updated_at = now() \
                     WHERE order_id = $1 AND status = 'refunding'",
                )
                .bind(payment.order_id)
                .bind(failure.to_string())
                .bind(wait.as_secs_f64())
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Writes the payment service's answer into the outbox, in the caller's transaction.
async fn answer_with(
    tx: &mut sqlx::PgConnection,
    topic: &str,
    event_type: &str,
    outcome: &PaymentOutcome,
) -> Result<(), BoxError> {
    let event = NewEvent::new(
        topic,
        event_type,
        "payment",
        outcome.order_id.to_string(),
        serde_json::to_value(outcome)?,
    );
    enqueue(tx, &event).await?;
    Ok(())
}
