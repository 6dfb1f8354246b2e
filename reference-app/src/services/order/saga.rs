//! The order side of the payment saga (choreography):
//! - an order that becomes CREATED starts the saga: [`SagaStart`] writes `order.created`
//!   (with the amount) into the outbox, in the transaction that made it CREATED;
//! - [`PaymentAnswers`] applies the payment service's answer, exactly once (inbox), in one
//!   transaction with its own outgoing events: `payment.approved` moves the order to
//!   PROCESSING, `payment.failed` cancels it (its stock returns with a `cancel` ledger row and
//!   serves backorders);
//! - [`spawn_timeout_sweep`] cancels an order still CREATED after the saga timeout, so no
//!   order waits forever for a payment service or gateway that does not answer.
//!
//! Every step is written to the saga log (commerce-outbox's `saga_log`).

use std::time::Duration;

use async_trait::async_trait;
use commerce_core::{Commerce, CoreEvent, Error, OrderId, OrderStatus, TransactionHook};
use commerce_outbox::saga::{record_saga_step, SagaStatus};
use commerce_outbox::{enqueue_all, Envelope, EventHandler, HandlerError, NewEvent};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::services::contracts::{
    reason_text, OrderCreated, PaymentOutcome, ORDER_CREATED, PAYMENT_APPROVED, PAYMENT_FAILED,
    PAYMENT_REFUNDED, SAGA,
};
use crate::telemetry::count_saga;

/// Starts the saga for every order a transaction made CREATED: `order.created` with the
/// amount to charge, in the same transaction (so it exists exactly when the order does).
#[derive(Debug, Clone)]
pub struct SagaStart {
    currency: String,
    topic: String,
}

impl SagaStart {
    /// Amounts in `currency`, events on `topic` (the orders topic).
    #[must_use]
    pub fn new(currency: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            currency: currency.into(),
            topic: topic.into(),
        }
    }
}

#[async_trait]
impl TransactionHook for SagaStart {
    async fn before_commit(
        &self,
        conn: &mut PgConnection,
        events: &[CoreEvent],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut created: Vec<(Uuid, String)> = events
            .iter()
            .filter_map(|event| match event {
                CoreEvent::OrderPlaced {
                    order,
                    user_id,
                    status: OrderStatus::Created,
                    ..
                } => Some((order.0, user_id.clone())),
                CoreEvent::OrderStatusChanged {
                    order,
                    to: OrderStatus::Created,
                    ..
                } => Some((order.0, String::new())),
                _ => None,
            })
            .collect();
        if created.is_empty() {
            return Ok(());
        }
        // One sorted order of aggregates, as commerce-core's outbox hook takes them.
        created.sort();
        let ids: Vec<Uuid> = created.iter().map(|(id, _)| *id).collect();
        let rows: Vec<(Uuid, String, i64)> = sqlx::query_as(
            "SELECT o.id, o.user_id, COALESCE(sum(l.quantity * l.unit_price), 0)::bigint \
             FROM commerce.orders o JOIN commerce.order_lines l ON l.order_id = o.id \
             WHERE o.id = ANY($1) GROUP BY o.id, o.user_id ORDER BY o.id",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        let mut outgoing = Vec::with_capacity(rows.len());
        for (order_id, user_id, amount) in rows {
            let payload = serde_json::to_value(OrderCreated {
                order_id,
                user_id,
                amount,
                currency: self.currency.clone(),
            })?;
            outgoing.push(NewEvent::new(
                &self.topic,
                ORDER_CREATED,
                "order",
                order_id.to_string(),
                payload,
            ));
            record_saga_step(
                conn,
                SAGA,
                &order_id.to_string(),
                "order_created",
                SagaStatus::Started,
                None,
                Some(&format!("charge {amount}")),
            )
            .await?;
        }
        enqueue_all(conn, &outgoing).await?;
        Ok(())
    }
}

/// Applies the payment service's answers to orders (consumer of the payments topic).
#[derive(Debug, Clone)]
pub struct PaymentAnswers {
    commerce: Commerce,
}

impl PaymentAnswers {
    /// Answers applied with `commerce` (whose hooks write the resulting order events).
    #[must_use]
    pub fn new(commerce: Commerce) -> Self {
        Self { commerce }
    }
}

#[async_trait]
impl EventHandler for PaymentAnswers {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        let kind = envelope.event_type.as_str();
        if ![PAYMENT_APPROVED, PAYMENT_FAILED, PAYMENT_REFUNDED].contains(&kind) {
            return Ok(());
        }
        let outcome: PaymentOutcome = serde_json::from_value(envelope.payload.clone())?;
        let order = OrderId(outcome.order_id);
        let saga_id = order.to_string();
        let (step, applied) = match kind {
            PAYMENT_APPROVED => (
                "payment_approved",
                self.commerce
                    .transition_order_in(conn, order, OrderStatus::Processing, "payment approved")
                    .await
                    .map(drop),
            ),
            PAYMENT_FAILED => {
                // Text from outside (the gateway's) never blocks the saga: cleaned and bounded
                // here too, whoever wrote the event.
                let reason = format!(
                    "payment failed: {}",
                    reason_text(outcome.reason.as_deref().unwrap_or_default())
                );
                (
                    "payment_failed",
                    self.commerce
                        .cancel_order_in(conn, order, &reason)
                        .await
                        .map(drop),
                )
            }
            _ => ("payment_refunded", Ok(())),
        };
        let (status, detail) = match applied {
            Ok(()) => {
                count_saga(match kind {
                    PAYMENT_APPROVED => "paid",
                    PAYMENT_FAILED => "declined",
                    _ => "refunded",
                });
                let status = if kind == PAYMENT_APPROVED {
                    SagaStatus::Completed
                } else {
                    SagaStatus::Compensated
                };
                (status, outcome.reason.clone())
            }
            // The order moved on meanwhile (cancelled by its owner or by the saga's timeout):
            // nothing to do here; the payment service refunds a charge for a cancelled order
            // when it sees the cancellation.
            Err(Error::IllegalTransition { from, .. }) => (
                SagaStatus::Failed,
                Some(format!("ignored: the order is already {from}")),
            ),
            // Anything else (the database) is retried: the whole transaction rolls back.
            Err(e) => return Err(Box::new(e)),
        };
        record_saga_step(
            conn,
            SAGA,
            &saga_id,
            step,
            status,
            Some(envelope.id),
            detail.as_deref(),
        )
        .await?;
        Ok(())
    }
}

/// Cancels orders that stayed CREATED longer than `timeout` (no payment answer): the saga's
/// compensation when the payment side is silent. Runs every `timeout / 4` (at most every 5
/// s) until `shutdown`. Several instances may sweep at once: a cancellation that lost the
/// race is refused as an illegal transition and skipped.
pub fn spawn_timeout_sweep(
    commerce: Commerce,
    timeout: Duration,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    let every = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let stuck = match commerce
                .orders_stuck_in(OrderStatus::Created, timeout, 100)
                .await
            {
                Ok(stuck) => stuck,
                Err(error) => {
                    tracing::warn!(%error, "saga timeout sweep failed; next round retries");
                    continue;
                }
            };
            for order in stuck {
                match time_out(&commerce, order, timeout).await {
                    Ok(true) => {
                        count_saga("timed_out");
                        tracing::info!(%order, "order cancelled: its payment timed out");
                    }
                    Ok(false) => {}
                    Err(error) => tracing::warn!(%error, %order, "saga timeout cancel failed"),
                }
            }
        }
    });
}

/// Cancels one timed-out order and logs the compensation, in one transaction; `false` when
/// the order moved on meanwhile.
async fn time_out(
    commerce: &Commerce,
    order: OrderId,
    timeout: Duration,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let reason = format!("payment timed out after {}s", timeout.as_secs());
    let mut tx = commerce.pool().begin().await?;
    match commerce.cancel_order_in(&mut tx, order, &reason).await {
        Ok(_) => {}
        Err(Error::IllegalTransition { .. }) => return Ok(false),
        Err(e) => return Err(Box::new(e)),
    }
    record_saga_step(
        &mut tx,
        SAGA,
        &order.to_string(),
        "payment_timed_out",
        SagaStatus::Compensated,
        None,
        Some(&reason),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}
