//! The payment service's consumer of order events: each applied exactly once (inbox), in the
//! consumer's transaction.

use std::sync::Arc;

use async_trait::async_trait;
use commerce_outbox::saga::{record_saga_step, SagaStatus};
use commerce_outbox::{Envelope, EventHandler, HandlerError, UnprocessableEvent};
use sqlx::PgConnection;
use tokio::sync::Notify;

use super::store;
use super::worker::answer_with;
use crate::services::contracts::{
    OrderCancelled, OrderCreated, PaymentOutcome, ORDER_CANCELLED, ORDER_CREATED, PAYMENT_APPROVED,
    SAGA,
};
use crate::telemetry::count_payment;

/// Records a payment to take for every `order.created` (settling an amount of 0 at once,
/// without a gateway call); voids, asks about or refunds it on `order.cancelled`. Wakes the
/// worker when there is something to do.
#[derive(Debug, Clone)]
pub struct OrderEvents {
    wake: Arc<Notify>,
    /// Where answers settled here go (the payments topic).
    topic: String,
}

impl OrderEvents {
    /// A consumer that wakes `wake` (the worker's) after new work and answers on `topic`.
    #[must_use]
    pub fn new(wake: Arc<Notify>, topic: impl Into<String>) -> Self {
        Self {
            wake,
            topic: topic.into(),
        }
    }

    async fn created(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        let order: OrderCreated = envelope.decode_payload()?;
        if order.amount < 0 {
            // Never chargeable: set aside (a consumer dead letter), not retried.
            return Err(UnprocessableEvent::new(format!(
                "order.created {} with a negative amount {}",
                order.order_id, order.amount
            ))
            .into());
        }
        let saga_id = order.order_id.to_string();
        if !store::record(conn, order.order_id, order.amount, &order.currency).await? {
            return Ok(());
        }
        if order.amount == 0 {
            // Nothing to take: settled now, with no gateway call.
            let outcome = PaymentOutcome {
                order_id: order.order_id,
                amount: 0,
                charge_id: None,
                reason: None,
            };
            answer_with(conn, &self.topic, PAYMENT_APPROVED, &outcome).await?;
            count_payment("settled_without_charge");
            record_saga_step(
                conn,
                SAGA,
                &saga_id,
                "settled_without_charge",
                SagaStatus::Completed,
                Some(envelope.id),
                Some("amount 0: nothing to charge"),
            )
            .await?;
            return Ok(());
        }
        record_saga_step(
            conn,
            SAGA,
            &saga_id,
            "payment_recorded",
            SagaStatus::Started,
            Some(envelope.id),
            None,
        )
        .await?;
        self.wake.notify_one();
        Ok(())
    }

    async fn cancelled(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        let cancelled: OrderCancelled = envelope.decode_payload()?;
        // No payment: the order never became CREATED (cancelled while backordered).
        let Some(status) = store::request_cancel(conn, cancelled.order).await? else {
            return Ok(());
        };
        record_saga_step(
            conn,
            SAGA,
            &cancelled.order.to_string(),
            "payment_cancelled",
            SagaStatus::Compensated,
            Some(envelope.id),
            Some(&format!("payment {status}: {}", cancelled.reason)),
        )
        .await?;
        self.wake.notify_one();
        Ok(())
    }
}

#[async_trait]
impl EventHandler for OrderEvents {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        match envelope.event_type.as_str() {
            ORDER_CREATED => self.created(conn, envelope).await,
            ORDER_CANCELLED => self.cancelled(conn, envelope).await,
            _ => Ok(()),
        }
    }
}
