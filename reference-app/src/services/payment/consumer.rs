//! The payment service's consumer of order events: each applied exactly once (inbox), in the
//! consumer's transaction.

use std::sync::Arc;

use async_trait::async_trait;
use commerce_outbox::saga::{record_saga_step, SagaStatus};
use commerce_outbox::{Envelope, EventHandler, HandlerError};
use sqlx::PgConnection;
use tokio::sync::Notify;

use crate::services::contracts::{
    OrderCancelled, OrderCreated, ORDER_CANCELLED, ORDER_CREATED, SAGA,
};

/// Records a payment to take for every `order.created`; voids or refunds it on
/// `order.cancelled`. Wakes the worker when there is something to do.
#[derive(Debug, Clone)]
pub struct OrderEvents {
    wake: Arc<Notify>,
}

impl OrderEvents {
    /// A consumer that wakes `wake` (the worker's) after new work.
    #[must_use]
    pub fn new(wake: Arc<Notify>) -> Self {
        Self { wake }
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
            ORDER_CREATED => {
                let order: OrderCreated = serde_json::from_value(envelope.payload.clone())?;
                sqlx::query(
                    "INSERT INTO payment.payments (order_id, amount, currency, status) \
                     VALUES ($1, $2, $3, 'pending') ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order.order_id)
                .bind(order.amount)
                .bind(&order.currency)
                .execute(&mut *conn)
                .await?;
                record_saga_step(
                    conn,
                    SAGA,
                    &order.order_id.to_string(),
                    "payment_recorded",
                    SagaStatus::Started,
                    Some(envelope.id),
                    None,
                )
                .await?;
            }
            ORDER_CANCELLED => {
                let cancelled: OrderCancelled = serde_json::from_value(envelope.payload.clone())?;
                // Not charged yet: void. Charged: refund. Being charged right now: the
                // worker sees `cancel_requested` when it settles, and refunds.
                let status: Option<String> = sqlx::query_scalar(
                    "UPDATE payment.payments SET cancel_requested = true, \
                     status = CASE status WHEN 'pending' THEN 'voided' \
                                          WHEN 'approved' THEN 'refund_pending' ELSE status END, \
                     next_attempt_at = CASE status WHEN 'approved' THEN now() \
                                               ELSE next_attempt_at END, \
                     updated_at = now() \
                     WHERE order_id = $1 RETURNING status",
                )
                .bind(cancelled.order)
                .fetch_optional(&mut *conn)
                .await?;
                // No payment: the order never became CREATED (cancelled while backordered).
                if let Some(status) = status {
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
                }
            }
            _ => return Ok(()),
        }
        self.wake.notify_one();
        Ok(())
    }
}
